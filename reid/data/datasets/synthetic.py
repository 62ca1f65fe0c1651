"""The "synthetic" dataset name: generate the data under ``root`` on first use, then read it as Market-1501.

The generator's parameters are stamped next to the images; if a later run asks for different parameters
the folder is regenerated (it only ever replaces a folder that carries such a stamp).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..synthetic import SyntheticParams, generate_synthetic_dataset, read_synthetic_stamp
from .base import NameParser, ReIDDataset
from .market1501 import MARKET_NAME_PATTERN, read_market_style

logger = logging.getLogger(__name__)


def load_synthetic(root: str | os.PathLike, **params) -> ReIDDataset:
    """Read the synthetic dataset at ``root``, generating it first if it is missing or its stamp differs.

    ``params`` are the keyword arguments of :func:`reid.data.generate_synthetic_dataset`.
    """
    try:
        requested = SyntheticParams(**params)
    except TypeError as error:
        raise ValueError(
            f"synthetic dataset: {error}; valid options: {list(SyntheticParams().to_json())}"
        ) from None
    existing = read_synthetic_stamp(root)
    if existing != requested.to_json():
        if existing is not None:
            logger.warning(
                "Synthetic dataset in %s was generated with %s; regenerating with %s",
                root,
                existing,
                requested.to_json(),
            )
        folder = generate_synthetic_dataset(root, **requested.to_json())
    else:
        folder = Path(root)
    parser = NameParser(MARKET_NAME_PATTERN, "PPPP_cCsS_FFFFFF_NN.jpg", num_cameras=6)
    return read_market_style(folder, "synthetic", parser)
