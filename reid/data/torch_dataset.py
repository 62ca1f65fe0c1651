"""PyTorch view of a list of ImageRecord: decoded, transformed samples and their batch format.

Unreadable images either fail loudly (default) or, with ``skip_corrupt=True``, are found by reading every
file once up front and left out. Scanning up front (instead of substituting samples inside workers) keeps
the skipped count exact and visible in the main process, and keeps indices stable for the sampler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from reid.data.datasets import ImageRecord
from reid.data.image_io import CorruptImageError, read_image

logger = logging.getLogger(__name__)

_MAX_LISTED_BAD_FILES = 20


class ReIDImageDataset(Dataset):
    """Map-style dataset returning ``dict(image, pid, camid, path, index)`` per record.

    With ``augment_seed`` set, each batch fetched through ``__getitems__`` (what DataLoader does with a batch
    sampler) reseeds the transform from (augment_seed, batch indices): augmentation then depends only on the
    epoch plan, not on the number of workers, which worker ran the batch, or where a run was resumed.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[np.ndarray], torch.Tensor],
        *,
        skip_corrupt: bool = False,
        augment_seed: int | None = None,
    ) -> None:
        self.transform = transform
        self.augment_seed = augment_seed
        self.skipped: list[tuple[str, str]] = []
        if skip_corrupt:
            records, self.skipped = drop_unreadable(records)
        self.records: list[ImageRecord] = list(records)

    @property
    def num_skipped(self) -> int:
        """How many unreadable files ``skip_corrupt`` left out."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            decoded = read_image(record.path)
        except CorruptImageError as exc:  # found mid-epoch: say how to go on without it
            raise CorruptImageError(exc.path, f"{exc.reason} (data.skip_corrupt=true leaves unreadable "
                                    "images out, checking every file first)") from exc
        image = self.transform(decoded)
        return {"image": image, "pid": record.pid, "camid": record.camid, "path": record.path, "index": index}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        if self.augment_seed is not None and hasattr(self.transform, "reseed"):
            self.transform.reseed([self.augment_seed, *(int(i) for i in indices)])
        return [self[int(i)] for i in indices]


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch dict: images, pids, camids, paths, indices."""
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "pids": torch.tensor([s["pid"] for s in samples], dtype=torch.long),
        "camids": torch.tensor([s["camid"] for s in samples], dtype=torch.long),
        "paths": [s["path"] for s in samples],
        "indices": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }


def _read_error(path: str) -> str | None:
    try:
        read_image(path)
    except (CorruptImageError, FileNotFoundError) as exc:
        return str(exc)
    return None


def drop_unreadable(records: Sequence[ImageRecord]) -> tuple[list[ImageRecord], list[tuple[str, str]]]:
    """Read every image once (threads: decoding releases the GIL) and split off the unreadable ones:
    (readable records, [(path, reason)] of the others, also logged). What ``data.skip_corrupt`` does."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = list(
            tqdm(
                pool.map(_read_error, [r.path for r in records], chunksize=64),
                total=len(records),
                desc="Checking images",
                unit="img",
            )
        )
    kept = [r for r, error in zip(records, errors, strict=True) if error is None]
    skipped = [(r.path, error) for r, error in zip(records, errors, strict=True) if error is not None]
    if skipped:
        listed = [f"{path}: {error}" for path, error in skipped[:_MAX_LISTED_BAD_FILES]]
        if len(skipped) > _MAX_LISTED_BAD_FILES:
            listed.append(f"... and {len(skipped) - _MAX_LISTED_BAD_FILES} more")
        logger.warning(
            "Skipping %d unreadable of %d images:\n  %s", len(skipped), len(records), "\n  ".join(listed)
        )
    if records and not kept:
        raise ValueError(f"none of the {len(records)} images could be read (first: {skipped[0][1]})")
    return kept, skipped
