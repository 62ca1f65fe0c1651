"""The steps of a gallery's writes: validating a video or a track, JPEG-encoding its crops, and the SQL (plus
crop files) of one ``register_video`` or ``add_track``. Validation and encoding happen before anything is
written, so bad input changes nothing; the ``insert_*`` functions run inside a transaction that
:class:`~reid.gallery.store.GalleryStore` opens, commits or rolls back (and it removes the crops of a rolled
back track), so the atomicity of each write stays visible in one place.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from reid.gallery import metric as gmetric
from reid.gallery._files import CROPS_DIRNAME
from reid.gallery._records import CropEntry, blob
from reid.gallery.matching import MatchDecision

_JPEG_QUALITY = 95

_SQL_NEW_CAMERA = "INSERT OR IGNORE INTO cameras(id, first_seen) VALUES (?, ?)"
_SQL_NEW_VIDEO = (
    "INSERT INTO videos(source, camera_id, fps, num_frames, width, height, registered_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SQL_COVISIBLE = (
    "SELECT DISTINCT identity_id FROM tracks WHERE video_id = ? AND first_frame <= ? AND last_frame >= ?"
)
_SQL_NEW_IDENTITY = "INSERT INTO identities(feature_sum, num_tracks, created_at) VALUES (?, ?, ?)"
_SQL_UPDATE_IDENTITY = "UPDATE identities SET feature_sum = ?, num_tracks = ? WHERE id = ?"
_SQL_NEW_TRACK = (
    "INSERT INTO tracks(video_id, camera_id, video_track_id, first_frame, last_frame, start_s, end_s,"
    " identity_id, match_distance, feature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_NEW_ENTRY = (
    "INSERT INTO entries(track_id, frame_index, timestamp_s, box_x, box_y, box_w, box_h, det_score, quality,"
    " crop_path, feature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

CropWriter = Callable[[bytes, int, int, int, int, int], Path]
"""Writes one crop: (jpeg, identity_id, camera_id, video_id, frame, k) -> the path it was written to."""


@dataclass(frozen=True)
class EncodedCrop:
    entry: CropEntry
    jpeg: bytes
    feature: np.ndarray


# ---------------------------------------------------------------------------------------------------- videos
def check_video(
    path: str, camera_id: int, fps: float, num_frames: int | None, width: int, height: int
) -> None:
    if int(camera_id) != camera_id or camera_id < 0:
        raise ValueError(f"camera_id must be a non-negative integer, got {camera_id!r}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps of {path} must be positive, got {fps!r}")
    if num_frames is not None and num_frames < 0:
        raise ValueError(f"num_frames of {path} must be >= 0 or None, got {num_frames!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size of {path} must be positive, got {width}x{height}")


def insert_video(
    conn: sqlite3.Connection,
    path: str,
    camera_id: int,
    fps: float,
    num_frames: int | None,
    width: int,
    height: int,
) -> int:
    """The camera (if new) and the video's row, inside the caller's transaction; returns the video id."""
    conn.execute(_SQL_NEW_CAMERA, (int(camera_id), time.time()))
    cursor = conn.execute(
        _SQL_NEW_VIDEO,
        (
            str(path),
            int(camera_id),
            float(fps),
            None if num_frames is None else int(num_frames),
            int(width),
            int(height),
            time.time(),
        ),
    )
    return int(cursor.lastrowid)


# ---------------------------------------------------------------------------------------------------- tracks
def check_track_video(conn: sqlite3.Connection, root: Path, video_id: int, camera_id: int) -> None:
    row = conn.execute("SELECT camera_id FROM videos WHERE id = ?", (int(video_id),)).fetchone()
    if row is None:
        raise ValueError(f"video_id {video_id} is not registered in gallery {root}")
    if row[0] != camera_id:
        raise ValueError(f"camera_id {camera_id} differs from video {video_id}'s camera {row[0]}")


def encode_crops(crops: Sequence[CropEntry], track_id: int, feature_dim: int) -> list[EncodedCrop]:
    """Validate every crop and JPEG-encode it before anything is written, so bad input changes nothing."""
    if not crops:
        raise ValueError(f"track {track_id}: crops is empty; a track needs at least one crop")
    encoded = []
    for k, crop in enumerate(crops):
        what = f"track {track_id}, crop {k}"
        if not isinstance(crop, CropEntry):
            raise ValueError(f"{what}: expected a CropEntry, got {type(crop).__name__}")
        image = crop.image
        if not (
            isinstance(image, np.ndarray)
            and image.dtype == np.uint8
            and image.ndim == 3
            and image.shape[2] == 3
            and image.shape[0] > 0
            and image.shape[1] > 0
        ):
            raise ValueError(
                f"{what}: image must be a non-empty BGR uint8 H x W x 3 array, got "
                f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
            )
        if int(crop.frame_index) != crop.frame_index or crop.frame_index < 0:
            raise ValueError(f"{what}: frame_index must be a non-negative integer, got {crop.frame_index!r}")
        box = np.asarray(crop.box_xywh, dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise ValueError(f"{what}: box_xywh must be 4 finite numbers, got {crop.box_xywh!r}")
        numbers = {"timestamp_s": crop.timestamp_s, "det_score": crop.det_score, "quality": crop.quality}
        for name, value in numbers.items():
            if not np.isfinite(value):
                raise ValueError(f"{what}: {name} must be finite, got {value!r}")
        feature = gmetric.as_feature_matrix(crop.feature, feature_dim, f"{what}: feature")[0]
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise ValueError(f"{what}: OpenCV could not encode the image as JPEG")
        # Plain Python numbers: sqlite3 silently stores numpy scalars (np.int64, np.float32) as BLOBs.
        plain = dataclasses.replace(
            crop, frame_index=int(crop.frame_index), timestamp_s=float(crop.timestamp_s),
            box_xywh=tuple(float(v) for v in box), det_score=float(crop.det_score),
            quality=float(crop.quality),
        )  # fmt: skip
        encoded.append(EncodedCrop(plain, jpeg.tobytes(), feature))
    return encoded


def frame_span(
    encoded: Sequence[EncodedCrop], track_id: int, first_frame: int | None, last_frame: int | None
) -> tuple[int, int]:
    """The frames a track spans: the given ones (which must contain its crops' frames) or its crops'."""
    frames = [c.entry.frame_index for c in encoded]
    first = min(frames) if first_frame is None else int(first_frame)
    last = max(frames) if last_frame is None else int(last_frame)
    if not first <= min(frames) <= max(frames) <= last:
        raise ValueError(
            f"track {track_id}: frame span [{first}, {last}] must contain its crops' frames "
            f"[{min(frames)}, {max(frames)}]"
        )
    return first, last


def covisible_identities(conn: sqlite3.Connection, video_id: int, first: int, last: int) -> list[int]:
    """Identities with a track in this video overlapping [first, last]: on screen with it, so other people."""
    return [i for (i,) in conn.execute(_SQL_COVISIBLE, (int(video_id), last, first))]


def insert_track(
    conn: sqlite3.Connection,
    track_row: tuple[int, int, int, int, int, float, float],
    feature: np.ndarray,
    encoded: Sequence[EncodedCrop],
    decision: MatchDecision,
    new_sum: np.ndarray,
    num_tracks: int,
    *,
    write_crop: CropWriter,
    written: list[Path],
) -> tuple[int, list[int]]:
    """The identity, track and entry rows of ``add_track`` and its crops, inside the caller's transaction.

    ``track_row``: (video_id, camera_id, video_track_id, first_frame, last_frame, start_s, end_s).
    Each crop's path is appended to ``written`` as soon as it is on disk, so that on a failure part way the
    caller can remove exactly the files this write created. Returns (identity_id, entry ids).
    """
    video_id, camera_id = track_row[:2]
    entry_ids: list[int] = []
    sum_blob = new_sum.astype(np.float64).tobytes()
    if decision.identity_id is None:
        cursor = conn.execute(_SQL_NEW_IDENTITY, (sum_blob, num_tracks, time.time()))
        identity_id = int(cursor.lastrowid)
    else:
        identity_id = decision.identity_id
        conn.execute(_SQL_UPDATE_IDENTITY, (sum_blob, num_tracks, identity_id))
    values = (*track_row, identity_id, decision.distance, blob(feature))
    track_pk = int(conn.execute(_SQL_NEW_TRACK, values).lastrowid)
    for k, crop in enumerate(encoded):
        entry = crop.entry
        path = write_crop(crop.jpeg, identity_id, camera_id, video_id, entry.frame_index, k)
        written.append(path)
        values = (
            track_pk, entry.frame_index, entry.timestamp_s, *entry.box_xywh,
            entry.det_score, entry.quality, f"{CROPS_DIRNAME}/{path.name}", blob(crop.feature),
        )  # fmt: skip
        entry_ids.append(int(conn.execute(_SQL_NEW_ENTRY, values).lastrowid))
    return identity_id, entry_ids
