"""SQLite layout of a gallery, its version and its metadata.

The database is the single source of truth: the faiss index and the prototypes held in memory are caches
rebuilt from it. The layout is versioned so an older package refuses a gallery it would misread.

Journal: WAL with ``synchronous=NORMAL``. In WAL mode a committed transaction survives a killed process
(the WAL file is on disk before COMMIT returns); NORMAL only skips the fsync at each commit, so a power cut
may lose the last few commits but never corrupts the database. A lost commit only leaves crop files without
a row, which :class:`~reid.gallery.store.GalleryStore` deletes on open, so the gallery stays consistent
either way, and FULL would cost an fsync per track for no consistency gain.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from reid.gallery.errors import GalleryCorruptError, GallerySchemaError

SCHEMA_VERSION = 1
DB_FILENAME = "gallery.sqlite"

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cameras (
    id         INTEGER PRIMARY KEY,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS videos (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT NOT NULL,
    camera_id     INTEGER NOT NULL REFERENCES cameras(id),
    fps           REAL NOT NULL,
    num_frames    INTEGER,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    feature_sum   BLOB NOT NULL,
    num_tracks    INTEGER NOT NULL,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tracks (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    video_id       INTEGER NOT NULL REFERENCES videos(id),
    camera_id      INTEGER NOT NULL REFERENCES cameras(id),
    video_track_id INTEGER NOT NULL,
    identity_id    INTEGER NOT NULL REFERENCES identities(id),
    first_frame    INTEGER NOT NULL,
    last_frame     INTEGER NOT NULL,
    start_s        REAL NOT NULL,
    end_s          REAL NOT NULL,
    match_distance REAL,
    feature        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS tracks_by_video ON tracks(video_id, first_frame, last_frame);
CREATE INDEX IF NOT EXISTS tracks_by_identity ON tracks(identity_id);
CREATE TABLE IF NOT EXISTS entries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    track_id    INTEGER NOT NULL REFERENCES tracks(id),
    frame_index INTEGER NOT NULL,
    timestamp_s REAL NOT NULL,
    box_x       REAL NOT NULL,
    box_y       REAL NOT NULL,
    box_w       REAL NOT NULL,
    box_h       REAL NOT NULL,
    det_score   REAL NOT NULL,
    quality     REAL NOT NULL,
    crop_path   TEXT NOT NULL UNIQUE,
    feature     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_track ON entries(track_id);
"""


@dataclass(frozen=True)
class GalleryMeta:
    """What a gallery was built with; a store refuses features from any other embedding."""

    schema_version: int
    model_name: str
    feature_dim: int
    metric: str
    created_at: float
    match_threshold: float


def connect(db_path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Open the database in autocommit mode (transactions are explicit) with WAL and foreign keys on."""
    try:
        if read_only:
            conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        else:
            conn = sqlite3.connect(db_path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        status = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise GalleryCorruptError(f"{db_path} is not a readable gallery database: {exc}") from exc
    if status != "ok":
        conn.close()
        raise GalleryCorruptError(f"{db_path} failed SQLite's integrity check: {status}")
    return conn


def create_schema(
    conn: sqlite3.Connection, *, model_name: str, feature_dim: int, metric: str, match_threshold: float
) -> None:
    """Create the tables and write the metadata of a new gallery in one transaction."""
    values = {
        "schema_version": str(SCHEMA_VERSION),
        "model_name": model_name,
        "feature_dim": str(feature_dim),
        "metric": metric,
        "created_at": repr(time.time()),
        "match_threshold": repr(float(match_threshold)),
    }
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", values.items())
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def read_meta(conn: sqlite3.Connection, db_path: Path) -> GalleryMeta:
    """Read and validate the metadata; a newer schema or missing keys give a clear error naming the file."""
    try:
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise GalleryCorruptError(f"{db_path} has no gallery metadata table ({exc})") from exc
    required = ("schema_version", "model_name", "feature_dim", "metric", "created_at", "match_threshold")
    missing = [key for key in required if key not in rows]
    if missing:
        raise GalleryCorruptError(f"{db_path}: metadata lacks {', '.join(missing)}")
    version = int(rows["schema_version"])
    if version > SCHEMA_VERSION:
        raise GallerySchemaError(
            f"{db_path} was written with gallery schema version {version}, but this package reads "
            f"versions up to {SCHEMA_VERSION}; upgrade the reid package to open it"
        )
    return GalleryMeta(
        schema_version=version,
        model_name=rows["model_name"],
        feature_dim=int(rows["feature_dim"]),
        metric=rows["metric"],
        created_at=float(rows["created_at"]),
        match_threshold=float(rows["match_threshold"]),
    )


def write_match_threshold(conn: sqlite3.Connection, threshold: float) -> None:
    conn.execute("UPDATE meta SET value = ? WHERE key = 'match_threshold'", (repr(float(threshold)),))
