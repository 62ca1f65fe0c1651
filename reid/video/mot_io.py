"""MOTChallenge text files: detections (``det.txt``), ground truth and tracker results.

One row per box: ``frame,id,x,y,w,h,score[,...]`` with 1-based frames and top-left ``x, y`` in pixels. This
format is what every MOT scoring tool reads, so the demo's ``tracks.txt``/``identities.txt`` use it too.
Internally frames are 0-based video frame indices (MOT frame ``f`` is video frame ``f - 1``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reid.utils.io import atomic_open

MotRow = tuple[int, int, float, float, float, float, float]
"""``(frame_index, id, x, y, w, h, score)`` with a 0-based frame index."""


class MotFormatError(ValueError):
    """A malformed row in a MOTChallenge file; the message names the file and the 1-based line."""


@dataclass(frozen=True)
class MotTable:
    """Boxes of a MOT file as parallel arrays; ``frames`` are 0-based video frame indices."""

    frames: np.ndarray  # (N,) int64
    ids: np.ndarray  # (N,) int64 (-1 for detections)
    boxes: np.ndarray  # (N, 4) float64 x, y, w, h
    scores: np.ndarray  # (N,) float64 (the 7th column: detector score or gt "consider" flag)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def select(self, mask: np.ndarray) -> MotTable:
        return MotTable(self.frames[mask], self.ids[mask], self.boxes[mask], self.scores[mask])

    def by_frame(self) -> dict[int, np.ndarray]:
        """Row indices of each frame that has boxes."""
        if len(self) == 0:
            return {}
        order = np.argsort(self.frames, kind="stable")
        frames = self.frames[order]
        starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
        ends = np.r_[starts[1:], len(frames)]
        return {int(frames[s]): order[s:e] for s, e in zip(starts, ends, strict=True)}


def _parse_row(text: str, where: str) -> MotRow:
    fields = [f.strip() for f in text.split(",")]
    if len(fields) < 6:
        raise MotFormatError(
            f"{where}: expected at least 6 comma-separated values (frame,id,x,y,w,h), got {text!r}"
        )
    try:
        values = [float(f) for f in fields[:7]]
    except ValueError:
        raise MotFormatError(f"{where}: non-numeric value in {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise MotFormatError(f"{where}: non-finite value in {text!r}")
    frame, track_id, x, y, w, h = values[:6]
    score = values[6] if len(values) > 6 else 1.0
    if frame != int(frame) or frame < 1:
        raise MotFormatError(
            f"{where}: frame must be an integer >= 1 (MOT frames are 1-based), got {fields[0]!r}"
        )
    if track_id != int(track_id):
        raise MotFormatError(f"{where}: id must be an integer, got {fields[1]!r}")
    if w <= 0 or h <= 0:
        raise MotFormatError(f"{where}: box width and height must be positive, got w={w}, h={h}")
    return int(frame) - 1, int(track_id), x, y, w, h, score


def read_mot_file(path: str | os.PathLike) -> MotTable:
    """Parse a MOTChallenge file; blank lines and ``#`` comments are skipped, anything else must be a row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MOT file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            rows.append(_parse_row(text, f"{path}:{line_no}"))
    if not rows:
        return MotTable(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
    array = np.asarray(rows, dtype=np.float64)
    return MotTable(array[:, 0].astype(np.int64), array[:, 1].astype(np.int64), array[:, 2:6], array[:, 6])


def format_mot_rows(rows: Iterable[MotRow]) -> str:
    """Rows of ``(frame_index, id, x, y, w, h, score)`` (0-based frames) as MOT result text, sorted."""
    lines = [
        f"{frame + 1},{track_id},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{score:.4f},-1,-1,-1\n"
        for frame, track_id, x, y, w, h, score in sorted(rows, key=lambda r: (r[0], r[1]))
    ]
    return "".join(lines)


def write_mot_results(path: str | os.PathLike, rows: Iterable[MotRow]) -> None:
    """Write tracker results atomically (a crash never leaves a truncated results file)."""
    with atomic_open(path, "w") as handle:
        handle.write(format_mot_rows(rows))
