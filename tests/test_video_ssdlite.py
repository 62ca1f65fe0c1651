"""The shipped SSDLite person detector: anchors, box decoding and tiling against slow references, the ONNX
file's checksum, and detections on a frame of the shipped clip."""

import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.video.boxes import intersection_over_area, iou_matrix
from reid.video.detection import build_detector
from reid.video.ssdlite import (
    BOX_CODER_SCALES,
    DEFAULT_MODEL_PATH,
    INPUT_SIZE,
    SsdlitePersonDetector,
    corner_anchors,
    cut_by_tile,
    decode_boxes,
    decode_detections,
    drop_cut_duplicates,
    encode_boxes,
    parse_tiles,
    ssd_anchors,
    tile_batch,
    tile_grid,
    whole_view_keep,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

SHIPPED_SHA256 = "9051fe56d0802b0f5f15e49b1dea96709de49f0ce5d580afb387a8c38d37b39d"


def reference_anchors():
    """TF's SSD anchor generator written out cell by cell (ycenter, xcenter, h, w)."""
    sizes, ratios = (19, 10, 5, 3, 2, 1), (1.0, 2.0, 0.5, 3.0, 0.3333)
    scales = [0.2 + (0.95 - 0.2) * i / 5 for i in range(6)] + [1.0]
    rows = []
    for layer, size in enumerate(sizes):
        if layer == 0:
            boxes = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            interpolated = math.sqrt(scales[layer] * scales[layer + 1])
            boxes = [(scales[layer], r) for r in ratios] + [(interpolated, 1.0)]
        for i in range(size):
            for j in range(size):
                for scale, ratio in boxes:
                    rows.append(((i + 0.5) / size, (j + 0.5) / size, scale / math.sqrt(ratio),
                                 scale * math.sqrt(ratio)))
    return np.array(rows)


def reference_nms(boxes, scores, iou):
    """Greedy NMS by score, one box at a time."""
    order, kept = list(np.argsort(-scores, kind="stable")), []
    for i in order:
        ok = True
        for j in kept:
            y0, x0 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            y1, x1 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, y1 - y0) * max(0.0, x1 - x0)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > iou:
                ok = False
        if ok:
            kept.append(i)
    return kept


def test_anchors_match_the_generator_written_out():
    anchors = ssd_anchors()
    assert anchors.shape == (1917, 4)
    np.testing.assert_allclose(anchors, reference_anchors(), atol=1e-12)
    assert not anchors.flags.writeable  # cached: nobody may change them


