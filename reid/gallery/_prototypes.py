"""Loading the identities' prototypes (running sums of their tracks' features) from the database on open.

A prototype damaged on disk (non-finite, or longer than its tracks' unit features can sum to) would poison
every match, so it is rebuilt from the identity's stored track features; an identity with no intact track
feature is left out of matching. Both cases are logged by id. The store passes its connection, root and meta.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np

from reid.gallery import metric as gmetric
from reid.gallery._records import unblob
from reid.gallery.errors import GalleryCorruptError
from reid.gallery.matching import IdentityBank
from reid.gallery.schema import GalleryMeta

logger = logging.getLogger("reid.gallery.store")  # the store's logger, whose name users configure


def load_prototypes(bank: IdentityBank, conn: sqlite3.Connection, root: Path, meta: GalleryMeta) -> None:
    """Put every identity's prototype into ``bank``, repairing or leaving out damaged ones (see above)."""
    dim = meta.feature_dim
    rebuilt, quarantined = [], []
    for identity_id, feature_sum, num_tracks in conn.execute(
        "SELECT id, feature_sum, num_tracks FROM identities ORDER BY id"
    ).fetchall():
        vector = np.frombuffer(feature_sum, dtype=np.float64)
        if vector.size != dim:
            raise GalleryCorruptError(f"{root}: identity {identity_id} prototype has {vector.size} values")
        if not _plausible_sum(vector, num_tracks, meta.metric):
            vector, num_tracks = _prototype_from_tracks(conn, identity_id, meta)
            (quarantined if num_tracks == 0 else rebuilt).append(identity_id)
            if num_tracks == 0:
                continue
        bank.set(identity_id, vector, num_tracks)
    if rebuilt:
        logger.warning("%s: damaged prototype of identities %s rebuilt from their tracks", root, rebuilt)
    if quarantined:
        logger.warning(
            "%s: identities %s have no intact feature left and are excluded from matching", root, quarantined
        )


def _plausible_sum(vector: np.ndarray, num_tracks: int, metric: str) -> bool:
    if not np.isfinite(vector).all() or num_tracks < 1:
        return False
    # Cosine contributions are unit vectors, so their sum is at most num_tracks long.
    with np.errstate(over="ignore"):  # rotted bits can read as huge numbers: an infinite norm is refused
        norm = float(np.linalg.norm(vector))
    return metric != "cosine" or norm <= num_tracks * (1 + 1e-3)


def _prototype_from_tracks(
    conn: sqlite3.Connection, identity_id: int, meta: GalleryMeta
) -> tuple[np.ndarray, int]:
    """The running sum of an identity's intact stored track features, and their count."""
    total, count = np.zeros(meta.feature_dim, dtype=np.float64), 0
    for track_id, data in conn.execute(
        "SELECT id, feature FROM tracks WHERE identity_id = ? ORDER BY id", (identity_id,)
    ):
        feature = unblob(data, meta.feature_dim, f"track {track_id}")
        if np.isfinite(feature).all() and np.any(feature):
            total += gmetric.prepare(feature.reshape(1, -1), meta.metric)[0].astype(np.float64)
            count += 1
    return total, count
