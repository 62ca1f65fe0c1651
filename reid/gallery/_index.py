"""The faiss cache of a gallery's entry vectors, keyed by entry id, and the entry -> identity map beside it.

Both are caches of the database: :class:`EntryIndex` loads the saved index file only when its ids are exactly
the database's entry ids up to its last one, adds the entries after that from the database, and answers the
nearest-entry searches (plain, or k-reciprocal re-ranked) that ``GalleryStore.search`` aggregates per
identity. The connection and gallery root are passed in by the store, which also decides when to save.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from reid.gallery import metric as gmetric
from reid.gallery._records import unblob
from reid.utils.io import atomic_open

logger = logging.getLogger("reid.gallery.store")  # the store's logger, whose name users configure

INDEX_FILENAME = "entries.faiss"
_REBUILD_CHUNK = 4096


class EntryIndex:
    """An exact faiss index of entry vectors (``index``), ``entry_identity`` and whether it needs saving."""

    def __init__(self, feature_dim: int, metric: str) -> None:
        self.feature_dim = feature_dim
        self.metric = metric
        self.index = gmetric.new_index(feature_dim, metric)
        self.entry_identity: dict[int, int] = {}
        self.dirty = False

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    # ------------------------------------------------------------------------------------------- loading
    def load_identities(self, conn: sqlite3.Connection) -> None:
        self.entry_identity = dict(
            conn.execute("SELECT e.id, t.identity_id FROM entries e JOIN tracks t ON e.track_id = t.id")
        )

    def load(self, conn: sqlite3.Connection, root: Path) -> None:
        """Trust the saved index only if its ids are exactly the DB's entry ids up to its last id."""
        db_ids = np.fromiter((i for (i,) in conn.execute("SELECT id FROM entries ORDER BY id")), np.int64)
        cached = self._read_file(root / INDEX_FILENAME)
        start_after = -1
        if cached is not None:
            cached_ids = np.sort(faiss.vector_to_array(cached.id_map).astype(np.int64))
            last = cached_ids[-1] if cached_ids.size else -1
            if np.array_equal(cached_ids, db_ids[db_ids <= last]):
                self.index, start_after = cached, int(last)
            else:
                logger.warning(
                    "%s: faiss index is stale (%d ids vs %d entries); rebuilding it from the database",
                    root,
                    cached_ids.size,
                    db_ids.size,
                )
        missing = int((db_ids > start_after).sum())
        if missing:
            self._add_from_db(conn, root, start_after, missing)
            self.dirty = True

    def _read_file(self, path: Path) -> faiss.IndexIDMap2 | None:
        if not path.is_file():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            logger.warning("%s: unreadable faiss index (%s); rebuilding it", path, exc)
            return None
        expected = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
        if (
            not isinstance(index, faiss.IndexIDMap2)
            or index.d != self.feature_dim
            or (index.metric_type != expected)
        ):
            logger.warning("%s: faiss index has the wrong type or dimension; rebuilding it", path)
            return None
        return index

    def _add_from_db(self, conn: sqlite3.Connection, root: Path, after_id: int, count: int) -> None:
        dim, metric = self.feature_dim, self.metric
        rows = conn.execute("SELECT id, feature FROM entries WHERE id > ? ORDER BY id", (after_id,))
        with tqdm(
            total=count, desc="indexing gallery entries", unit="entry", disable=count < _REBUILD_CHUNK
        ) as bar:
            while batch := rows.fetchmany(_REBUILD_CHUNK):
                ids = np.array([row[0] for row in batch], dtype=np.int64)
                feats = np.stack([unblob(row[1], dim, f"entry {row[0]}") for row in batch])
                intact = np.isfinite(feats).all(axis=1)
                if not intact.all():
                    logger.warning(
                        "%s: entries %s have damaged features and are left out of search",
                        root,
                        ids[~intact].tolist(),
                    )
                self.index.add_with_ids(gmetric.prepare(feats[intact], metric), ids[intact])
                bar.update(len(batch))

    # ------------------------------------------------------------------------------------ adding, saving
    def add(self, entry_ids: Sequence[int], feats: np.ndarray, identity_id: int) -> None:
        """The entries of a committed track (call only after its transaction succeeded)."""
        self.index.add_with_ids(gmetric.prepare(feats, self.metric), np.asarray(entry_ids, dtype=np.int64))
        self.entry_identity.update(dict.fromkeys(entry_ids, identity_id))
        self.dirty = True

    def save(self, path: Path) -> None:
        data = faiss.serialize_index(self.index)
        with atomic_open(path, "wb") as handle:
            handle.write(data.tobytes())
        self.dirty = False

    # ----------------------------------------------------------------------------------------- searching
    def nearest(self, query: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
        """Grow k until the sorted entries hold ``topk`` identities: their first entries are then exact."""
        total = self.ntotal
        k = min(total, max(64, 8 * topk))
        prepared = gmetric.prepare(query, self.metric)
        while True:
            scores, ids = gmetric.search_one(self.index, prepared, k)
            keep = ids >= 0
            ids, scores = ids[keep], scores[keep]
            if k >= total or len({self.entry_identity[int(i)] for i in ids}) >= topk:
                return ids, gmetric.scores_to_distances(scores, self.metric)
            k = min(total, 4 * k)

    def reranked(self, query: np.ndarray, pool: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            from reid.evaluation import re_ranking
        except ImportError as exc:
            raise RuntimeError(
                "rerank=True needs reid.evaluation.re_ranking, which is not available"
            ) from exc
        k = min(self.ntotal, pool)
        prepared = gmetric.prepare(query, self.metric)
        _, ids = gmetric.search_one(self.index, prepared, k)
        ids = ids[ids >= 0]
        gallery = np.stack([self.index.reconstruct(int(i)) for i in ids])
        distances = np.asarray(re_ranking(prepared, gallery), dtype=np.float32)[0]
        order = np.argsort(distances, kind="stable")
        return ids[order], distances[order]
