"""Person detectors behind one interface: ``detector(frame_bgr, frame_index) -> Detections``.

* ``ssdlite``: SSDLite MobileNetV2 fine-tuned for people, shipped as ONNX in ``assets/detectors/`` and run
  with onnxruntime over overlapping tiles of the frame (:mod:`reid.video.ssdlite`). The default of the tools.
* ``hog``: OpenCV's built-in HOG + linear SVM people detector (Dalal & Triggs 2005). No model file, runs
  anywhere - but it lives in the main OpenCV wheels only before OpenCV 5 (afterwards in the contrib build).
  Its 64x128 window expects a person about 96 px tall; surveillance footage often shows people smaller than
  that, so frames are upscaled by ``resize`` before detection, and the window is shrunk to the person.
* ``onnx``: a YOLO-family detector exported to ONNX by the user, run through ``cv2.dnn`` (letterbox in,
  YOLOv5 ``(1, N, 5 + C)`` or YOLOv8 ``(1, 4 + C, N)`` out; class 0 is "person" in COCO order).
* ``precomputed``: boxes from a MOTChallenge ``det.txt`` (to separate detector quality from tracking).
* ``torchvision``: Faster R-CNN or SSDlite, only when its COCO weights are already on disk (no download).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from reid.video.boxes import clip_boxes, nms
from reid.video.mot_io import read_mot_file

logger = logging.getLogger(__name__)

DETECTOR_KINDS = ("ssdlite", "hog", "onnx", "precomputed", "torchvision")


class DetectorUnavailableError(RuntimeError):
    """The requested detector cannot run here (missing OpenCV feature, model file or local weights)."""


@dataclass(frozen=True)
class Detections:
    """Person boxes of one frame: ``boxes`` (N, 4) x, y, w, h in frame pixels; ``scores`` (N,) in [0, 1]."""

    boxes: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=np.float64))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep])


class Detector(Protocol):
    name: str

    def __call__(self, frame: np.ndarray, frame_index: int) -> Detections: ...


def _finalize(boxes: np.ndarray, scores: np.ndarray, frame_shape: tuple[int, ...], min_score: float,
              nms_iou: float) -> Detections:
    """Clip to the frame, drop degenerate and low-score boxes, then suppress duplicates."""
    height, width = frame_shape[:2]
    boxes = clip_boxes(boxes, width, height)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    ok = (boxes[:, 2] >= 2) & (boxes[:, 3] >= 4) & (scores >= min_score)
    boxes, scores = boxes[ok], scores[ok]
    if len(boxes) > 1:
        keep = nms(boxes, scores, nms_iou)
        boxes, scores = boxes[keep], scores[keep]
    return Detections(boxes, scores)


def hog_available() -> bool:
    """True when this OpenCV build ships the HOG people detector (main wheels < 5, or contrib)."""
    return hasattr(cv2, "HOGDescriptor") and hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector")


class HogPersonDetector:
    """OpenCV's default people detector with upscaling, NMS, a score threshold and a box fit.

    ``box_fit`` maps the detection window to the person inside it as fractions of the window
    ``(dx, dy, w, h)``. The default is the geometry the detector was trained with, not a fit to any footage:
    Dalal & Triggs' 64x128 training windows hold a person about 96 px tall with a 16 px margin on all four
    sides, i.e. ``(16/64, 16/128, 32/64, 96/128)``.
    SVM margins become scores in [0, 1] with a logistic, ``1 / (1 + exp(-2 margin))``.
    """

    name = "hog"

    def __init__(self, *, resize: float = 1.33, hit_threshold: float = 0.0, min_score: float = 0.5,
                 nms_iou: float = 0.3, win_stride: int = 8, pyramid_scale: float = 1.05,
                 box_fit: tuple[float, float, float, float] = (0.25, 0.125, 0.5, 0.75)) -> None:
        if not hog_available():
            raise DetectorUnavailableError(
                "this OpenCV build has no HOGDescriptor people detector (OpenCV 5 moved it to the contrib "
                "build): install opencv-python-headless<5 or opencv-contrib-python-headless"
            )
        if resize <= 0:
            raise ValueError(f"resize must be positive, got {resize}")
        self.resize = float(resize)
        self.hit_threshold = float(hit_threshold)
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self.win_stride = (int(win_stride), int(win_stride))
        self.pyramid_scale = float(pyramid_scale)
        self.box_fit = np.asarray(box_fit, dtype=np.float64)
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    WINDOW = (64, 128)  # the default people detector's window, width x height

    def check_frame_size(self, width: int, height: int) -> None:
        """Refuse frames smaller than the HOG window after ``resize``: OpenCV's detectMultiScale reads out of
        bounds on them and can take the process down (heap corruption), so it is never called on one."""
        scaled = (int(round(width * self.resize)), int(round(height * self.resize)))
        if scaled[0] < self.WINDOW[0] or scaled[1] < self.WINDOW[1]:
            raise ValueError(
                f"frames of {width}x{height} px are {scaled[0]}x{scaled[1]} at --resize {self.resize:g}, "
                f"smaller than the HOG window of {self.WINDOW[0]}x{self.WINDOW[1]}: use a larger --resize or "
                "--detector ssdlite"
            )

    def __call__(self, frame: np.ndarray, frame_index: int) -> Detections:
        self.check_frame_size(frame.shape[1], frame.shape[0])
        image = frame
        if self.resize != 1.0:
            interpolation = cv2.INTER_LINEAR if self.resize > 1 else cv2.INTER_AREA
            image = cv2.resize(frame, None, fx=self.resize, fy=self.resize, interpolation=interpolation)
        rects, margins = self._hog.detectMultiScale(
            image, hitThreshold=self.hit_threshold, winStride=self.win_stride, padding=(8, 8),
            scale=self.pyramid_scale,
        )
        if len(rects) == 0:
            return Detections.empty()
        windows = np.asarray(rects, dtype=np.float64).reshape(-1, 4) / self.resize
        dx, dy, fw, fh = self.box_fit
        boxes = np.stack([windows[:, 0] + dx * windows[:, 2], windows[:, 1] + dy * windows[:, 3],
                          fw * windows[:, 2], fh * windows[:, 3]], axis=1)
        scores = 1.0 / (1.0 + np.exp(-2.0 * np.asarray(margins, dtype=np.float64).reshape(-1)))
        return _finalize(boxes, scores, frame.shape, self.min_score, self.nms_iou)


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the network input: ``input = frame * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float


def letterbox(frame: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad with grey to ``size`` x ``size`` (YOLO's pre-processing)."""
    height, width = frame.shape[:2]
    scale = min(size / width, size / height)
    new_w, new_h = round(width * scale), round(height * scale)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), 114, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = cv2.resize(frame, (new_w, new_h))
    return canvas, Letterbox(scale, float(pad_x), float(pad_y))


