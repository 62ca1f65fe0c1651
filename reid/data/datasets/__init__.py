"""Readers for re-ID benchmarks and for users' own data, all producing a :class:`ReIDDataset`."""

from .base import DatasetLayoutError, ImageRecord, ReIDDataset
from .registry import DATASET_LOADERS, build_dataset

__all__ = ["DATASET_LOADERS", "DatasetLayoutError", "ImageRecord", "ReIDDataset", "build_dataset"]
