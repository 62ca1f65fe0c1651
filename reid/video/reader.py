"""Video sources through OpenCV: a file, a camera index ("0") or a stream URL (rtsp://, http://, ...).

Frames are decoded on a background thread into a small queue, so decoding overlaps detection on a multi-core
machine, and so a stream that stalls is noticed: if no frame arrives within ``read_timeout_s`` the reader
raises :class:`VideoStallError` instead of blocking forever. Frames keep the size of the first one (a source
that changes resolution mid-stream is resized back, with a warning) and are always 3-channel BGR uint8.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
MIN_FRAME_SIDE = 16


def frames_in(seconds: float, fps: float) -> int:
    """Whole frames in ``seconds`` of video at ``fps`` (at least 1): how settings given in seconds, so that
    they mean the same at any frame rate, become frame counts."""
    return max(1, round(seconds * fps))


class VideoSourceError(ValueError):
    """The source cannot be opened or decoded, or it holds no usable frame."""


class VideoStallError(VideoSourceError):
    """A live source delivered no frame for longer than the read timeout."""


@dataclass(frozen=True)
class VideoInfo:
    """``num_frames`` is None for live sources (cameras, streams) whose length is unknown."""

    source: str
    is_file: bool
    fps: float
    width: int
    height: int
    num_frames: int | None


def parse_source(spec: str | int) -> str | int:
    """A camera index for digit strings, the URL for ``scheme://...``, else a file path that must exist."""
    if isinstance(spec, int):
        return spec
    text = str(spec).strip()
    if text.isdigit():
        return int(text)
    if "://" in text:
        return text
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {path}")
    if not path.is_file():
        raise VideoSourceError(f"video source {path} is not a file")
    return str(path)


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


class VideoReader:
    """Iterate ``(frame_index, frame)``; use as a context manager (or call :meth:`close`).

    ``start_frame`` skips that many frames first (decoded and dropped, which is exact where seeking in a
    compressed file is not); indices stay those of the source, so results of two parts of one video line
    up with one ground truth. ``max_frames`` counts the frames read after the start.
    """

    def __init__(self, spec: str | int, *, read_timeout_s: float = 10.0, max_frames: int | None = None,
                 start_frame: int = 0, queue_size: int = 8) -> None:
        source = parse_source(spec)
        self._name = str(source)
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            self._capture.release()
            what = "camera" if isinstance(source, int) else "stream" if "://" in self._name else "video file"
            raise VideoSourceError(f"OpenCV cannot open {what} {self._name} (not a video, or unknown codec)")
        self.read_timeout_s = float(read_timeout_s)
        self.max_frames = max_frames
        self.start_frame = int(start_frame)
        if self.start_frame < 0:
            self._capture.release()
            raise ValueError(f"start_frame must be >= 0, got {start_frame}")
        for skipped in range(self.start_frame):
            if not self._capture.grab():
                self._capture.release()
                raise VideoSourceError(f"{self._name} ends after {skipped} frames; cannot start at frame "
                                       f"{self.start_frame}")
        ok, first = self._capture.read()
        if not ok or first is None:
            self._capture.release()
            raise VideoSourceError(f"{self._name} has no decodable frame (empty or corrupt video)")
        first = _as_bgr(first)
        height, width = first.shape[:2]
        if min(height, width) < MIN_FRAME_SIDE:
            self._capture.release()
            raise VideoSourceError(f"{self._name}: frames of {width}x{height} px are too small for detection")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not np.isfinite(fps) or fps <= 0 or fps > 1000:
            logger.warning("%s: no usable frame rate (%s); assuming %.0f", self._name, fps, DEFAULT_FPS)
            fps = DEFAULT_FPS
        is_file = isinstance(source, str) and "://" not in source
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if is_file else 0
        self.info = VideoInfo(self._name, is_file, fps, width, height, count if count > 0 else None)
        self._first = first
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _decode(self) -> None:
        """Background loop: push frames, then a final ``None`` (end) or the exception that stopped it."""
        try:
            self._put(self._first)
            read = 1
            while not self._stop.is_set() and (self.max_frames is None or read < self.max_frames):
                ok, frame = self._capture.read()
                if not ok or frame is None:
                    break
                self._put(_as_bgr(frame))
                read += 1
            self._put(None)
        except Exception as exc:  # handed to the consumer, which re-raises it
            self._put(exc)
        finally:
            if self._stop.is_set():  # close() gave up waiting for a stalled read: release here, after it
                self._capture.release()

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self._thread is not None:
            raise RuntimeError(f"{self._name}: a VideoReader can be iterated only once")
        if self.max_frames is not None and self.max_frames <= 0:
            return
        self._thread = threading.Thread(target=self._decode, name="video-decode", daemon=True)
        self._thread.start()
        size = (self.info.width, self.info.height)
        warned = False
        index = self.start_frame
        while True:
            try:
                item = self._queue.get(timeout=self.read_timeout_s)
            except queue.Empty:
                raise VideoStallError(
                    f"{self._name}: no frame for {self.read_timeout_s:.1f} s after frame {index} (stalled)"
                ) from None
            if item is None:
                return
            if isinstance(item, Exception):
                raise VideoSourceError(f"{self._name}: decoding failed after frame {index}: {item}") from item
            frame: np.ndarray = item
            if (frame.shape[1], frame.shape[0]) != size:
                if not warned:
                    logger.warning("%s: frame %d is %dx%d, not %dx%d; resizing", self._name, index,
                                   frame.shape[1], frame.shape[0], *size)
                    warned = True
                frame = cv2.resize(frame, size)
            yield index, frame
            index += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():
                return  # still inside a stalled read(); releasing under it is unsafe, _decode releases
        self._capture.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
