#!/usr/bin/env python
"""Write a training checkpoint's retrieval weights as a small file to ship (e.g. under ``assets/models/``).

    python tools/ship_model.py runs/cuhk03/mobilenetv2_baseline/best.pt \
        --out assets/models/cuhk03_mobilenetv2.pt

Keeps what feature extraction needs (backbone, GDFL head, BNNeck: ``retrieval_state_dict``) and the resolved
config; drops the classifier, the adversary, optimizer and RNG state. Floating-point tensors are stored as
float16 (half the size; loading casts them back to float32). The result loads wherever a checkpoint does
(``--checkpoint``, ``load_retrieval_model``).
"""

from __future__ import annotations

import argparse
import sys

from reid.models.checkpoint import CheckpointError, load_retrieval_model, retrieval_state_dict, with_checksum
from reid.utils.io import atomic_torch_save


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="training checkpoint (best.pt / last.pt)")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--fp32", action="store_true", help="keep float32 tensors")
    args = parser.parse_args(argv)
    try:
        model, info = load_retrieval_model(args.checkpoint)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"ship_model: {err}", file=sys.stderr)
        return 2
    state = {
        key: value.half() if value.is_floating_point() and not args.fp32 else value
        for key, value in retrieval_state_dict(model).items()
    }
    shipped = {
        "model": state,
        "config": info["config"],
        "num_classes": info["num_classes"],
        "epoch": info["epoch"],
    }
    if info["appearance_thresholds"] is not None:  # calibrated video gates travel with the weights
        shipped["appearance_thresholds"] = info["appearance_thresholds"]
    atomic_torch_save(with_checksum(shipped), args.out)
    print(f"wrote {args.out} ({info['model_name']}, feature dim {info['feature_dim']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
