"""Pictures of a run: frames annotated with track and identity labels, and a contact sheet of identities.

Colours are derived from the identity (or track) id, so one person keeps one colour across the video.
The annotated video goes to a temporary file next to its target and is renamed into place once complete,
so an interrupted run never leaves a truncated video under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from reid.utils.io import atomic_open

logger = logging.getLogger(__name__)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def colour_for(key: int) -> tuple[int, int, int]:
    """A stable, saturated BGR colour for an id (golden-ratio hue steps keep neighbours distinct)."""
    hue = int((key * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 220, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_labelled_boxes(frame: np.ndarray, boxes: Iterable[tuple[np.ndarray, str, int]]) -> np.ndarray:
    """Draw ``(box_xywh, label, colour_key)`` on a copy of ``frame``."""
    canvas = frame.copy()
    for box, label, key in boxes:
        x, y, w, h = (int(round(v)) for v in box)
        colour = colour_for(key)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, 2)
        (tw, th), _ = cv2.getTextSize(label, _FONT, 0.45, 1)
        top = max(y - th - 4, 0)
        cv2.rectangle(canvas, (x, top), (x + tw + 4, top + th + 4), colour, -1)
        cv2.putText(canvas, label, (x + 2, top + th + 1), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


class AtomicVideoWriter:
    """``cv2.VideoWriter`` into a temporary file, renamed to ``path`` by :meth:`commit`.

    The codec follows the suffix: ``.mp4`` -> mp4v, ``.avi`` -> MJPG; if OpenCV cannot open the mp4 writer
    (a build without the codec), it falls back to MJPG in ``.avi`` and :attr:`path` says so.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        attempts = [(target, "mp4v")] if target.suffix.lower() == ".mp4" else []
        attempts.append((target.with_suffix(".avi"), "MJPG"))
        for candidate, codec in attempts:
            tmp = candidate.with_name(f".{candidate.stem}.tmp{candidate.suffix}")
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), float(fps), size)
            if writer.isOpened():
                self.path, self._tmp, self._writer = candidate, tmp, writer
                return
            writer.release()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise RuntimeError(f"OpenCV cannot write video to {target} (no mp4v or MJPG encoder)")

    def write(self, frame: np.ndarray) -> None:
        self._writer.write(frame)

    def commit(self) -> Path:
        self._writer.release()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._writer.release()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


def contact_sheet(rows: Sequence[tuple[str, Sequence[np.ndarray]]], *, cell: tuple[int, int] = (128, 64),
                  label_width: int = 150, max_crops: int = 8) -> np.ndarray:
    """One row per ``(label, crops)``: the label, then up to ``max_crops`` BGR crops resized to ``cell``."""
    cell_h, cell_w = cell
    width = label_width + max_crops * (cell_w + 4) + 4
    sheet = np.full((max(len(rows), 1) * (cell_h + 6) + 6, width, 3), 255, dtype=np.uint8)
    if not rows:
        cv2.putText(sheet, "no gallery identity in this run", (8, cell_h // 2), _FONT, 0.6, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for r, (label, crops) in enumerate(rows):
        top = 6 + r * (cell_h + 6)
        for i, line in enumerate(label.split("\n")):
            cv2.putText(sheet, line, (6, top + 20 + 20 * i), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for c, crop in enumerate(crops[:max_crops]):
            left = label_width + c * (cell_w + 4)
            sheet[top : top + cell_h, left : left + cell_w] = cv2.resize(crop, (cell_w, cell_h))
    return sheet


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path} as PNG")
    with atomic_open(path, "wb") as handle:
        handle.write(encoded.tobytes())


def identity_rows(crops_by_identity: Mapping[int, Sequence[str]],
                  tracks_by_identity: Mapping[int, Sequence[int]],
                  new_identities: set[int]) -> list[tuple[str, list[np.ndarray]]]:
    """Contact-sheet rows from the crop files the gallery wrote, one per identity, sorted by id."""
    rows = []
    for identity in sorted(crops_by_identity):
        images = [img for img in (cv2.imread(p) for p in crops_by_identity[identity]) if img is not None]
        tracks = ",".join(str(t) for t in tracks_by_identity.get(identity, []))
        status = "new" if identity in new_identities else "matched"
        rows.append((f"ID {identity} ({status})\ntracks {tracks}", images))
    return rows
