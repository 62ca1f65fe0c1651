"""The gallery folder apart from its database and faiss file: the checks made before opening it, the writer's
lock file, and the crop images (their names, atomic writes, paths read back from the database, and the
removal of crops an interrupted write left without a row). Functions take the gallery root explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from reid.gallery.errors import GalleryCorruptError, GalleryLockedError
from reid.gallery.schema import DB_FILENAME
from reid.utils.io import atomic_open

logger = logging.getLogger("reid.gallery.store")  # the store's logger, whose name users configure

CROPS_DIRNAME = "crops"
LOCK_FILENAME = "gallery.lock"


def check_folder(root: Path, db_path: Path, *, create: bool, read_only: bool) -> None:
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


def acquire_lock(path: Path) -> IO:
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


def fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable before the commit that refers to them (no-op where unsupported)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_crop(
    crops_dir: Path,
    jpeg: bytes,
    identity_id: int,
    camera_id: int,
    video_id: int,
    frame: int,
    k: int,
    *,
    durable: bool,
) -> Path:
    """Write atomically under a Market-1501 style name; never overwrite a crop another entry owns."""
    while True:
        path = crops_dir / f"{identity_id:04d}_c{camera_id}s{video_id}_{frame:06d}_{k:02d}.jpg"
        if not path.exists():
            break
        k += 1
    if durable:
        with atomic_open(path, "wb") as handle:
            handle.write(jpeg)
    else:  # same rename-into-place, without waiting for the disk
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(jpeg)
        os.replace(tmp, path)
    return path


def remove_files(paths: Iterable[Path]) -> None:
    """Best effort: the crops of a rolled-back write; any left behind are removed on the next open."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def crop_path(root: Path, entry_id: int, stored: str) -> Path:
    """The crop file of an entry, refused when the stored path leads out of the crops folder."""
    crops = (root / CROPS_DIRNAME).resolve()
    path = root / stored
    if not path.resolve().is_relative_to(crops):
        raise GalleryCorruptError(
            f"{root}: entry {entry_id} has crop_path {stored!r}, which leads outside {crops}"
        )
    return path


def remove_orphan_crops(conn: sqlite3.Connection, root: Path) -> None:
    """Delete crop files no entry refers to (left by a killed writer); log entries whose crop is missing."""
    crops_dir = root / CROPS_DIRNAME
    crops_dir.mkdir(exist_ok=True)
    referenced = {Path(p).name for (p,) in conn.execute("SELECT crop_path FROM entries")}
    removed = 0
    for path in crops_dir.iterdir():
        if path.is_file() and path.name not in referenced:
            path.unlink()
            removed += 1
    if removed:
        logger.warning("%s: removed %d crop file(s) left by an interrupted write", root, removed)
    missing = len(referenced) - sum((crops_dir / name).is_file() for name in referenced)
    if missing:
        logger.warning("%s: %d entries refer to crop files that no longer exist", root, missing)
