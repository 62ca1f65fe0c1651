"""A persistent, searchable gallery of people seen in videos: SQLite + faiss + crop images in one folder.

Layout of a gallery folder::

    gallery.sqlite   the truth: cameras, videos, identities, tracks, entries (features as float32 blobs)
    entries.faiss    cache of the entry vectors keyed by entry id; rebuilt or caught up from the DB on open
    crops/           one JPEG per entry, Market-1501 style names
    gallery.lock     held (flock) by the one process writing

Crash safety: each ``add_track`` is one SQLite transaction; its crops are written under temporary names and
renamed into place before COMMIT, so a killed process leaves at worst crop files without rows, which the next
writer deletes on open. The faiss file is written atomically on ``close``/``flush`` and is only trusted when
its ids are exactly the database's entry ids up to its last one; the entries after that are added on open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import cv2
import faiss
import numpy as np
from tqdm import tqdm

from reid.gallery import metric as gmetric
from reid.gallery.errors import GalleryCorruptError, GalleryLockedError, GalleryMismatchError
from reid.gallery.matching import IdentityBank, MatchDecision
from reid.gallery.schema import (
    DB_FILENAME,
    GalleryMeta,
    connect,
    create_schema,
    read_meta,
    write_match_threshold,
)
from reid.utils.io import atomic_open

logger = logging.getLogger(__name__)

INDEX_FILENAME = "entries.faiss"
CROPS_DIRNAME = "crops"
LOCK_FILENAME = "gallery.lock"
_JPEG_QUALITY = 95
_REBUILD_CHUNK = 4096

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
_SQL_EVIDENCE = (
    "SELECT e.id, e.frame_index, e.timestamp_s, e.box_x, e.box_y, e.box_w, e.box_h, e.crop_path, e.feature,"
    " t.camera_id, t.video_track_id, v.source, e.quality FROM entries e JOIN tracks t ON e.track_id = t.id"
    " JOIN videos v ON t.video_id = v.id WHERE t.identity_id = ? ORDER BY e.id"
)


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


@dataclass(frozen=True)
class _EncodedCrop:
    entry: CropEntry
    jpeg: bytes
    feature: np.ndarray


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _unblob(blob: bytes, feature_dim: int, what: str) -> np.ndarray:
    vector = np.frombuffer(blob, dtype=np.float32)
    if vector.size != feature_dim:
        raise GalleryCorruptError(f"{what}: stored feature has {vector.size} values, expected {feature_dim}")
    return vector


def _acquire_lock(path: Path) -> IO:
    """Exclusive, non-blocking, released by the OS when the process dies (so a killed writer never blocks)."""
    handle = open(path, "a+")  # noqa: SIM115 - held for the store's lifetime
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        handle.close()
        raise GalleryLockedError(
            f"{path.parent} is open for writing by another process; close it first or "
            "open with read_only=True"
        ) from exc
    return handle


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable before the commit that refers to them (no-op where unsupported)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class GalleryStore:
    """Open with :meth:`open`; use as a context manager so the faiss cache is saved on exit."""

    def __init__(
        self,
        root: Path,
        conn: sqlite3.Connection,
        meta: GalleryMeta,
        *,
        read_only: bool,
        lock_handle: IO | None,
        durable: bool = True,
    ) -> None:
        self.root = root
        self._conn = conn
        self._meta = meta
        self.read_only = read_only
        self._lock_handle = lock_handle
        self._bank = IdentityBank(meta.feature_dim, meta.metric)
        self._entry_identity: dict[int, int] = {}
        self._index = gmetric.new_index(meta.feature_dim, meta.metric)
        self._index_dirty = False
        self._closed = False
        self._durable = durable

    # ----------------------------------------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        *,
        model_name: str,
        feature_dim: int,
        create: bool = True,
        match_threshold: float | None = None,
        metric: str | None = None,
        read_only: bool = False,
        durable: bool = True,
    ) -> GalleryStore:
        """Open (or create) the gallery at ``root`` for ``feature_dim``-dimensional ``model_name`` features.

        ``metric`` is fixed at creation ("cosine" when None); on an existing gallery it must match if given.
        ``match_threshold`` overrides the stored threshold and is saved for later runs (unless read-only).
        ``read_only`` opens without the writer lock, e.g. to search while another process is adding.
        ``durable=False`` skips the fsync of each crop file (a few ms each on slow disks): the gallery stays
        consistent when the process is killed, but after a power cut the last crops may be truncated.
        """
        root = Path(root)
        if not model_name:
            raise ValueError("model_name must be a non-empty string")
        if int(feature_dim) <= 0:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        if metric is not None:
            gmetric.check_metric(metric)
        if match_threshold is not None and not (np.isfinite(match_threshold) and match_threshold >= 0):
            raise ValueError(f"match_threshold must be a finite distance >= 0, got {match_threshold}")
        db_path = root / DB_FILENAME
        cls._check_folder(root, db_path, create=create, read_only=read_only)

        lock_handle = None if read_only else _acquire_lock(root / LOCK_FILENAME)
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(db_path, read_only=read_only)
            # An empty database is a gallery whose creation was interrupted: create it again.
            empty = not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if empty and not read_only:
                chosen_metric = metric or "cosine"
                threshold = match_threshold
                if threshold is None:
                    threshold = gmetric.DEFAULT_MATCH_THRESHOLD[chosen_metric]
                create_schema(
                    conn,
                    model_name=model_name,
                    feature_dim=int(feature_dim),
                    metric=chosen_metric,
                    match_threshold=threshold,
                )
                logger.info(
                    "created gallery %s (%s, dim %d, %s)", root, model_name, feature_dim, chosen_metric
                )
            meta = read_meta(conn, db_path)
            cls._check_compatible(meta, root, model_name, int(feature_dim), metric)
            if match_threshold is not None and match_threshold != meta.match_threshold and not read_only:
                write_match_threshold(conn, match_threshold)
            if match_threshold is not None:
                meta = dataclasses.replace(meta, match_threshold=float(match_threshold))
            store = cls(root, conn, meta, read_only=read_only, lock_handle=lock_handle, durable=durable)
            store._load_caches()
        except BaseException:
            if conn is not None:
                conn.close()
            if lock_handle is not None:
                lock_handle.close()
            raise
        return store

    @staticmethod
    def read_meta(root: str | os.PathLike) -> GalleryMeta:
        """What an existing gallery was built with (model, dim, metric, threshold), without locking it."""
        db_path = Path(root) / DB_FILENAME
        if not db_path.is_file():
            raise FileNotFoundError(f"no gallery at {root}: {db_path} does not exist")
        conn = connect(db_path, read_only=True)
        try:
            return read_meta(conn, db_path)
        finally:
            conn.close()

    @staticmethod
    def _check_folder(root: Path, db_path: Path, *, create: bool, read_only: bool) -> None:
        """Refuse files and unrelated non-empty folders; prepare the folder of a new gallery."""
        if root.exists() and not root.is_dir():
            raise GalleryCorruptError(f"gallery path {root} is a file, expected a gallery folder")
        if db_path.exists():
            return
        if not create or read_only:
            raise FileNotFoundError(f"no gallery at {root}: {db_path} does not exist")
        if root.exists() and any(p.name != LOCK_FILENAME for p in root.iterdir()):
            raise GalleryCorruptError(
                f"{root} is not a gallery (it has no {DB_FILENAME}) and is not empty; "
                "give an empty or new folder to create a gallery"
            )
        (root / CROPS_DIRNAME).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _check_compatible(
        meta: GalleryMeta, root: Path, model_name: str, feature_dim: int, metric: str | None
    ) -> None:
        problems = []
        if meta.model_name != model_name:
            problems.append(f"embedding model {meta.model_name!r} (requested {model_name!r})")
        if meta.feature_dim != feature_dim:
            problems.append(f"feature dimension {meta.feature_dim} (requested {feature_dim})")
        if metric is not None and meta.metric != metric:
            problems.append(f"metric {meta.metric!r} (requested {metric!r})")
        if problems:
            raise GalleryMismatchError(
                f"gallery {root} was built with "
                + ", ".join(problems)
                + "; use the same embedder as when it was built, or a new gallery folder"
            )

    def _load_caches(self) -> None:
        """Prototypes and entry->identity map from the DB; crops and faiss index made to agree with it.

        A prototype damaged on disk (non-finite, or longer than its tracks' unit features can sum to) would
        poison every match, so it is rebuilt from the identity's stored track features; an identity with no
        intact track feature is left out of matching. Both cases are logged by id.
        """
        dim = self._meta.feature_dim
        rebuilt, quarantined = [], []
        for identity_id, feature_sum, num_tracks in self._conn.execute(
            "SELECT id, feature_sum, num_tracks FROM identities ORDER BY id"
        ).fetchall():
            vector = np.frombuffer(feature_sum, dtype=np.float64)
            if vector.size != dim:
                raise GalleryCorruptError(
                    f"{self.root}: identity {identity_id} prototype has {vector.size} values"
                )
            if not self._plausible_sum(vector, num_tracks):
                vector, num_tracks = self._prototype_from_tracks(identity_id)
                (quarantined if num_tracks == 0 else rebuilt).append(identity_id)
                if num_tracks == 0:
                    continue
            self._bank.set(identity_id, vector, num_tracks)
        if rebuilt:
            logger.warning("%s: damaged prototype of identities %s rebuilt from their tracks",
                           self.root, rebuilt)
        if quarantined:
            logger.warning("%s: identities %s have no intact feature left and are excluded from matching",
                           self.root, quarantined)
        self._entry_identity = dict(
            self._conn.execute("SELECT e.id, t.identity_id FROM entries e JOIN tracks t ON e.track_id = t.id")
        )
        if not self.read_only:
            self._remove_orphan_crops()
        self._load_index()

    def _plausible_sum(self, vector: np.ndarray, num_tracks: int) -> bool:
        if not np.isfinite(vector).all() or num_tracks < 1:
            return False
        # Cosine contributions are unit vectors, so their sum is at most num_tracks long.
        with np.errstate(over="ignore"):  # rotted bits can read as huge numbers: an infinite norm is refused
            norm = float(np.linalg.norm(vector))
        return self._meta.metric != "cosine" or norm <= num_tracks * (1 + 1e-3)

    def _prototype_from_tracks(self, identity_id: int) -> tuple[np.ndarray, int]:
        """The running sum of an identity's intact stored track features, and their count."""
        total, count = np.zeros(self._meta.feature_dim, dtype=np.float64), 0
        for track_id, blob in self._conn.execute(
            "SELECT id, feature FROM tracks WHERE identity_id = ? ORDER BY id", (identity_id,)
        ):
            feature = _unblob(blob, self._meta.feature_dim, f"track {track_id}")
            if np.isfinite(feature).all() and np.any(feature):
                total += gmetric.prepare(feature.reshape(1, -1), self._meta.metric)[0].astype(np.float64)
                count += 1
        return total, count

    def _remove_orphan_crops(self) -> None:
        crops_dir = self.root / CROPS_DIRNAME
        crops_dir.mkdir(exist_ok=True)
        referenced = {Path(p).name for (p,) in self._conn.execute("SELECT crop_path FROM entries")}
        removed = 0
        for path in crops_dir.iterdir():
            if path.is_file() and path.name not in referenced:
                path.unlink()
                removed += 1
        if removed:
            logger.warning("%s: removed %d crop file(s) left by an interrupted write", self.root, removed)
        missing = len(referenced) - sum((crops_dir / name).is_file() for name in referenced)
        if missing:
            logger.warning("%s: %d entries refer to crop files that no longer exist", self.root, missing)

    def _load_index(self) -> None:
        """Trust the saved index only if its ids are exactly the DB's entry ids up to its last id."""
        db_ids = np.fromiter(
            (i for (i,) in self._conn.execute("SELECT id FROM entries ORDER BY id")), np.int64
        )
        index_path = self.root / INDEX_FILENAME
        cached = self._read_index_file(index_path)
        start_after = -1
        if cached is not None:
            cached_ids = np.sort(faiss.vector_to_array(cached.id_map).astype(np.int64))
            last = cached_ids[-1] if cached_ids.size else -1
            if np.array_equal(cached_ids, db_ids[db_ids <= last]):
                self._index, start_after = cached, int(last)
            else:
                logger.warning(
                    "%s: faiss index is stale (%d ids vs %d entries); rebuilding it from the database",
                    self.root,
                    cached_ids.size,
                    db_ids.size,
                )
        missing = int((db_ids > start_after).sum())
        if missing:
            self._add_entries_from_db(start_after, missing)
            self._index_dirty = True
        if self._index_dirty and not self.read_only:
            self.flush()

    def _read_index_file(self, path: Path) -> faiss.IndexIDMap2 | None:
        if not path.is_file():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            logger.warning("%s: unreadable faiss index (%s); rebuilding it", path, exc)
            return None
        expected = faiss.METRIC_INNER_PRODUCT if self._meta.metric == "cosine" else faiss.METRIC_L2
        if (
            not isinstance(index, faiss.IndexIDMap2)
            or index.d != self._meta.feature_dim
            or (index.metric_type != expected)
        ):
            logger.warning("%s: faiss index has the wrong type or dimension; rebuilding it", path)
            return None
        return index

    def _add_entries_from_db(self, after_id: int, count: int) -> None:
        dim, metric = self._meta.feature_dim, self._meta.metric
        rows = self._conn.execute("SELECT id, feature FROM entries WHERE id > ? ORDER BY id", (after_id,))
        with tqdm(
            total=count, desc="indexing gallery entries", unit="entry", disable=count < _REBUILD_CHUNK
        ) as bar:
            while batch := rows.fetchmany(_REBUILD_CHUNK):
                ids = np.array([row[0] for row in batch], dtype=np.int64)
                feats = np.stack([_unblob(row[1], dim, f"entry {row[0]}") for row in batch])
                intact = np.isfinite(feats).all(axis=1)
                if not intact.all():
                    logger.warning("%s: entries %s have damaged features and are left out of search",
                                   self.root, ids[~intact].tolist())
                self._index.add_with_ids(gmetric.prepare(feats[intact], metric), ids[intact])
                bar.update(len(batch))

    # ------------------------------------------------------------------------------------------- properties
    @property
    def meta(self) -> GalleryMeta:
        return self._meta

    @property
    def model_name(self) -> str:
        return self._meta.model_name

    @property
    def feature_dim(self) -> int:
        return self._meta.feature_dim

    @property
    def metric(self) -> str:
        return self._meta.metric

    @property
    def match_threshold(self) -> float:
        return self._meta.match_threshold

    def set_match_threshold(self, threshold: float) -> None:
        """Change the threshold used by later ``add_track`` calls and store it for later runs."""
        self._require_writable()
        if not (np.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"match_threshold must be a finite distance >= 0, got {threshold}")
        write_match_threshold(self._conn, threshold)
        self._meta = dataclasses.replace(self._meta, match_threshold=float(threshold))

    def _count(self, table: str) -> int:
        return int(self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    @property
    def num_identities(self) -> int:
        return self._count("identities")

    @property
    def num_tracks(self) -> int:
        return self._count("tracks")

    @property
    def num_entries(self) -> int:
        return self._count("entries")

    @property
    def num_videos(self) -> int:
        return self._count("videos")

    @property
    def num_indexed(self) -> int:
        return int(self._index.ntotal)

    # -------------------------------------------------------------------------------------------- writing
    def _require_writable(self) -> None:
        if self._closed:
            raise RuntimeError(f"gallery {self.root} is closed")
        if self.read_only:
            raise PermissionError(f"gallery {self.root} was opened read-only")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def register_video(
        self,
        path: str,
        *,
        camera_id: int,
        fps: float,
        num_frames: int | None,
        width: int,
        height: int,
    ) -> int:
        """Record a source video (file, camera index or stream URL); returns its id for ``add_track``."""
        self._require_writable()
        if int(camera_id) != camera_id or camera_id < 0:
            raise ValueError(f"camera_id must be a non-negative integer, got {camera_id!r}")
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps of {path} must be positive, got {fps!r}")
        if num_frames is not None and num_frames < 0:
            raise ValueError(f"num_frames of {path} must be >= 0 or None, got {num_frames!r}")
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size of {path} must be positive, got {width}x{height}")
        with self._transaction():
            self._conn.execute(
                "INSERT OR IGNORE INTO cameras(id, first_seen) VALUES (?, ?)", (int(camera_id), time.time())
            )
            cursor = self._conn.execute(
                "INSERT INTO videos(source, camera_id, fps, num_frames, width, height, registered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
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

    def add_track(
        self,
        video_id: int,
        camera_id: int,
        track_id: int,
        crops: Sequence[CropEntry],
        track_feature: np.ndarray,
        *,
        first_frame: int | None = None,
        last_frame: int | None = None,
        match_threshold: float | None = None,
    ) -> AddTrackResult:
        """Store a finished track and assign it an identity, all in one transaction.

        ``first_frame``/``last_frame``: the frames the track spans in its video (default: those of its crops).
        Give them when the crops are a selection, so an identity seen at the same time is never matched.
        ``match_threshold``: for this track only, instead of the gallery's (e.g. a stricter one calibrated on
        the current video); not stored.
        """
        self._require_writable()
        dim = self._meta.feature_dim
        row = self._conn.execute("SELECT camera_id FROM videos WHERE id = ?", (int(video_id),)).fetchone()
        if row is None:
            raise ValueError(f"video_id {video_id} is not registered in gallery {self.root}")
        if row[0] != camera_id:
            raise ValueError(f"camera_id {camera_id} differs from video {video_id}'s camera {row[0]}")
        feature = gmetric.as_feature_matrix(track_feature, dim, f"track {track_id}: track_feature")[0]
        encoded = self._encode_crops(crops, track_id)
        frames = [c.entry.frame_index for c in encoded]
        first = min(frames) if first_frame is None else int(first_frame)
        last = max(frames) if last_frame is None else int(last_frame)
        if not first <= min(frames) <= max(frames) <= last:
            raise ValueError(
                f"track {track_id}: frame span [{first}, {last}] must contain its crops' frames "
                f"[{min(frames)}, {max(frames)}]"
            )
        times = [c.entry.timestamp_s for c in encoded]

        excluded = [i for (i,) in self._conn.execute(_SQL_COVISIBLE, (int(video_id), last, first))]
        threshold = self._meta.match_threshold if match_threshold is None else float(match_threshold)
        decision: MatchDecision = self._bank.match(feature, threshold, excluded)
        new_sum, num_tracks = self._bank.updated_sum(decision.identity_id, feature)
        track_row = (int(video_id), int(camera_id), int(track_id), first, last, min(times), max(times))
        identity_id, entry_ids, written = self._write_track(
            track_row, feature, encoded, decision, new_sum, num_tracks
        )

        self._bank.set(identity_id, new_sum, num_tracks)
        feats = np.stack([c.feature for c in encoded])
        self._index.add_with_ids(
            gmetric.prepare(feats, self._meta.metric), np.asarray(entry_ids, dtype=np.int64)
        )
        self._entry_identity.update(dict.fromkeys(entry_ids, identity_id))
        self._index_dirty = True
        return AddTrackResult(
            identity_id=identity_id,
            is_new_identity=decision.identity_id is None,
            distance=decision.distance,
            crop_paths=[str(p) for p in written],
        )

    def _write_track(
        self,
        track_row: tuple[int, int, int, int, int, float, float],
        feature: np.ndarray,
        encoded: list[_EncodedCrop],
        decision: MatchDecision,
        new_sum: np.ndarray,
        num_tracks: int,
    ) -> tuple[int, list[int], list[Path]]:
        """The one transaction of ``add_track``; on any failure its crop files are removed again.

        ``track_row``: (video_id, camera_id, video_track_id, first_frame, last_frame, start_s, end_s).
        """
        video_id, camera_id = track_row[:2]
        written: list[Path] = []
        entry_ids: list[int] = []
        try:
            with self._transaction():
                sum_blob = new_sum.astype(np.float64).tobytes()
                if decision.identity_id is None:
                    cursor = self._conn.execute(_SQL_NEW_IDENTITY, (sum_blob, num_tracks, time.time()))
                    identity_id = int(cursor.lastrowid)
                else:
                    identity_id = decision.identity_id
                    self._conn.execute(_SQL_UPDATE_IDENTITY, (sum_blob, num_tracks, identity_id))
                values = (*track_row, identity_id, decision.distance, _blob(feature))
                track_pk = int(self._conn.execute(_SQL_NEW_TRACK, values).lastrowid)
                for k, crop in enumerate(encoded):
                    entry = crop.entry
                    path = self._write_crop(crop.jpeg, identity_id, camera_id, video_id, entry.frame_index, k)
                    written.append(path)
                    values = (
                        track_pk, entry.frame_index, entry.timestamp_s, *entry.box_xywh,
                        entry.det_score, entry.quality, f"{CROPS_DIRNAME}/{path.name}", _blob(crop.feature),
                    )  # fmt: skip
                    entry_ids.append(int(self._conn.execute(_SQL_NEW_ENTRY, values).lastrowid))
                if self._durable:
                    _fsync_dir(self.root / CROPS_DIRNAME)
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return identity_id, entry_ids, written

    def _encode_crops(self, crops: Sequence[CropEntry], track_id: int) -> list[_EncodedCrop]:
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
                raise ValueError(
                    f"{what}: frame_index must be a non-negative integer, got {crop.frame_index!r}"
                )
            box = np.asarray(crop.box_xywh, dtype=np.float64)
            if box.shape != (4,) or not np.isfinite(box).all():
                raise ValueError(f"{what}: box_xywh must be 4 finite numbers, got {crop.box_xywh!r}")
            numbers = {"timestamp_s": crop.timestamp_s, "det_score": crop.det_score, "quality": crop.quality}
            for name, value in numbers.items():
                if not np.isfinite(value):
                    raise ValueError(f"{what}: {name} must be finite, got {value!r}")
            feature = gmetric.as_feature_matrix(crop.feature, self._meta.feature_dim, f"{what}: feature")[0]
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
            if not ok:
                raise ValueError(f"{what}: OpenCV could not encode the image as JPEG")
            # Plain Python numbers: sqlite3 silently stores numpy scalars (np.int64, np.float32) as BLOBs.
            plain = dataclasses.replace(
                crop, frame_index=int(crop.frame_index), timestamp_s=float(crop.timestamp_s),
                box_xywh=tuple(float(v) for v in box), det_score=float(crop.det_score),
                quality=float(crop.quality),
            )  # fmt: skip
            encoded.append(_EncodedCrop(plain, jpeg.tobytes(), feature))
        return encoded

    def _write_crop(
        self, jpeg: bytes, identity_id: int, camera_id: int, video_id: int, frame: int, k: int
    ) -> Path:
        """Write atomically under a Market-1501 style name; never overwrite a crop another entry owns."""
        crops_dir = self.root / CROPS_DIRNAME
        while True:
            path = crops_dir / f"{identity_id:04d}_c{camera_id}s{video_id}_{frame:06d}_{k:02d}.jpg"
            if not path.exists():
                break
            k += 1
        if self._durable:
            with atomic_open(path, "wb") as handle:
                handle.write(jpeg)
        else:  # same rename-into-place, without waiting for the disk
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------------------------------- searching
    def search(
        self,
        query_feature: np.ndarray,
        topk: int = 10,
        rerank: bool = False,
        *,
        evidence_per_identity: int = 5,
        rerank_pool: int = 1000,
    ) -> list[IdentityHit]:
        """Identities ranked by their nearest entry to the query (min over entries, exact).

        With ``rerank`` the ``rerank_pool`` nearest entries are re-ranked with k-reciprocal re-ranking
        (Zhong et al., CVPR 2017) before aggregating per identity; hit distances are then re-ranked distances.
        """
        if topk <= 0:
            raise ValueError(f"topk must be positive, got {topk}")
        query = gmetric.as_feature_matrix(query_feature, self._meta.feature_dim, "query_feature")
        if self._index.ntotal == 0:
            return []
        if rerank:
            entry_ids, distances = self._reranked_entries(query, rerank_pool)
        else:
            entry_ids, distances = self._nearest_entries(query, topk)
        best: dict[int, float] = {}
        for entry_id, distance in zip(entry_ids, distances, strict=True):
            identity_id = self._entry_identity[int(entry_id)]
            if identity_id not in best:
                best[identity_id] = float(distance)
                if len(best) == topk:
                    break
        return [
            IdentityHit(identity_id, distance, self._evidence(identity_id, query, evidence_per_identity))
            for identity_id, distance in best.items()
        ]

    def _nearest_entries(self, query: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
        """Grow k until the sorted entries hold ``topk`` identities: their first entries are then exact."""
        total = int(self._index.ntotal)
        k = min(total, max(64, 8 * topk))
        prepared = gmetric.prepare(query, self._meta.metric)
        while True:
            scores, ids = gmetric.search_one(self._index, prepared, k)
            keep = ids >= 0
            ids, scores = ids[keep], scores[keep]
            if k >= total or len({self._entry_identity[int(i)] for i in ids}) >= topk:
                return ids, gmetric.scores_to_distances(scores, self._meta.metric)
            k = min(total, 4 * k)

    def _reranked_entries(self, query: np.ndarray, pool: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            from reid.evaluation import re_ranking
        except ImportError as exc:
            raise RuntimeError(
                "rerank=True needs reid.evaluation.re_ranking, which is not available"
            ) from exc
        k = min(int(self._index.ntotal), pool)
        prepared = gmetric.prepare(query, self._meta.metric)
        _, ids = gmetric.search_one(self._index, prepared, k)
        ids = ids[ids >= 0]
        gallery = np.stack([self._index.reconstruct(int(i)) for i in ids])
        distances = np.asarray(re_ranking(prepared, gallery), dtype=np.float32)[0]
        order = np.argsort(distances, kind="stable")
        return ids[order], distances[order]

    def identity_evidence(self, identity_id: int, limit: int = 5) -> list[dict]:
        """An identity's stored entries, best quality first (e.g. for a contact sheet); same keys as a hit's
        evidence, without ``distance``."""
        rows = self._conn.execute(_SQL_EVIDENCE, (int(identity_id),)).fetchall()
        if not rows:
            raise ValueError(f"identity {identity_id} does not exist in gallery {self.root}")
        order = sorted(range(len(rows)), key=lambda i: (-rows[i][12], rows[i][0]))[:limit]
        return [self._evidence_item(rows[i]) for i in order]

    def _evidence(self, identity_id: int, query: np.ndarray, limit: int) -> list[dict]:
        rows = self._conn.execute(_SQL_EVIDENCE, (identity_id,)).fetchall()
        feats = np.stack([_unblob(r[8], self._meta.feature_dim, f"entry {r[0]}") for r in rows])
        intact = np.isfinite(feats).all(axis=1)
        rows, feats = [r for r, ok in zip(rows, intact, strict=True) if ok], feats[intact]
        if not rows:
            return []
        distances = gmetric.pairwise_distances(query, feats, self._meta.metric)[0]
        order = np.argsort(distances, kind="stable")[:limit]
        return [{**self._evidence_item(rows[i]), "distance": float(distances[i])} for i in order]

    def _evidence_item(self, row: tuple) -> dict:
        return {
            "video": row[11],
            "camera_id": row[9],
            "track_id": row[10],
            "frame_index": row[1],
            "timestamp_s": row[2],
            "box_xywh": tuple(row[3:7]),
            "crop_path": str(self._crop_path(row[0], row[7])),
            "quality": row[12],
        }

    def _crop_path(self, entry_id: int, stored: str) -> Path:
        """The crop file of an entry, refused when the stored path leads out of the crops folder."""
        crops = (self.root / CROPS_DIRNAME).resolve()
        path = self.root / stored
        if not path.resolve().is_relative_to(crops):
            raise GalleryCorruptError(
                f"{self.root}: entry {entry_id} has crop_path {stored!r}, which leads outside {crops}"
            )
        return path

    # --------------------------------------------------------------------------------------------- closing
    def flush(self) -> None:
        """Save the faiss cache atomically (cheap to skip: a stale cache is caught up on the next open)."""
        self._require_writable()
        if not self._index_dirty:
            return
        data = faiss.serialize_index(self._index)
        with atomic_open(self.root / INDEX_FILENAME, "wb") as handle:
            handle.write(data.tobytes())
        self._index_dirty = False

    def close(self) -> None:
        if self._closed:
            return
        try:
            if not self.read_only:
                self.flush()
                # Fold the WAL back into gallery.sqlite so a closed gallery is one self-contained file.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._closed = True
            self._conn.close()
            if self._lock_handle is not None:
                self._lock_handle.close()

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
