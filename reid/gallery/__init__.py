"""Persistent person gallery: tracks from videos become searchable identities (SQLite + faiss + crops)."""

from reid.gallery.calibration import ThresholdReport, calibrate_threshold
from reid.gallery.errors import (
    GalleryCorruptError,
    GalleryError,
    GalleryLockedError,
    GalleryMismatchError,
    GallerySchemaError,
)
from reid.gallery.schema import GalleryMeta
from reid.gallery.store import AddTrackResult, CropEntry, GalleryStore, IdentityHit

__all__ = [
    "AddTrackResult",
    "CropEntry",
    "GalleryCorruptError",
    "GalleryError",
    "GalleryLockedError",
    "GalleryMeta",
    "GalleryMismatchError",
    "GallerySchemaError",
    "GalleryStore",
    "IdentityHit",
    "ThresholdReport",
    "calibrate_threshold",
]
