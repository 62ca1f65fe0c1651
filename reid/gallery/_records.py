"""The gallery's public records and the stored form of a feature.

``CropEntry`` is what callers hand to ``GalleryStore.add_track``; ``AddTrackResult`` and ``IdentityHit`` are
what the store hands back. All three are re-exported from :mod:`reid.gallery.store` and :mod:`reid.gallery`,
which is where callers import them from; they live here so the store's private modules can use them without
importing the store. ``blob``/``unblob`` are the one place a feature becomes a SQLite BLOB (float32) and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reid.gallery.errors import GalleryCorruptError


@dataclass(frozen=True)
class CropEntry:
    """One observation of a tracked person: its crop (BGR uint8 H x W x 3), where, when, and its feature."""

    image: np.ndarray
    frame_index: int
    timestamp_s: float
    box_xywh: tuple[float, float, float, float]
    det_score: float
    quality: float
    feature: np.ndarray


@dataclass(frozen=True)
class AddTrackResult:
    """``distance``: to the matched identity's prototype, or to the nearest admissible one when a new identity
    was created (None if there was none)."""

    identity_id: int
    is_new_identity: bool
    distance: float | None
    crop_paths: list[str]


@dataclass(frozen=True)
class IdentityHit:
    """A ranked identity; ``evidence`` lists its entries nearest to the query first (video, camera_id,
    frame_index, timestamp_s, crop_path, box_xywh, track_id, quality, distance)."""

    identity_id: int
    distance: float
    evidence: list[dict] = field(default_factory=list)


def blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def unblob(data: bytes, feature_dim: int, what: str) -> np.ndarray:
    """A stored feature; one of the wrong length means the database is damaged, so it is refused by name."""
    vector = np.frombuffer(data, dtype=np.float32)
    if vector.size != feature_dim:
        raise GalleryCorruptError(f"{what}: stored feature has {vector.size} values, expected {feature_dim}")
    return vector
