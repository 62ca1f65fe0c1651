"""Dataset names accepted in configs (``data.name``) and the function that reads each one."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from .base import ReIDDataset
from .cuhk03 import load_cuhk03
from .custom import load_custom
from .dukemtmc import load_dukemtmc
from .market1501 import load_market1501
from .msmt17 import load_msmt17
from .synthetic import load_synthetic

logger = logging.getLogger(__name__)

DATASET_LOADERS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": load_market1501,
    "dukemtmc": load_dukemtmc,
    "msmt17": load_msmt17,
    "cuhk03": load_cuhk03,
    "custom": load_custom,
    "synthetic": load_synthetic,
}

# Readers whose file names carry the labels: they take ``strict`` (stop at, or skip, a badly named file).
NAME_PARSING_READERS = frozenset({"market1501", "dukemtmc", "cuhk03"})


def build_dataset(name: str, root: str | os.PathLike, **kwargs) -> ReIDDataset:
    """Read dataset ``name`` from ``root``; ``kwargs`` go to that dataset's loader (e.g. ``strict=False``)."""
    if name not in DATASET_LOADERS:
        raise ValueError(f"Unknown dataset '{name}'; choose one of {sorted(DATASET_LOADERS)}")
    dataset = DATASET_LOADERS[name](root, **kwargs)
    logger.info("Loaded dataset from %s\n%s", root, dataset.summary())
    return dataset
