"""Dataset names accepted in configs (``data.name``) and the function that reads each one."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import NameParser, ReIDDataset
from .cuhk03 import CUHK03_NAME, SHOTS_PER_CAMERA, load_cuhk03
from .custom import load_custom
from .dukemtmc import DUKE_NAME_PATTERN, load_dukemtmc
from .market1501 import MARKET_NAME_PATTERN, load_market1501
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


def _cuhk03_labels(path: Path) -> tuple[int, int] | None:
    match = CUHK03_NAME.fullmatch(path.name)
    if match is None or int(match.group("shot")) >= 2 * SHOTS_PER_CAMERA:
        return None
    return int(match.group("pid")), int(match.group("shot")) // SHOTS_PER_CAMERA


def name_conventions() -> dict[str, Callable[[Path], tuple[int, int] | None]]:
    """File-name conventions that carry (pid, camera id), each parsed as that dataset's reader would (fresh
    non-strict NameParsers: a mismatch is None)."""
    return {
        "market1501": NameParser(MARKET_NAME_PATTERN, "Market-1501", num_cameras=6, strict=False).parse,
        "dukemtmc": NameParser(DUKE_NAME_PATTERN, "DukeMTMC-reID", num_cameras=8, strict=False).parse,
        "cuhk03": _cuhk03_labels,
    }


def labels_from_names(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(pids, camids, convention) of images named after a known dataset's convention (the first one that
    every name follows), else -1 labels and None. Raw pids are kept (no relabelling), as in query/gallery."""
    files = [Path(p) for p in paths]
    for convention, parse in name_conventions().items():
        labels = [parse(file) for file in files]
        if files and all(label is not None for label in labels):
            pids, camids = zip(*labels, strict=True)
            return np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64), convention
    unknown = np.full(len(files), -1, dtype=np.int64)
    return unknown, unknown.copy(), None


def parse_reader_options(items: Sequence[str], option: str = "--dataset-option") -> dict[str, Any]:
    """KEY=VALUE strings -> reader keyword arguments (values parsed as YAML scalars: 100, true, both)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} must be KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    return options
