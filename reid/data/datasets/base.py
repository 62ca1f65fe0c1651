"""The in-memory form of a re-ID dataset and the checks every dataset reader shares.

A dataset is three lists of :class:`ImageRecord`: ``train`` (identities relabelled 0..C-1 so they can index a
classifier), ``query`` and ``gallery`` (original identity numbers, so queries match gallery images of the same
person). Camera ids are 0-based everywhere; evaluation uses them to ignore same-camera matches.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: File suffixes read as images when a reader lists a folder (compared case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DatasetLayoutError(ValueError):
    """A dataset folder, list file or file name does not follow the layout its reader expects."""


@dataclass(frozen=True)
class ImageRecord:
    """One image: where it is, who it shows (``pid``) and which camera took it (``camid``, 0-based)."""

    path: str
    pid: int
    camid: int


@dataclass
class ReIDDataset:
    """Train/query/gallery splits of one dataset; train pids are 0..num_train_pids-1."""

    name: str
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]

    def __post_init__(self) -> None:
        train_pids = sorted({record.pid for record in self.train})
        if train_pids != list(range(len(train_pids))):
            raise ValueError(
                f"Dataset '{self.name}': train pids must be relabelled to 0..C-1, got {train_pids[:10]}..."
            )

    @property
    def num_train_pids(self) -> int:
        return len({record.pid for record in self.train})

    def summary(self) -> str:
        """A plain-text table: split | ids | images | cameras."""
        rows = [("split", "ids", "images", "cameras")]
        for split_name, records in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            rows.append(
                (
                    split_name,
                    str(len({r.pid for r in records})),
                    str(len(records)),
                    str(len({r.camid for r in records})),
                )
            )
        widths = [max(len(row[col]) for row in rows) for col in range(4)]

        def format_row(row: Sequence[str]) -> str:
            cells = [row[0].ljust(widths[0])] + [
                cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
            ]
            return "  " + " | ".join(cells)

        separator = "  " + "-+-".join("-" * width for width in widths)
        lines = [f"Dataset '{self.name}'", format_row(rows[0]), separator]
        lines += [format_row(row) for row in rows[1:]]
        return "\n".join(lines)


def relabel_train(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Map train pids to 0..C-1 in order of the original pid, keeping everything else."""
    records = list(records)
    new_label = {pid: index for index, pid in enumerate(sorted({r.pid for r in records}))}
    return [ImageRecord(r.path, new_label[r.pid], r.camid) for r in records]


def describe_folder(folder: Path, limit: int = 8) -> str:
    """A short listing of what is in ``folder``, for error messages about unexpected layouts."""
    if not folder.is_dir():
        return "(not a folder)"
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir())
    if not entries:
        return "(empty folder)"
    shown = ", ".join(entries[:limit])
    return shown + (f", ... ({len(entries)} entries)" if len(entries) > limit else "")


def require_existing_root(root: str | os.PathLike) -> Path:
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise FileNotFoundError(f"Dataset root '{root_path}' does not exist")
    return root_path


def find_dataset_folder(root: Path, required: Sequence[str], candidates: Sequence[str], dataset: str) -> Path:
    """Return ``root`` or the first ``root/<candidate>`` that contains every entry in ``required``.

    Users point the config either at the dataset folder itself or at the folder the archive was extracted
    into, so both are accepted; anything else is an error that says what was expected and what is there.
    """
    for folder in [root, *(root / name for name in candidates)]:
        if all((folder / entry).exists() for entry in required):
            return folder
    alternatives = " or ".join(f"'{root / name}'" for name in candidates)
    raise DatasetLayoutError(
        f"{dataset}: expected {', '.join(required)} in '{root}'"
        + (f" (or in {alternatives})" if candidates else "")
        + f"; found: {describe_folder(root)}"
    )


def is_image_file(path: Path) -> bool:
    """An image by its suffix; hidden files (e.g. macOS ``._name.jpg`` metadata) are not images."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted); other files such as Thumbs.db are ignored."""
    if not folder.is_dir():
        raise DatasetLayoutError(
            f"Expected a folder of images at '{folder}', found {describe_folder(folder)}"
        )
    return sorted(p for p in folder.iterdir() if is_image_file(p))


# How to skip badly named files, from a config or the command line (data.strict) and from Python.
SKIP_BAD_NAMES_HINT = "set data.strict=false, or strict=False in Python, to skip such files"


class NameParser:
    """Reads (pid, camera number) out of file names with a regex; counts or rejects names that do not match.

    ``strict=True`` stops at the first bad name (the usual sign of pointing at the wrong folder);
    ``strict=False`` skips such files and logs how many were skipped.
    """

    def __init__(self, pattern: str, description: str, num_cameras: int, strict: bool = True) -> None:
        self.regex = re.compile(pattern)
        self.description = description
        self.num_cameras = num_cameras
        self.strict = strict
        self.skipped: list[str] = []

    def parse(self, path: Path) -> tuple[int, int] | None:
        """Return (pid, 0-based camid), or None for a skipped file when not strict."""
        match = self.regex.fullmatch(path.name)
        problem = None
        if match is None:
            problem = f"does not follow the naming convention {self.description}"
        else:
            pid, camera = int(match.group("pid")), int(match.group("camera"))
            if not 1 <= camera <= self.num_cameras:
                problem = f"has camera {camera}, expected 1..{self.num_cameras}"
        if problem is None:
            return pid, camera - 1
        if self.strict:
            raise DatasetLayoutError(f"File '{path}' {problem} ({SKIP_BAD_NAMES_HINT})")
        self.skipped.append(str(path))
        return None

    def log_skipped(self, dataset: str) -> None:
        if self.skipped:
            logger.warning(
                "%s: skipped %d files with unexpected names, e.g. %s",
                dataset,
                len(self.skipped),
                self.skipped[0],
            )
