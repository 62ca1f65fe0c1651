"""Data: dataset splits, image reading, the synthetic dataset and (elsewhere in this package) loaders."""

from .datasets import ImageRecord, ReIDDataset, build_dataset
from .image_io import CorruptImageError, read_image
from .synthetic import generate_synthetic_dataset

__all__ = [
    "CorruptImageError",
    "ImageRecord",
    "ReIDDataset",
    "build_dataset",
    "generate_synthetic_dataset",
    "read_image",
]
