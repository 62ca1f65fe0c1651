#!/usr/bin/env python
"""Export a checkpoint's retrieval network to ONNX, and check that ONNX Runtime computes the same features.

    python tools/export_onnx.py runs/m/best.pt --out model.onnx
    python tools/export_onnx.py assets/models/cuhk03_mobilenetv2.pt \
        --out assets/models/cuhk03_mobilenetv2.onnx

The graph holds the backbone, the GDFL head (when the model has one) and the BNNeck: no ID classifier, no
adversary. Input ``images`` N x 3 x H x W (dynamic batch), normalised like the test transform; output
``features`` N x D, not L2-normalised. Opset 17 by default. The input size, normalisation, model name and
video gates are stored in the file's metadata (see ``reid/models/onnx_model.py``), so the result works with
``--checkpoint model.onnx`` in the video tools and with ``reid.FeatureExtractor("model.onnx")``.

After writing, the export is checked against PyTorch on random inputs; the tool fails (exit 1) when the
L2-normalised features differ by more than 1e-4. Needs the ``onnx`` package: ``pip install -e ".[onnx]"``.
"""

from __future__ import annotations

import argparse
import json
import sys

from reid.models.checkpoint import CheckpointError
from reid.models.onnx_model import ONNX_OPSET, export_onnx, parity_report

PARITY_TOLERANCE = 1e-4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="training checkpoint or shipped model (.pt)")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    args = parser.parse_args(argv)
    if args.opset < 13:
        parser.error(f"--opset must be at least 13, got {args.opset}")
    try:
        metadata = export_onnx(args.checkpoint, args.out, opset=args.opset)
        parity = parity_report(args.checkpoint, args.out)
    except (CheckpointError, FileNotFoundError, ImportError, ValueError) as err:
        print(f"export_onnx: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {metadata['model_name']}, input 3x{metadata['input_size'][0]}x"
        f"{metadata['input_size'][1]}, feature dim {metadata['feature_dim']}, opset {args.opset}"
    )
    print("parity with PyTorch: " + json.dumps(parity))
    if parity["max_abs_diff_normalised"] > PARITY_TOLERANCE:
        print(
            f"export_onnx: error: ONNX Runtime differs from PyTorch by "
            f"{parity['max_abs_diff_normalised']:.2e} on L2-normalised features "
            f"(tolerance {PARITY_TOLERANCE:g})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
