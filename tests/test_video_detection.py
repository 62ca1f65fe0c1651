"""Detectors: OpenCV HOG availability and output, YOLO post-processing on synthetic tensors, det.txt input."""

from pathlib import Path

import numpy as np
import pytest

from reid.video.detection import (
    DetectorUnavailableError,
    HogPersonDetector,
    Letterbox,
    PrecomputedDetector,
    TorchvisionDetector,
    build_detector,
    decode_yolo_output,
    hog_available,
    letterbox,
)
from reid.video.mot_io import MotFormatError
from reid.video.reader import VideoReader

CLIP = Path(__file__).resolve().parents[1] / "assets" / "vtest_clip.avi"


def test_hog_people_detector_exists_in_this_opencv():
    # OpenCV 5 main wheels dropped HOGDescriptor; the project pins opencv<5 (or the contrib build).
    assert hog_available()


def test_hog_finds_people_in_the_shipped_clip_and_nothing_in_a_blank_frame():
    detector = HogPersonDetector()
    with VideoReader(CLIP, max_frames=1) as reader:
        ((_, frame),) = list(reader)
    found = detector(frame, 0)
    assert len(found) >= 2
    h, w = frame.shape[:2]
    assert (found.boxes[:, 0] >= 0).all() and (found.boxes[:, 0] + found.boxes[:, 2] <= w + 1e-6).all()
    assert (found.boxes[:, 1] + found.boxes[:, 3] <= h + 1e-6).all()
    assert ((found.scores >= 0.5) & (found.scores <= 1)).all()
    # The fitted box is a person: taller than wide (the HOG window itself is 1:2, people ~1:2.5-3).
    assert (found.boxes[:, 3] > 2 * found.boxes[:, 2]).all()
    assert len(detector(np.full_like(frame, 127), 1)) == 0


def test_letterbox_geometry():
    frame = np.zeros((100, 200, 3), np.uint8)
    image, meta = letterbox(frame, 64)
    assert image.shape == (64, 64, 3)
    assert meta == Letterbox(0.32, 0.0, 16.0)
    assert (image[:16] == 114).all() and (image[16:48] == 0).all()


def _yolo_rows(meta, boxes_xywh, class_scores, objectness=None):
    """Network-space rows (cx, cy, w, h, [obj], classes...) for frame-space boxes."""
    rows = []
    for (x, y, w, h), scores, obj in zip(
        boxes_xywh, class_scores, objectness or [None] * len(boxes_xywh), strict=True
    ):
        cx, cy = (x + w / 2) * meta.scale + meta.pad_x, (y + h / 2) * meta.scale + meta.pad_y
        head = [cx, cy, w * meta.scale, h * meta.scale] + ([] if obj is None else [obj])
        rows.append(head + list(scores))
    return np.asarray(rows, np.float32)


@pytest.mark.parametrize("layout", ["yolov5", "yolov8"])
def test_decode_yolo_output_both_layouts(layout):
    meta = Letterbox(0.5, 0.0, 80.0)
    boxes = [
        (100.0, 50.0, 40.0, 100.0),
        (300.0, 60.0, 30.0, 90.0),
        (10.0, 10.0, 50.0, 50.0),
        (5.0, 5.0, 9, 9),
    ]
    classes = [[0.9, 0.1, 0.0], [0.7, 0.0, 0.2], [0.2, 0.95, 0.0], [0.1, 0.0, 0.0]]  # 3rd is a car, 4th weak
    if layout == "yolov5":
        out = _yolo_rows(meta, boxes, classes, objectness=[1.0, 0.9, 1.0, 1.0])[None]  # (1, N, 5 + C)
        out = np.concatenate([out, np.zeros((1, 10, out.shape[2]), np.float32)], axis=1)  # N > 5 + C
    else:
        out = _yolo_rows(meta, boxes, classes).T[None]  # (1, 4 + C, N), channels first
        out = np.concatenate([out, np.zeros((1, out.shape[1], 10), np.float32)], axis=2)  # N > 4 + C
    decoded, scores = decode_yolo_output(out, meta, layout="auto", conf_threshold=0.4)
    np.testing.assert_allclose(decoded, boxes[:2], atol=1e-3)
    expected = [0.9, 0.63] if layout == "yolov5" else [0.9, 0.7]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_decode_yolo_output_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="batch of one"):
        decode_yolo_output(np.zeros((2, 10, 85)), Letterbox(1, 0, 0))
    with pytest.raises(ValueError, match="layout"):
        decode_yolo_output(np.zeros((1, 10, 85)), Letterbox(1, 0, 0), layout="yolox")


def test_precomputed_detections(tmp_path):
    path = tmp_path / "det.txt"
    path.write_text("1,-1,10,20,30,60,0.9,-1,-1,-1\n1,-1,700,20,300,60,0.8,-1,-1,-1\n3,-1,5,5,10,20,0.4\n")
    detector = build_detector("hog", detections=str(path))
    assert isinstance(detector, PrecomputedDetector)
    frame = np.zeros((100, 200, 3), np.uint8)
    first = detector(frame, 0)
    np.testing.assert_allclose(first.boxes, [[10, 20, 30, 60]])  # the box outside the frame is dropped
    assert len(detector(frame, 1)) == 0 and len(detector(frame, 2)) == 1
    assert not detector.warn_if_unused(range(0, 3))
    path.write_text("1,-1,10,20,30,60,0.9\n2,-1,10,twenty,30,60,0.9\n")
    with pytest.raises(MotFormatError, match=r"det\.txt:2"):
        build_detector(detections=str(path))


def test_detections_that_miss_the_video_or_are_empty_are_warned_about(tmp_path, caplog):
    path = tmp_path / "det.txt"
    path.write_text("501,-1,10,20,30,60,0.9\n")  # frames of another, longer video
    detector = build_detector(detections=str(path))
    frame = np.zeros((100, 200, 3), np.uint8)
    assert all(len(detector(frame, f)) == 0 for f in range(10))
    with caplog.at_level("WARNING"):
        assert detector.warn_if_unused(range(0, 10))
    assert "frames 501-501, 1-based" in caplog.text and "frames 1-10" in caplog.text
    path.write_text("")
    with caplog.at_level("WARNING"):
        empty = build_detector(detections=str(path))
    assert "has no detections" in caplog.text and len(empty(frame, 0)) == 0


def test_unavailable_detectors_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="--onnx-model"):
        build_detector("onnx")
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        build_detector("onnx", onnx_model=str(tmp_path / "model.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DetectorUnavailableError, match="bad.onnx"):
        build_detector("onnx", onnx_model=str(bad))
    with pytest.raises(DetectorUnavailableError, match="never downloads"):
        TorchvisionDetector("ssdlite320_mobilenet_v3_large", weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("yolo")