def decode_yolo_output(output: np.ndarray, meta: Letterbox, *, layout: str = "auto",
                       person_class: int = 0, conf_threshold: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (xywh in frame pixels) and scores from a raw YOLO output tensor, before NMS.

    YOLOv5: rows ``cx, cy, w, h, objectness, class scores...``, score = objectness * class score.
    YOLOv8: channels-first ``(4 + C, N)``, rows ``cx, cy, w, h, class scores...``, score = class score.
    ``layout="auto"`` treats a channels-first tensor (fewer rows than columns) as YOLOv8, else YOLOv5.
    """
    array = np.asarray(output, dtype=np.float32)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise ValueError(f"expected a batch of one image, got output shape {array.shape}")
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"expected a YOLO output of shape (1, N, K) or (1, K, N), got {np.shape(output)}")
    if layout == "auto":
        layout = "yolov8" if array.shape[0] < array.shape[1] else "yolov5"
    if layout == "yolov8":
        rows = array.T if array.shape[0] < array.shape[1] else array
        first_class = 4
        if rows.shape[1] <= first_class + person_class:
            raise ValueError(f"YOLOv8 output has {rows.shape[1]} values per box, no class {person_class}")
        scores = rows[:, first_class + person_class]
        keep = scores >= conf_threshold
        rows, scores = rows[keep], scores[keep]
        # A box belongs to the person class only if that class is its best one.
        best = rows[:, first_class:].argmax(axis=1) == person_class
    elif layout == "yolov5":
        rows = array
        first_class = 5
        if rows.shape[1] <= first_class + person_class:
            raise ValueError(f"YOLOv5 output has {rows.shape[1]} values per box, no class {person_class}")
        scores = rows[:, 4] * rows[:, first_class + person_class]
        keep = scores >= conf_threshold
        rows, scores = rows[keep], scores[keep]
        best = rows[:, first_class:].argmax(axis=1) == person_class
    else:
        raise ValueError(f"layout must be 'auto', 'yolov5' or 'yolov8', got {layout!r}")
    rows, scores = rows[best], scores[best]
    cx = (rows[:, 0] - meta.pad_x) / meta.scale
    cy = (rows[:, 1] - meta.pad_y) / meta.scale
    w, h = rows[:, 2] / meta.scale, rows[:, 3] / meta.scale
    boxes = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1).astype(np.float64)
    return boxes, scores.astype(np.float64)


class OnnxYoloDetector:
    """A user-supplied YOLO person detector (ONNX) run with OpenCV's DNN module on the CPU."""

    name = "onnx"

    def __init__(self, model_path: str | os.PathLike, *, input_size: int = 640, layout: str = "auto",
                 conf_threshold: float = 0.4, nms_iou: float = 0.45, person_class: int = 0) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        try:
            self._net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as exc:
            raise DetectorUnavailableError(f"OpenCV could not load the ONNX model {path}: {exc}") from exc
        self.input_size = int(input_size)
        self.layout = layout
        self.conf_threshold = float(conf_threshold)
        self.nms_iou = float(nms_iou)
        self.person_class = int(person_class)

    def __call__(self, frame: np.ndarray, frame_index: int) -> Detections:
        image, meta = letterbox(frame, self.input_size)
        blob = cv2.dnn.blobFromImage(image, 1 / 255.0, swapRB=True)
        self._net.setInput(blob)
        boxes, scores = decode_yolo_output(self._net.forward(), meta, layout=self.layout,
                                           person_class=self.person_class,
                                           conf_threshold=self.conf_threshold)
        return _finalize(boxes, scores, frame.shape, self.conf_threshold, self.nms_iou)


class PrecomputedDetector:
    """Serves the boxes of a MOTChallenge ``det.txt``; malformed rows fail at load, naming file and line."""

    name = "precomputed"

    def __init__(self, det_file: str | os.PathLike, *, min_score: float = 0.0, nms_iou: float = 1.0) -> None:
        table = read_mot_file(det_file)
        self.path = Path(det_file)
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self._frames = {
            frame: (table.boxes[rows], table.scores[rows]) for frame, rows in table.by_frame().items()
        }
        self.frames_served = 0  # video frames that had boxes in the file
        if not self._frames:
            logger.warning("%s has no detections: every frame will be empty", det_file)
        else:
            logger.info("loaded %d detections for %d frames from %s", len(table), len(self._frames), det_file)

    def __call__(self, frame: np.ndarray, frame_index: int) -> Detections:
        found = self._frames.get(int(frame_index))
        if found is None:
            return Detections.empty()
        self.frames_served += 1
        return _finalize(found[0], found[1], frame.shape, self.min_score, self.nms_iou)

    def warn_if_unused(self, frames: range) -> bool:
        """After a run over video ``frames``: warn (and return True) when the file had boxes but none of them
        fell on a frame that was read - a det.txt of another video, or 0-based frame numbers."""
        if self.frames_served or not self._frames:
            return False
        first, last = min(self._frames), max(self._frames)
        logger.warning("%s: none of its detections (frames %d-%d, 1-based) is on a frame of this video "
                       "(frames %d-%d): is it the det.txt of another video?", self.path, first + 1, last + 1,
                       frames.start + 1, frames.stop)
        return True


TORCHVISION_MODELS = {
    "fasterrcnn_resnet50_fpn": "FasterRCNN_ResNet50_FPN_Weights",
    "ssdlite320_mobilenet_v3_large": "SSDLite320_MobileNet_V3_Large_Weights",
}


class TorchvisionDetector:
    """A COCO-trained torchvision detector, only from weights already on disk (never downloads)."""

    name = "torchvision"

    def __init__(self, model_name: str = "fasterrcnn_resnet50_fpn", *, weights_path: str | None = None,
                 conf_threshold: float = 0.5, nms_iou: float = 0.5, device: str = "cpu") -> None:
        import torch
        import torchvision.models.detection as tvd

        if model_name not in TORCHVISION_MODELS:
            raise ValueError(
                f"torchvision detector must be one of {sorted(TORCHVISION_MODELS)}, got {model_name!r}"
            )
        weights_enum = getattr(tvd, TORCHVISION_MODELS[model_name]).DEFAULT
        if weights_path is None:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
            weights_path = str(cached)
        if not Path(weights_path).is_file():
            raise DetectorUnavailableError(
                f"no local weights for {model_name} at {weights_path}; copy {Path(weights_enum.url).name} "
                "there (this tool never downloads) or use --detector hog / --detections FILE"
            )
        model = getattr(tvd, model_name)(weights=None, weights_backbone=None)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        self._model = model.eval().to(device)
        self._device = device
        self._torch = torch
        self.conf_threshold = float(conf_threshold)
        self.nms_iou = float(nms_iou)

    def __call__(self, frame: np.ndarray, frame_index: int) -> Detections:
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        tensor = self._torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0).to(self._device)
        with self._torch.inference_mode():
            out = self._model([tensor])[0]
        labels = out["labels"].cpu().numpy()
        xyxy = out["boxes"].cpu().numpy().astype(np.float64)[labels == 1]  # COCO label 1 = person
        scores = out["scores"].cpu().numpy().astype(np.float64)[labels == 1]
        boxes = np.c_[xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]] if len(xyxy) else np.zeros((0, 4))
        return _finalize(boxes, scores, frame.shape, self.conf_threshold, self.nms_iou)


