#!/usr/bin/env python
"""Crops/s of one re-ID model under each runtime, at its own input size, as ratios in one run.

    python tools/benchmark_inference.py                       # the shipped model (.pt and its .onnx)
    python tools/benchmark_inference.py --checkpoint runs/m/best.pt --onnx runs/m/model.onnx

Runtimes: PyTorch float32 (the baseline, ratio 1.00), PyTorch with channels_last tensors, and ONNX Runtime
(CPU provider) on the exported graph. Timed: the forward pass alone on preprocessed random input, at batch
1 and at --batch-size, after warm-up; best of --repeats runs, so that a background hiccup does not count.
The exported file is checked to compute the same features first (``parity_report``). Writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from reid.models.checkpoint import load_retrieval_model
from reid.models.onnx_model import OnnxRetrievalModel, parity_report
from reid.shipped import SHIPPED_CHECKPOINT, SHIPPED_ONNX
from reid.utils.io import atomic_write_json


def crops_per_second(forward: Callable[[], object], batch: int, min_seconds: float, repeats: int) -> float:
    """Best-of-``repeats`` throughput of ``forward`` (one batch per call); each run lasts ``min_seconds``."""
    forward()  # warm-up: allocations, lazy initialisation, oneDNN kernel selection
    best = 0.0
    for _ in range(repeats):
        calls, began = 0, time.perf_counter()
        while True:
            forward()
            calls += 1
            elapsed = time.perf_counter() - began
            if elapsed >= min_seconds:
                break
        best = max(best, calls * batch / elapsed)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--onnx", type=Path, default=SHIPPED_ONNX, help="the checkpoint exported to ONNX")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="length of each timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/inference.json"))
    args = parser.parse_args(argv)
    try:
        model, info = load_retrieval_model(args.checkpoint)
        onnx_model = OnnxRetrievalModel(args.onnx)
        parity = parity_report(args.checkpoint, args.onnx)
    except (OSError, ValueError, ImportError) as err:
        print(f"benchmark_inference: error: {err}", file=sys.stderr)
        return 2
    if onnx_model.info["model_name"] != info["model_name"]:
        print(
            f"benchmark_inference: error: {args.onnx} is {onnx_model.info['model_name']}, not an export of "
            f"{args.checkpoint} ({info['model_name']})",
            file=sys.stderr,
        )
        return 2
    model = model.float().eval()
    height, width = info["input_size"]
    rows = []
    for batch in (1, args.batch_size):
        images = torch.from_numpy(
            np.random.default_rng(0).standard_normal((batch, 3, height, width), dtype=np.float32)
        )
        as_numpy = images.numpy()
        with torch.inference_mode():
            fp32 = crops_per_second(
                lambda images=images: model(images), batch, args.min_seconds, args.repeats
            )
            model.to(memory_format=torch.channels_last)
            cl_images = images.contiguous(memory_format=torch.channels_last)
            channels_last = crops_per_second(
                lambda cl_images=cl_images: model(cl_images), batch, args.min_seconds, args.repeats
            )
            model.to(memory_format=torch.contiguous_format)
        ort = crops_per_second(
            lambda as_numpy=as_numpy: onnx_model(as_numpy), batch, args.min_seconds, args.repeats
        )
        for runtime, speed in (
            ("torch fp32", fp32),
            ("torch channels_last", channels_last),
            ("onnxruntime", ort),
        ):
            rows.append({"batch": batch, "runtime": runtime, "crops_per_s": speed, "ratio": speed / fp32})
    print(
        f"{info['model_name']}, input 3x{height}x{width}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"parity: max |diff| of L2-normalised features {parity['max_abs_diff_normalised']:.2e}")
    print("| batch | runtime | crops/s | vs torch fp32 |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['batch']} | {row['runtime']} | {row['crops_per_s']:.0f} | {row['ratio']:.2f}x |")
    atomic_write_json(
        args.out,
        {
            "model_name": info["model_name"],
            "input_size": [height, width],
            "threads": torch.get_num_threads(),
            "parity": parity,
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")
    print(json.dumps({"onnxruntime_vs_torch_batch32": rows[-1]["ratio"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
