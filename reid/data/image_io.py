"""Reading images from disk with errors that name the offending file.

OpenCV silently decodes a truncated JPEG into an image whose lower part is grey (it only prints a libjpeg
warning), which would poison training without anyone noticing. We therefore read the bytes ourselves, check
that a JPEG/PNG actually ends where its format says it ends, and only then decode with
``cv2.imdecode(..., IMREAD_COLOR)`` (the same decoder ``cv2.imread`` uses; decoding from bytes also handles
non-ASCII paths on Windows).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

_JPEG_START = b"\xff\xd8"
_JPEG_START_OF_SCAN = b"\xff\xda"
_JPEG_END = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END_CHUNK = b"IEND"


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded completely (truncated, not an image, empty...)."""

    def __init__(self, path: str | os.PathLike, reason: str = "the decoder returned no image") -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(
            f"Corrupt or unreadable image file '{self.path}': {reason}. "
            "Expected a complete JPEG, PNG or BMP image."
        )

    def __reduce__(self):
        # Keeps the exception picklable, so it survives the trip from a DataLoader worker process.
        return (type(self), (self.path, self.reason))


def _truncation_reason(data: bytes) -> str | None:
    """Why ``data`` looks cut short, or None. Only formats with a reliable end marker are checked."""
    if data.startswith(_JPEG_START):
        # 0xFFD9 cannot occur inside entropy-coded data (0xFF is byte-stuffed there), so an end-of-image
        # marker after the last start-of-scan proves the last scan is complete. Searching after the last
        # scan ignores an EXIF thumbnail's own end marker near the start of the file.
        last_scan = data.rfind(_JPEG_START_OF_SCAN)
        if last_scan == -1:
            return "JPEG file has no image data (no start-of-scan marker)"
        if data.find(_JPEG_END, last_scan) == -1:
            return "JPEG file is truncated (no end-of-image marker after the image data)"
    elif data.startswith(_PNG_SIGNATURE) and _PNG_END_CHUNK not in data[-32:]:
        return "PNG file is truncated (no IEND chunk at the end)"
    return None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Return the image at ``path`` as an H x W x 3 ``uint8`` array in RGB order.

    Raises FileNotFoundError if there is no file at ``path`` and :class:`CorruptImageError` if the file
    cannot be decoded completely. Grey-scale and 16-bit images are converted to 8-bit 3-channel RGB.
    """
    path_str = os.fspath(path)
    if not os.path.exists(path_str):
        raise FileNotFoundError(f"Image file not found: '{path_str}'")
    if not os.path.isfile(path_str):
        raise CorruptImageError(path_str, "the path is not a regular file")
    with open(path_str, "rb") as handle:
        data = handle.read()
    if not data:
        raise CorruptImageError(path_str, "the file is empty")
    reason = _truncation_reason(data)
    if reason is not None:
        raise CorruptImageError(path_str, reason)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CorruptImageError(path_str, "OpenCV could not decode it (not an image or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
