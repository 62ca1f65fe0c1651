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

:class:`GalleryStore` opens, closes and holds the transactions; the work is in private modules by concern:
``_files`` (folder checks, lock, crop files), ``_prototypes`` (identity prototypes loaded on open), ``_index``
(the faiss cache and nearest-entry search), ``_writes`` (validation and SQL of writes), ``_evidence`` (search
results' evidence) and ``_records`` (the public records, re-exported here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from reid.gallery import _evidence, _files, _writes
from reid.gallery import metric as gmetric
from reid.gallery._files import CROPS_DIRNAME, LOCK_FILENAME  # also imported from here
from reid.gallery._index import INDEX_FILENAME, EntryIndex
from reid.gallery._prototypes import load_prototypes
from reid.gallery._records import AddTrackResult, CropEntry, IdentityHit  # public here and in reid.gallery
from reid.gallery.errors import GalleryMismatchError
from reid.gallery.matching import IdentityBank, MatchDecision
from reid.gallery.schema import (
    DB_FILENAME,
    GalleryMeta,
    connect,
    create_schema,
    read_meta,
    write_match_threshold,
)

logger = logging.getLogger(__name__)


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
        self._index = EntryIndex(meta.feature_dim, meta.metric)
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
        _files.check_folder(root, db_path, create=create, read_only=read_only)

        lock_handle = None if read_only else _files.acquire_lock(root / LOCK_FILENAME)
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
        """Prototypes and entry->identity map from the DB; crops and faiss index made to agree with it."""
        load_prototypes(self._bank, self._conn, self.root, self._meta)
        self._index.load_identities(self._conn)
        if not self.read_only:
            _files.remove_orphan_crops(self._conn, self.root)
        self._index.load(self._conn, self.root)
        if self._index.dirty and not self.read_only:
            self.flush()

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
    def num_indexed(self) -> int:
        return self._index.ntotal

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
        _writes.check_video(path, camera_id, fps, num_frames, width, height)
        with self._transaction():
            return _writes.insert_video(self._conn, path, camera_id, fps, num_frames, width, height)

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
        _writes.check_track_video(self._conn, self.root, video_id, camera_id)
        feature = gmetric.as_feature_matrix(track_feature, dim, f"track {track_id}: track_feature")[0]
        encoded = _writes.encode_crops(crops, track_id, dim)
        first, last = _writes.frame_span(encoded, track_id, first_frame, last_frame)
        times = [c.entry.timestamp_s for c in encoded]

        excluded = _writes.covisible_identities(self._conn, video_id, first, last)
        threshold = self._meta.match_threshold if match_threshold is None else float(match_threshold)
        decision: MatchDecision = self._bank.match(feature, threshold, excluded)
        new_sum, num_tracks = self._bank.updated_sum(decision.identity_id, feature)
        track_row = (int(video_id), int(camera_id), int(track_id), first, last, min(times), max(times))
        identity_id, entry_ids, written = self._write_track(
            track_row, feature, encoded, decision, new_sum, num_tracks
        )

        # The caches follow the database only once the transaction has committed.
        self._bank.set(identity_id, new_sum, num_tracks)
        self._index.add(entry_ids, np.stack([c.feature for c in encoded]), identity_id)
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
        encoded: list[_writes.EncodedCrop],
        decision: MatchDecision,
        new_sum: np.ndarray,
        num_tracks: int,
    ) -> tuple[int, list[int], list[Path]]:
        """The one transaction of ``add_track``; on any failure its crop files are removed again.

        ``track_row``: (video_id, camera_id, video_track_id, first_frame, last_frame, start_s, end_s).
        """
        written: list[Path] = []
        try:
            with self._transaction():
                identity_id, entry_ids = _writes.insert_track(
                    self._conn, track_row, feature, encoded, decision, new_sum, num_tracks,
                    write_crop=self._write_crop, written=written,
                )  # fmt: skip
                if self._durable:
                    _files.fsync_dir(self.root / CROPS_DIRNAME)
        except BaseException:
            _files.remove_files(written)
            raise
        return identity_id, entry_ids, written

    def _write_crop(
        self, jpeg: bytes, identity_id: int, camera_id: int, video_id: int, frame: int, k: int
    ) -> Path:
        """One crop file (see :func:`reid.gallery._files.write_crop`); a method so that a test can stop a
        writer between two crops of one transaction and kill it there."""
        crops_dir = self.root / CROPS_DIRNAME
        return _files.write_crop(
            crops_dir, jpeg, identity_id, camera_id, video_id, frame, k, durable=self._durable
        )

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
            entry_ids, distances = self._index.reranked(query, rerank_pool)
        else:
            entry_ids, distances = self._index.nearest(query, topk)
        best = _evidence.best_per_identity(entry_ids, distances, self._index.entry_identity, topk)
        return [
            IdentityHit(
                identity_id,
                distance,
                _evidence.nearest_evidence(
                    self._conn, self.root, self._meta, identity_id, query, evidence_per_identity
                ),
            )
            for identity_id, distance in best.items()
        ]

    # --------------------------------------------------------------------------------------------- closing
    def flush(self) -> None:
        """Save the faiss cache atomically (cheap to skip: a stale cache is caught up on the next open)."""
        self._require_writable()
        if not self._index.dirty:
            return
        self._index.save(self.root / INDEX_FILENAME)

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