def test_decode_inverts_encode_and_zero_codes_are_the_anchors():
    rng = np.random.default_rng(0)
    anchors = ssd_anchors()
    np.testing.assert_allclose(decode_boxes(np.zeros((1917, 4))), corner_anchors(anchors), atol=1e-12)
    centre = rng.uniform(0.2, 0.8, (1917, 2))
    size = rng.uniform(0.05, 0.4, (1917, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    np.testing.assert_allclose(decode_boxes(encode_boxes(boxes)), boxes, atol=1e-12)
    # One box worked by hand: anchor (0.5, 0.5, 0.2, 0.1), person twice as tall, shifted down by 0.02.
    anchor = np.array([[0.5, 0.5, 0.2, 0.1]])
    code = np.array([[0.02 / 0.2 * BOX_CODER_SCALES[0], 0.0, math.log(2.0) * BOX_CODER_SCALES[2], 0.0]])
    np.testing.assert_allclose(decode_boxes(code, anchor), [[0.32, 0.45, 0.72, 0.55]], atol=1e-12)


def test_decode_detections_matches_per_view_reference():
    rng = np.random.default_rng(1)
    views, n = 3, 1917
    codes = rng.normal(0, 1.0, (views, n, 4))
    logits = np.stack([np.zeros((views, n)), rng.normal(-4, 2.5, (views, n))], axis=-1)
    boxes, scores, view = decode_detections(codes, logits, min_score=0.3, nms_iou=0.6, max_per_view=5)
    decoded = decode_boxes(codes)
    for v in range(views):
        score = 1 / (1 + np.exp(-logits[v, :, 1]))
        candidates = np.flatnonzero(score >= 0.3)
        kept = candidates[reference_nms(decoded[v, candidates], score[candidates], 0.6)][:5]
        expect = np.clip(decoded[v, kept], 0, 1)
        nonempty = (expect[:, 2] > expect[:, 0]) & (expect[:, 3] > expect[:, 1])
        np.testing.assert_allclose(boxes[view == v], expect[nonempty], atol=1e-5)
        np.testing.assert_allclose(scores[view == v], score[kept][nonempty], atol=1e-6)
    assert (view == 0).sum() == 5  # the cap applies per view


def test_no_score_above_threshold_gives_no_boxes():
    boxes, scores, view = decode_detections(np.zeros((2, 1917, 4)), np.full((2, 1917, 2), -9.0))
    assert boxes.shape == (0, 4) and len(scores) == 0 and len(view) == 0


def test_tile_grid_covers_the_frame_with_the_asked_overlap():
    tiles = tile_grid(768, 576, 3, 3, 0.4)
    assert len(tiles) == 9
    covered = np.zeros((576, 768), bool)
    for x, y, w, h in tiles:
        assert 0 <= x and 0 <= y and x + w <= 768 and y + h <= 576
        covered[y : y + h, x : x + w] = True
    assert covered.all()
    (x0, _, w0, _), (x1, _, _, _) = tiles[0], tiles[1]
    assert abs((x0 + w0 - x1) / w0 - 0.4) < 0.01
    assert tile_grid(200, 120, 3, 3) == [(0, 0, 200, 120)]  # too small for tiles: the whole frame
    assert tile_grid(0, 10, 3, 3) == []
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(768, 576, 2, 2, 1.0)


@pytest.mark.parametrize("text", ["3", "0x2", "axb", "3x3x3", ""])
def test_parse_tiles_refuses_malformed_grids(text):
    with pytest.raises(ValueError, match="RxC"):
        parse_tiles(text)


def test_box_cut_by_a_tile_border_yields_to_the_whole_box_of_another_tile():
    # Tile 0 covers x 0-400, tile 1 covers x 300-700; a person at x 380-420 is cut by tile 0's right border.
    tiles = np.array([[0, 0, 400, 300], [300, 0, 400, 300]], float)
    view_boxes = np.array([[0.2, 380 / 400, 0.6, 1.0], [0.2, 80 / 400, 0.6, 120 / 400]])  # ymin, xmin, ...
    cut = cut_by_tile(view_boxes, tiles, 700, 300)
    assert cut.tolist() == [True, False]
    frame_boxes = np.array([[380, 60, 20, 120], [380, 60, 40, 120]], float)
    assert drop_cut_duplicates(frame_boxes, np.array([0, 1]), cut).tolist() == [False, True]
    # The same pair from one tile: NMS has already judged it, both stay.
    assert drop_cut_duplicates(frame_boxes, np.array([0, 0]), cut).all()
    # The frame's own border cuts nothing.
    assert not cut_by_tile(np.array([[0.2, 0.9, 0.6, 1.0]]), np.array([[300, 0, 400, 300]]), 700, 300).any()


def test_shipped_model_file_is_the_converted_one():
    assert hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest() == SHIPPED_SHA256


@pytest.fixture(scope="module")
def clip_frame():
    capture = cv2.VideoCapture(str(REPO_ROOT / "assets" / "vtest_clip.avi"))
    ok, frame = capture.read()
    capture.release()
    assert ok
    return frame


def test_detects_the_people_on_a_frame_of_the_clip(clip_frame):
    detector = build_detector("ssdlite")
    assert isinstance(detector, SsdlitePersonDetector) and detector.tiles == (3, 3)
    detections = detector(clip_frame, 0)
    height, width = clip_frame.shape[:2]
    boxes = detections.boxes
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 0] + boxes[:, 2] <= width + 1e-6).all()
    assert (boxes[:, 1] + boxes[:, 3] <= height + 1e-6).all()
    assert ((detections.scores >= 0.3) & (detections.scores <= 1)).all()
    # The frame shows four people walking, at least three of them apart: upright, person-sized boxes.
    upright = boxes[(detections.scores >= 0.5) & (boxes[:, 3] > 1.5 * boxes[:, 2]) & (boxes[:, 3] > 50)]
    assert len(upright) >= 3
    # They are small in a 768x576 frame: one 300x300 view of the whole frame finds fewer of them.
    whole_frame = SsdlitePersonDetector(tiles=(1, 1))(clip_frame, 0)
    assert len(whole_frame) < len(detections)
    # Batching the tiles does not change the network's outputs.
    batch = tile_batch(clip_frame, tile_grid(width, height, 3, 3))
    together = detector.run_network(batch)
    alone = detector.run_network(batch[4:5])
    np.testing.assert_allclose(together[0][4:5], alone[0], atol=1e-4)
    assert batch.shape == (9, INPUT_SIZE, INPUT_SIZE, 3) and batch.min() >= -1 and batch.max() <= 1


