"""Turning nearest entries into search results: one best distance per identity, and each hit's evidence (its
stored entries nearest to the query, as plain dicts naming video, camera, frame, box and crop file). Functions
take the store's connection, root and meta explicitly.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from reid.gallery import metric as gmetric
from reid.gallery._files import crop_path
from reid.gallery._records import unblob
from reid.gallery.schema import GalleryMeta

_SQL_EVIDENCE = (
    "SELECT e.id, e.frame_index, e.timestamp_s, e.box_x, e.box_y, e.box_w, e.box_h, e.crop_path, e.feature,"
    " t.camera_id, t.video_track_id, v.source, e.quality FROM entries e JOIN tracks t ON e.track_id = t.id"
    " JOIN videos v ON t.video_id = v.id WHERE t.identity_id = ? ORDER BY e.id"
)


def best_per_identity(
    entry_ids: np.ndarray, distances: np.ndarray, entry_identity: dict[int, int], topk: int
) -> dict[int, float]:
    """The first ``topk`` identities among entries sorted nearest first, each with its nearest distance."""
    best: dict[int, float] = {}
    for entry_id, distance in zip(entry_ids, distances, strict=True):
        identity_id = entry_identity[int(entry_id)]
        if identity_id not in best:
            best[identity_id] = float(distance)
            if len(best) == topk:
                break
    return best


def nearest_evidence(
    conn: sqlite3.Connection, root: Path, meta: GalleryMeta, identity_id: int, query: np.ndarray, limit: int
) -> list[dict]:
    """An identity's ``limit`` entries nearest to ``query``; entries with damaged features are left out."""
    rows = conn.execute(_SQL_EVIDENCE, (identity_id,)).fetchall()
    feats = np.stack([unblob(r[8], meta.feature_dim, f"entry {r[0]}") for r in rows])
    intact = np.isfinite(feats).all(axis=1)
    rows, feats = [r for r, ok in zip(rows, intact, strict=True) if ok], feats[intact]
    if not rows:
        return []
    distances = gmetric.pairwise_distances(query, feats, meta.metric)[0]
    order = np.argsort(distances, kind="stable")[:limit]
    return [{**_evidence_item(root, rows[i]), "distance": float(distances[i])} for i in order]


def _evidence_item(root: Path, row: tuple) -> dict:
    return {
        "video": row[11],
        "camera_id": row[9],
        "track_id": row[10],
        "frame_index": row[1],
        "timestamp_s": row[2],
        "box_xywh": tuple(row[3:7]),
        "crop_path": str(crop_path(root, row[0], row[7])),
        "quality": row[12],
    }
