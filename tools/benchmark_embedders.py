#!/usr/bin/env python
"""Retrieval accuracy and speed of the video embedders on a labelled re-ID set, in one run.

    python tools/benchmark_embedders.py --root ../shared/data/cuhk03            # CUHK03 validation ids
    python tools/benchmark_embedders.py --dataset market1501 --root data/market1501 --boxes none

Embedders, each as ``tools/demo_video.py`` runs it (BGR crops in, cosine distance):
  * ``handcrafted``: the colour/gradient descriptor (reid/video/descriptor.py);
  * ``imagenet``: MobileNetV2 with ImageNet weights (--imagenet-weights), globally pooled, no re-ID training;
  * ``model``: the shipped re-ID model (or --checkpoint).
For each box type (CUHK03; ``--boxes none`` for other datasets) it prints Rank-1 / mAP / mINP on the
dataset's query/gallery split under the standard protocol (reid.evaluation.evaluate_rank, same identity and
camera removed) and embedding throughput in crops/s (batches of --batch-size, after one warm-up batch),
also as a ratio to the handcrafted descriptor. Writes the table as JSON with --out.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from reid.data.datasets import build_dataset
from reid.data.image_io import read_image
from reid.evaluation.distance import compute_distance_matrix
from reid.evaluation.rank import evaluate_rank
from reid.extraction import FeatureExtractor
from reid.models import build_model
from reid.models.checkpoint import read_checkpoint
from reid.utils.io import atomic_write_json
from reid.video.embedder import HANDCRAFTED, Embedder, ModelEmbedder, build_embedder, embedder_path

logger = logging.getLogger("benchmark_embedders")

EMBEDDERS = (HANDCRAFTED, "imagenet", "model")


def imagenet_embedder(weights: str, like: str) -> Embedder:
    """MobileNetV2 with ImageNet weights and no re-ID training, at the input size of the model ``like``."""
    config = read_checkpoint(embedder_path(like))["config"]
    model_cfg = {**config["model"], "pretrained": weights, "frozen_stages": 0}
    model = build_model(model_cfg, num_classes=1)
    model.set_retrieval_feat("before_bn")  # the pooled trunk feature: the untrained BNNeck is not part of it
    data = config["data"]
    extractor = FeatureExtractor.from_module(
        model,
        input_size=(int(data["height"]), int(data["width"])),
        mean=data["pixel_mean"],
        std=data["pixel_std"],
        model_name=f"{model_cfg['backbone']}-imagenet",
        normalize=False,
    )
    return ModelEmbedder(extractor)


def embed(embedder: Embedder, paths: list[str], batch_size: int, desc: str) -> tuple[np.ndarray, float]:
    """Features of the images at ``paths`` and the crops/s of the embedder alone (decoding not timed)."""
    features, seconds, timed = [], 0.0, 0
    for index, start in enumerate(tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch")):
        crops = [cv2.cvtColor(read_image(p), cv2.COLOR_RGB2BGR) for p in paths[start : start + batch_size]]
        began = time.perf_counter()
        features.append(np.asarray(embedder(crops), dtype=np.float32))
        if index:  # the first batch warms up (allocations, lazy initialisation)
            seconds += time.perf_counter() - began
            timed += len(crops)
    return np.concatenate(features), timed / seconds if seconds else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="cuhk03")
    parser.add_argument("--root", required=True, help="dataset root")
    parser.add_argument("--boxes", nargs="+", default=["labeled", "detected"],
                        help="CUHK03 box types to score, one block of rows each ('none': other datasets)")
    parser.add_argument("--embedders", nargs="+", choices=EMBEDDERS, default=list(EMBEDDERS))
    parser.add_argument("--checkpoint", default="default", help="the re-ID model for 'model'")
    parser.add_argument("--imagenet-weights", default="../shared/weights/mobilenetv2_imagenet_dsr.pt")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    builders = {
        HANDCRAFTED: lambda: build_embedder(HANDCRAFTED),
        "imagenet": lambda: imagenet_embedder(args.imagenet_weights, args.checkpoint),
        "model": lambda: build_embedder(args.checkpoint),
    }
    try:
        embedders = {name: builders[name]() for name in args.embedders}
        rows = []
        for boxes in args.boxes:
            kwargs = {} if boxes == "none" else {"boxes": boxes}
            dataset = build_dataset(args.dataset, args.root, **kwargs)
            for name, embedder in embedders.items():
                query, q_speed = embed(embedder, [r.path for r in dataset.query], args.batch_size,
                                       f"{name} query")
                gallery, g_speed = embed(embedder, [r.path for r in dataset.gallery], args.batch_size,
                                         f"{name} gallery")
                images = len(query) + len(gallery)
                result = evaluate_rank(
                    compute_distance_matrix(query, gallery, "cosine"),
                    np.array([r.pid for r in dataset.query]), np.array([r.pid for r in dataset.gallery]),
                    np.array([r.camid for r in dataset.query]), np.array([r.camid for r in dataset.gallery]),
                )
                rows.append({
                    "boxes": boxes, "embedder": name, "model_name": embedder.model_name,
                    "queries": len(query), "gallery": len(gallery),
                    "rank1": 100 * float(result["cmc"][0]), "mAP": 100 * float(result["mAP"]),
                    "mINP": 100 * float(result["mINP"]),
                    "crops_per_s": (len(query) * q_speed + len(gallery) * g_speed) / images,
                })  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        print(f"benchmark_embedders: {exc}", file=sys.stderr)
        return 2
    base = {r["boxes"]: r["crops_per_s"] for r in rows if r["embedder"] == HANDCRAFTED}
    print(f"{args.dataset} ({args.root}); {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, batch {args.batch_size}")
    print("| boxes | embedder | Rank-1 | mAP | mINP | crops/s | vs handcrafted |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["crops_per_s"] / base[r["boxes"]] if r["boxes"] in base else float("nan")
        print(f"| {r['boxes']} | {r['embedder']} | {r['rank1']:.1f} | {r['mAP']:.1f} | {r['mINP']:.1f} "
              f"| {r['crops_per_s']:.0f} | {ratio:.2f}x |")
    if args.out:
        atomic_write_json(Path(args.out), {"dataset": args.dataset, "root": args.root, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