def build_detector(kind: str = "hog", *, detections: str | None = None, onnx_model: str | None = None,
                   resize: float | None = None, torchvision_model: str = "fasterrcnn_resnet50_fpn",
                   min_score: float | None = None, tiles: tuple[int, int] | None = None) -> Detector:
    """The detector the command line asks for; ``detections`` (a det.txt) wins over ``kind``.

    ``tiles`` (rows, cols) is the tile grid of ``ssdlite``; ``resize`` applies to ``hog`` only.
    """
    if detections is not None:
        return PrecomputedDetector(detections, min_score=0.0 if min_score is None else min_score)
    if kind == "ssdlite":
        from reid.video.ssdlite import SsdlitePersonDetector

        kwargs = {} if min_score is None else {"min_score": min_score}
        if tiles is not None:
            kwargs["tiles"] = tiles
        return SsdlitePersonDetector(**kwargs)
    if kind == "hog":
        kwargs = {} if min_score is None else {"min_score": min_score}
        return HogPersonDetector(resize=1.33 if resize is None else resize, **kwargs)
    if kind == "onnx":
        if onnx_model is None:
            raise ValueError("--detector onnx needs --onnx-model FILE (a YOLO person detector, ONNX format)")
        return OnnxYoloDetector(onnx_model, conf_threshold=0.4 if min_score is None else min_score)
    if kind == "torchvision":
        return TorchvisionDetector(torchvision_model, conf_threshold=0.5 if min_score is None else min_score)
    raise ValueError(f"unknown detector {kind!r}; choose one of {DETECTOR_KINDS}")
