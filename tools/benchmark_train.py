#!/usr/bin/env python
"""Training throughput (images/s) of a real recipe, for the baseline and the full framework, on the GPU
when there is one (else the CPU). ``--recipe market1501``: ResNet-50, 256x128, P=16 x K=4 (a GPU recipe);
``--recipe cuhk03``: the CPU recipe of the shipped model, MobileNetV2 160x80, stem + layer1 frozen.

Three figures per variant, each after ``--warmup`` untimed steps:
  (a) model only  - the trainer's optimisation step on random tensors already on the device (no loading);
  (b) full        - the same step fed by the real loader (decode, augmentation, P x K sampling, workers);
  (c) loader only - the loader alone, no model.
(b)/(a) near 1 means the data pipeline is not the bottleneck; (c) says how much headroom it has.
Images come from the synthetic generator at Market-1501's native 128x64 (resized to 256x128, as for Market).

    python tools/benchmark_train.py                                  # CUDA: channels_last + bf16 by default
    python tools/benchmark_train.py --iters 20 --num-workers 8 --amp off --no-channels-last
    python tools/benchmark_train.py --variants baseline --iters 2    # a quick CPU figure
    python tools/benchmark_train.py --recipe cuhk03 --num-workers 1  # the shipped model's CPU recipe
"""

from __future__ import annotations

import argparse
import itertools
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from reid.engine.launch import compose_config
from reid.engine.trainer import Trainer

logger = logging.getLogger("benchmark_train")

REPO = Path(__file__).resolve().parent.parent
RECIPES = {
    "market1501": {
        "baseline": REPO / "configs" / "market1501" / "baseline.yml",
        "framework": REPO / "configs" / "market1501" / "framework.yml",
    },
    "cuhk03": {
        "baseline": REPO / "configs" / "cuhk03" / "mobilenetv2_baseline.yml",
        "framework": REPO / "configs" / "cuhk03" / "mobilenetv2_framework.yml",
    },
}


def device_name() -> str:
    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(steps: Iterator[int], warmup: int, iters: int) -> float:
    """Images/s over ``iters`` steps after ``warmup`` untimed ones (``steps`` yields each batch size)."""
    for _ in range(warmup):
        next(steps)
    _sync()
    start, images = time.perf_counter(), 0
    for _ in range(iters):
        images += next(steps)
    _sync()
    return images / (time.perf_counter() - start)


def _batches(trainer: Trainer) -> Iterator[dict]:
    """Loader batches across epochs (a benchmark may need more steps than one epoch holds)."""
    for epoch in itertools.count():
        trainer.train_loader.batch_sampler.set_epoch(epoch)
        yield from trainer.train_loader


def benchmark_variant(cfg: dict, run_dir: Path, warmup: int, iters: int) -> dict[str, float]:
    trainer = Trainer(cfg, run_dir)
    trainer.train_model.train()
    data = cfg["data"]
    p, k = int(data["ids_per_batch"]), int(data["num_instances"])
    images = torch.randn(p * k, 3, int(data["height"]), int(data["width"]), device=trainer.device)
    pids = torch.arange(p, device=trainer.device).repeat_interleave(k)

    def model_only() -> Iterator[int]:
        while True:
            trainer.train_step(images, pids)
            yield p * k

    def full() -> Iterator[int]:
        for batch in _batches(trainer):
            trainer.train_step(batch["images"], batch["pids"])
            yield batch["images"].shape[0]

    def loader_only() -> Iterator[int]:
        for batch in _batches(trainer):
            batch["images"].to(trainer.device, non_blocking=True)
            yield batch["images"].shape[0]

    a = _timed(model_only(), warmup, iters)
    b = _timed(full(), warmup, iters)
    c = _timed(loader_only(), warmup, iters)
    return {"model_only": a, "full": b, "loader_only": c, "ratio": b / a}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="market1501")
    variants = ["baseline", "framework"]
    parser.add_argument("--variants", nargs="+", choices=variants, default=variants)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per figure")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each figure")
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto", help="CUDA only")
    parser.add_argument("--no-channels-last", action="store_true", help="keep the default memory layout")
    parser.add_argument("--data", type=Path, help="synthetic data folder (default: a temporary one)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.height=384"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        data_root = args.data or Path(tmp) / "synthetic"
        overrides = [
            "data.name=synthetic",
            f"data.root={data_root}",
            f"data.num_workers={args.num_workers}",
            "model.pretrained=none",
            f"solver.amp={args.amp}",
            f"solver.channels_last={'false' if args.no_channels_last else 'true'}",
            *args.overrides,
        ]
        print(
            f"recipe {args.recipe}; device: {device_name()}; amp={args.amp} (CUDA only), "
            f"channels_last={not args.no_channels_last}"
        )
        print(
            f"warm-up {args.warmup} + {args.iters} timed steps per figure; {args.num_workers} loader workers"
        )
        print(
            "| variant | (a) model only img/s | (b) full pipeline img/s | (b)/(a) | (c) loader only img/s |"
        )
        print("|---|---|---|---|---|")
        for variant in args.variants:
            cfg = compose_config([RECIPES[args.recipe][variant]], overrides)
            figures = benchmark_variant(cfg, Path(tmp) / variant, args.warmup, args.iters)
            print(
                f"| {variant} | {figures['model_only']:.1f} | {figures['full']:.1f} | {figures['ratio']:.2f} "
                f"| {figures['loader_only']:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
