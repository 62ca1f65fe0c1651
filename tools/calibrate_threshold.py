#!/usr/bin/env python
"""Calibrate the gallery's match threshold from labelled data (same-person vs different-people distances).

    # from a feature file written by tools/test_reid.py
    python tools/calibrate_threshold.py --features feats.npz --target fpr=0.01
    # from a dataset folder, embedded with the gallery's embedder, storing the result into the gallery
    python tools/calibrate_threshold.py --dataset-root data/market1501 --gallery runs/demo/gallery --store

Prints the threshold with its false-merge (FPR) and false-split (FNR) rates and the equal error rate, and
writes ``threshold.json`` and ``distance_histogram.png`` into --output.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from reid.data.image_io import read_image
from reid.evaluation.features_file import load_features
from reid.gallery import GalleryError, GalleryStore, calibrate_threshold
from reid.gallery.calibration import labelled_pair_distances, plot_distance_histograms
from reid.gallery.metric import METRICS
from reid.utils.io import atomic_write_json
from reid.video.embedder import build_embedder

logger = logging.getLogger("calibrate_threshold")

LabelledSet = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, pids, camids


def parse_target(text: str) -> str | tuple[str, float]:
    if text == "eer":
        return "eer"
    if text.startswith("fpr="):
        try:
            return ("fpr", float(text[4:]))
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"--target must be 'eer' or 'fpr=RATE' (e.g. fpr=0.01), got {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help=".npz feature file (query/gallery features, pids, camids)")
    source.add_argument("--dataset-root", help="dataset folder to embed (query and gallery splits)")
    parser.add_argument("--dataset", default="market1501", help="dataset layout for --dataset-root")
    parser.add_argument("--checkpoint", help="re-ID checkpoint for --dataset-root (default: handcrafted)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--max-images", type=int, default=4000, help="images embedded per split (random, seeded)"
    )
    parser.add_argument("--target", type=parse_target, default="eer", help="'eer' (default) or 'fpr=RATE'")
    parser.add_argument("--metric", choices=METRICS, help="default: the gallery's metric, else cosine")
    parser.add_argument("--max-negatives", type=int, default=200_000, help="negative pairs sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gallery", help="gallery whose metric to use and, with --store, to update")
    parser.add_argument("--store", action="store_true", help="save the threshold into --gallery's metadata")
    parser.add_argument("--model-name", help="with --features --store: the model that wrote the features")
    parser.add_argument("--output", default="runs/calibration", help="folder for threshold.json and the PNG")
    args = parser.parse_args(argv)
    if args.store and not args.gallery:
        parser.error("--store needs --gallery")
    if args.store and args.features and not args.model_name:
        parser.error("--features --store needs --model-name (the model that wrote the features) to check it "
                     "against the gallery's")  # fmt: skip
    return args


def load_feature_file(path: str) -> tuple[LabelledSet, LabelledSet]:
    """Query and gallery sets of a tools/test_reid.py feature file."""
    fs = load_features(path)
    query = (fs.query_features, fs.query_pids, fs.query_camids)
    return query, (fs.gallery_features, fs.gallery_pids, fs.gallery_camids)


def embed_dataset(args: argparse.Namespace, embedder) -> tuple[LabelledSet, LabelledSet]:
    """Embed a random subset (at most --max-images per split) of a dataset's query and gallery images."""
    from reid.data.datasets import build_dataset

    dataset = build_dataset(args.dataset, args.dataset_root)
    rng = np.random.default_rng(args.seed)
    sets = []
    for split_name, records in (("query", dataset.query), ("gallery", dataset.gallery)):
        if not records:
            raise ValueError(f"{args.dataset_root}: the {split_name} split is empty")
        chosen = sorted(rng.choice(len(records), size=min(len(records), args.max_images), replace=False))
        feats = []
        for start in tqdm(range(0, len(chosen), 64), desc=f"embedding {split_name}", unit="batch"):
            batch = [records[i] for i in chosen[start : start + 64]]
            crops = [cv2.cvtColor(read_image(r.path), cv2.COLOR_RGB2BGR) for r in batch]
            feats.append(np.asarray(embedder(crops), dtype=np.float32))
        pids = np.array([records[i].pid for i in chosen])
        camids = np.array([records[i].camid for i in chosen])
        sets.append((np.concatenate(feats), pids, camids))
    return sets[0], sets[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    meta = GalleryStore.read_meta(args.gallery) if args.gallery else None
    metric = args.metric or (meta.metric if meta else "cosine")
    if meta and metric != meta.metric:
        raise SystemExit(f"error: --metric {metric} differs from the gallery's metric {meta.metric}")
    if args.features:
        (query, gallery), model_name = load_feature_file(args.features), args.model_name
    else:
        embedder = build_embedder(checkpoint=args.checkpoint, device=args.device)
        (query, gallery), model_name = embed_dataset(args, embedder), embedder.model_name
    pos, neg = labelled_pair_distances(
        *query, *gallery, metric=metric, max_negatives=args.max_negatives, seed=args.seed
    )
    report = calibrate_threshold(pos, neg, target=args.target)
    print(report.summary())
    output = Path(args.output)
    atomic_write_json(
        output / "threshold.json", {**report.to_dict(), "metric": metric, "model_name": model_name}
    )
    plot_distance_histograms(pos, neg, report, output / "distance_histogram.png", title=f"{metric} distances")
    print(f"wrote {output / 'threshold.json'} and {output / 'distance_histogram.png'}")
    if args.store:
        with GalleryStore.open(
            args.gallery, model_name=model_name, feature_dim=query[0].shape[1], metric=metric, create=False
        ) as store:
            previous = store.match_threshold
            store.set_match_threshold(report.threshold)
        print(f"gallery {args.gallery}: match threshold {previous:.4f} -> {report.threshold:.4f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (GalleryError, OSError, ValueError) as exc:  # bad input: one clear line, not a traceback
        sys.exit(f"error: {exc}")