def test_grey_and_tiny_frames_do_not_crash(clip_frame):
    detector = SsdlitePersonDetector()
    grey = cv2.cvtColor(clip_frame, cv2.COLOR_BGR2GRAY)
    assert len(detector(grey, 0)) >= 1
    assert len(detector(np.zeros((8, 8, 3), np.uint8), 0)) == 0


def test_missing_model_file_is_one_clear_error(tmp_path):
    from reid.video.detection import DetectorUnavailableError

    with pytest.raises(DetectorUnavailableError, match="not found"):
        SsdlitePersonDetector(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DetectorUnavailableError, match="could not load"):
        SsdlitePersonDetector(bad)


def test_whole_view_adds_only_people_too_tall_for_the_tiles():
    # Frame boxes x, y, w, h; views 0 and 1 are tiles, 2 the whole frame; tiles see people up to 100 px whole.
    boxes = np.array([
        [10, 10, 30, 80],     # 0: whole view, short: the tiles see such people better -> dropped
        [100, 10, 60, 200],   # 1: whole view, tall, a tile saw a similar-height person inside -> dropped
        [105, 15, 50, 180],   # 2: tile, uncut, similar height: explains box 1 -> kept
        [300, 10, 80, 300],   # 3: whole view, tall, only a head-and-shoulders inside -> kept
        [310, 15, 60, 90],    # 4: tile, uncut, a third of box 3's height: a part of that person -> dropped
        [500, 10, 20, 60],    # 5: tile, a small person elsewhere -> kept
    ], float)
    views = np.array([2, 2, 0, 2, 1, 0])
    cut = np.zeros(6, bool)
    keep = whole_view_keep(boxes, views, cut, whole_view=2, min_height=100.0)
    assert keep.tolist() == [False, False, True, True, False, True]
    # A tile box cut by its border explains nothing: the tall person seen only in pieces is kept.
    assert whole_view_keep(boxes[1:3], views[1:3], np.array([False, True]), 2, 100.0).tolist() == [True, True]


def test_a_person_filling_the_frame_is_found_whole(clip_frame):
    # Zoom the clip's tallest person until they fill 80 % of a 768x576 frame: every 3x3 tile cuts them.
    detector = SsdlitePersonDetector()
    x, y, w, h = max(detector(clip_frame, 0).boxes, key=lambda b: b[3])
    crop_h = h / 0.8
    x0, y0 = int(max(0, x + w / 2 - crop_h * 2 / 3)), int(max(0, y + h / 2 - crop_h / 2))
    zoomed = cv2.resize(clip_frame[y0:int(y0 + crop_h), x0:int(x0 + crop_h * 4 / 3)], (768, 576))
    reference = SsdlitePersonDetector(tiles=(1, 1))(zoomed, 0)
    tall = reference.boxes[reference.boxes[:, 3] > 0.6 * 576]
    assert len(tall) >= 1
    found = detector(zoomed, 0).boxes
    assert iou_matrix(tall, found).max(axis=1).min() >= 0.7
    # Nothing else is left inside that person (no parts found by single tiles) ...
    inside = intersection_over_area(found, tall).max(axis=1)
    assert (inside >= 0.5).sum() == len(tall)
    # ... and the tiles alone do not find them whole.
    tiles_only = SsdlitePersonDetector(whole_frame=False)(zoomed, 0).boxes
    assert len(tiles_only) == 0 or iou_matrix(tall, tiles_only).max() < 0.7
