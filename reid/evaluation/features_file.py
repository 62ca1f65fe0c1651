"""The ``.npz`` feature file: query/gallery features with their labels and image paths.

Extracting features is the slow part of an evaluation; storing them lets reports, re-ranking and
threshold calibration be rerun without a model. Plain numpy arrays only (paths as unicode arrays), so
loading never needs pickle.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reid.utils.io import atomic_open

from .input_checks import EvaluationInputError, check_features, check_labels

SPLITS = ("query", "gallery")
FIELDS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("features", "pids", "camids", "paths"))


class FeatureFileError(ValueError):
    """A feature file that is missing, unreadable or lacks a field."""


@dataclass(frozen=True)
class FeatureSet:
    """Query and gallery features (N x D float32), pids, camera ids and image paths ('' when unknown)."""

    query_features: np.ndarray
    query_pids: np.ndarray
    query_camids: np.ndarray
    query_paths: tuple[str, ...]
    gallery_features: np.ndarray
    gallery_pids: np.ndarray
    gallery_camids: np.ndarray
    gallery_paths: tuple[str, ...]

    def __post_init__(self) -> None:
        for split in SPLITS:
            features = check_features(getattr(self, f"{split}_features"), f"{split}_features")
            object.__setattr__(self, f"{split}_features", features.astype(np.float32, copy=False))
            size = features.shape[0]
            for kind in ("pids", "camids"):
                name = f"{split}_{kind}"
                object.__setattr__(self, name, check_labels(getattr(self, name), name, size))
            paths = tuple(str(p) for p in getattr(self, f"{split}_paths"))
            if len(paths) != size:
                raise EvaluationInputError(f"{split}_paths: has {len(paths)} entries but {size} expected")
            object.__setattr__(self, f"{split}_paths", paths)
        if self.query_features.shape[1] != self.gallery_features.shape[1]:
            raise EvaluationInputError(
                f"query_features have dimension {self.query_features.shape[1]} but gallery_features have "
                f"{self.gallery_features.shape[1]}"
            )

    @classmethod
    def from_arrays(
        cls,
        query_features: Any,
        query_pids: Any,
        query_camids: Any,
        gallery_features: Any,
        gallery_pids: Any,
        gallery_camids: Any,
        query_paths: Sequence[str] | None = None,
        gallery_paths: Sequence[str] | None = None,
    ) -> FeatureSet:
        """Build a feature set whose image paths may be unknown (stored as empty strings)."""
        return cls(
            query_features,
            query_pids,
            query_camids,
            tuple(query_paths) if query_paths is not None else ("",) * len(query_pids),
            gallery_features,
            gallery_pids,
            gallery_camids,
            tuple(gallery_paths) if gallery_paths is not None else ("",) * len(gallery_pids),
        )


def save_features(path: str | os.PathLike, features: FeatureSet) -> None:
    """Write ``features`` to ``path`` (.npz) atomically: a crash never leaves a truncated file."""
    arrays = {name: np.asarray(getattr(features, name)) for name in FIELDS}
    for split in SPLITS:  # a unicode array even when empty, so the file never needs pickle
        arrays[f"{split}_paths"] = np.asarray(getattr(features, f"{split}_paths"), dtype=np.str_)
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def load_features(path: str | os.PathLike) -> FeatureSet:
    """Read a feature file written by :func:`save_features`; errors name the file and the missing field."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"feature file not found: {file}")
    unreadable = (zipfile.BadZipFile, OSError, EOFError, ValueError)  # ValueError: np.load wants pickle
    try:
        archive = np.load(file, allow_pickle=False)
    except unreadable as error:
        raise FeatureFileError(f"{file}: not a readable .npz feature file ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise FeatureFileError(f"{file}: holds a single array, not an .npz feature file")
    with archive:
        held = sorted(archive.files)
        try:
            arrays = {name: archive[name] for name in FIELDS if name in held}
        except unreadable as error:
            raise FeatureFileError(f"{file}: a field cannot be read ({error})") from error
    missing = [name for name in FIELDS if name not in held]
    if missing:
        raise FeatureFileError(
            f"{file}: missing field(s) {', '.join(missing)}; the file holds {held or 'nothing'} "
            f"(expected {', '.join(FIELDS)})"
        )
    try:
        return FeatureSet(**arrays)
    except EvaluationInputError as error:
        raise FeatureFileError(f"{file}: {error}") from error
