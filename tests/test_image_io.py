import pickle

import cv2
import numpy as np
import pytest

from reid.data.image_io import CorruptImageError, read_image


def _gradient_image(height: int = 48, width: int = 32) -> np.ndarray:
    """An RGB image whose three channels differ, so a BGR/RGB mix-up cannot go unnoticed."""
    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return np.stack(
        [
            np.broadcast_to(rows, (height, width)),
            np.broadcast_to(cols, (height, width)),
            np.full((height, width), 200, np.uint8),
        ],
        axis=-1,
    )


def _write(path, rgb, ext):
    ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.mark.parametrize("ext", [".png", ".bmp"])
def test_lossless_image_round_trips_in_rgb_order(tmp_path, ext):
    image = _gradient_image()
    loaded = read_image(_write(tmp_path / f"a{ext}", image, ext))
    assert loaded.dtype == np.uint8 and loaded.shape == image.shape
    np.testing.assert_array_equal(loaded, image)


def test_jpeg_is_read_as_rgb(tmp_path):
    image = _gradient_image()
    loaded = read_image(_write(tmp_path / "a.jpg", image, ".jpg"))
    # JPEG is lossy but the blue channel (constant 200) must stay the last channel.
    assert abs(float(loaded[..., 2].mean()) - 200) < 3
    assert np.abs(loaded.astype(int) - image.astype(int)).mean() < 4


def test_grey_image_becomes_three_channels(tmp_path):
    grey = np.arange(24 * 16, dtype=np.uint8).reshape(24, 16)
    path = tmp_path / "grey.png"
    cv2.imwrite(str(path), grey)
    loaded = read_image(path)
    assert loaded.shape == (24, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], grey)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(missing)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_image_is_reported_not_silently_padded(tmp_path, ext):
    data = _write(tmp_path / f"full{ext}", _gradient_image(96, 64), ext).read_bytes()
    truncated = tmp_path / f"truncated{ext}"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CorruptImageError, match="truncated") as info:
        read_image(truncated)
    assert str(truncated) in str(info.value)
    assert info.value.path == str(truncated)


def test_text_file_is_a_corrupt_image(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    with pytest.raises(CorruptImageError, match="notes.jpg"):
        read_image(text)


def test_empty_file_and_directory_are_corrupt(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match="empty"):
        read_image(empty)
    with pytest.raises(CorruptImageError, match="not a regular file"):
        read_image(tmp_path)


def test_corrupt_image_error_is_a_value_error_that_survives_pickling():
    error = CorruptImageError("/data/x.jpg", "JPEG file is truncated")
    assert isinstance(error, ValueError)
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is CorruptImageError
    assert restored.path == "/data/x.jpg" and str(restored) == str(error)


def test_jpeg_with_trailing_bytes_after_end_marker_still_reads(tmp_path):
    # Some cameras append data after the end-of-image marker; that is not truncation.
    data = _write(tmp_path / "a.jpg", _gradient_image(), ".jpg").read_bytes()
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data + b"\x00" * 64)
    assert read_image(padded).shape == (48, 32, 3)
