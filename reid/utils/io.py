"""Atomic writes: a crash mid-write must never leave a half-written checkpoint, report or gallery file.

Everything is written to a temporary file in the destination folder, flushed to disk, then moved into
place with ``os.replace`` (atomic on POSIX and Windows when source and target share a file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; it replaces ``path`` only if the block succeeds."""
    if "r" in mode or "a" in mode:
        raise ValueError(f"atomic_open only supports write modes, got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if encoding is None and "b" not in mode:
        encoding = "utf-8"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def remove_leftover_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of atomic writes into ``folder`` that a killed process left (``.NAME.*.tmp``,
    possibly as large as a checkpoint). Call it when starting to own the folder, before writing to it."""
    removed = []
    for tmp in sorted(Path(folder).glob(".*.tmp")):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    if removed:
        logger.warning("removed %d temporary file(s) of interrupted writes in %s: %s", len(removed), folder,
                       ", ".join(p.name for p in removed))
    return removed


def _read_umask() -> int:
    """The process umask, read once at import (reading it means setting it, which is not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (videos and models can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent, sort_keys=False)
        handle.write("\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file so an interrupted save keeps the previous checkpoint."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure atomically (format taken from the target's suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format=fmt, **savefig_kwargs)


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike, replaceable: frozenset[str]) -> Iterator[Path]:
    """Fill a fresh temporary sibling of folder ``path``, which replaces ``path`` whole if the block succeeds.

    A reader therefore sees the old folder or the new one, never a mix. An existing ``path`` may only hold
    files named in ``replaceable`` (what an earlier run of the same writer made): anything else is refused
    with ValueError, so that pointing a report at, say, a training run cannot delete its checkpoints.
    Staging folders left by a killed run are removed first.
    """
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"'{target}' exists and is not a folder")
        foreign = sorted(p.name for p in target.iterdir() if p.name not in replaceable)
        if foreign:
            raise ValueError(
                f"'{target}' holds files this tool did not write ({', '.join(foreign[:5])}); "
                "choose an empty or new folder"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_UMASK)
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
