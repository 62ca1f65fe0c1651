#!/usr/bin/env python
"""Calibrate the gallery's match threshold from labelled data (same-person vs different-people distances).

    # from a feature file written by tools/test_reid.py
    python tools/calibrate_threshold.py --features feats.npz --target fpr=0.01
    # from a dataset folder, embedded with the gallery's embedder, storing the result into the gallery
    python tools/calibrate_threshold.py --dataset-root data/market1501 --gallery runs/demo/gallery --store
    # a model's video gates, from held-out identities, written into the model file
    python tools/calibrate_threshold.py --dataset cuhk03 --dataset-root ../shared/data/cuhk03 \
        --dataset-option boxes=both --checkpoint runs/m/model.pt --write-thresholds

Prints the threshold with its false-merge (FPR) and false-split (FNR) rates and the equal error rate, and
writes ``threshold.json`` and ``distance_histogram.png`` into --output. With --dataset-root it also derives
the embedder's appearance thresholds for video (tracker, stitching, new-gallery match threshold; see
reid.video.separability.image_set_thresholds); --write-thresholds stores them in the checkpoint, where
tools/demo_video.py reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from reid.models.checkpoint import read_checkpoint
from reid.shipped import SHIPPED_CHECKPOINT, SHIPPED_ONNX
from reid.utils.io import atomic_torch_save, atomic_write_json
from reid.video.embedder import (
    HANDCRAFTED,
    add_embedder_arguments,
    build_embedder,
    embedder_choice,
    embedder_path,
)
from reid.video.separability import AppearanceThresholds, image_set_thresholds
from reid.video.tracking import TrackerConfig

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
    parser.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option for --dataset (repeatable), e.g. boxes=both for cuhk03",
    )
    add_embedder_arguments(parser, purpose="to embed --dataset-root with")
    parser.add_argument(
        "--write-thresholds",
        action="store_true",
        help="store the derived video appearance thresholds in --checkpoint (atomic rewrite)",
    )
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
    if args.write_thresholds and (not args.dataset_root or args.embedder == HANDCRAFTED):
        parser.error("--write-thresholds needs --dataset-root and a --checkpoint file to write into")
    if args.write_thresholds and str(args.checkpoint).lower().endswith(".onnx"):
        parser.error("--write-thresholds writes into a .pt checkpoint: calibrate that one, then re-export it "
                     "with tools/export_onnx.py")  # fmt: skip
    if args.store and args.features and not args.model_name:
        parser.error("--features --store needs --model-name (the model that wrote the features) to check it "
                     "against the gallery's")  # fmt: skip
    return args


def write_thresholds(checkpoint: str, thresholds: AppearanceThresholds) -> None:
    """Rewrite ``checkpoint`` with ``appearance_thresholds`` added (weights untouched, so its model name)."""
    ckpt = read_checkpoint(checkpoint)
    ckpt["appearance_thresholds"] = dataclasses.asdict(thresholds)
    atomic_torch_save(ckpt, checkpoint)


def load_feature_file(path: str) -> tuple[LabelledSet, LabelledSet]:
    """Query and gallery sets of a tools/test_reid.py feature file."""
    fs = load_features(path)
    query = (fs.query_features, fs.query_pids, fs.query_camids)
    return query, (fs.gallery_features, fs.gallery_pids, fs.gallery_camids)


def embed_dataset(args: argparse.Namespace, embedder) -> tuple[LabelledSet, LabelledSet]:
    """Embed a random subset (at most --max-images per split) of a dataset's query and gallery images."""
    from reid.data.datasets import build_dataset
    from reid.data.datasets.registry import parse_reader_options

    dataset = build_dataset(args.dataset, args.dataset_root, **parse_reader_options(args.dataset_option))
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


def _check_store_target(args: argparse.Namespace, meta, model_name: str, feature_dim: int) -> None:
    """With --store, refuse a gallery of another model or dimension before anything is written."""
    if not args.store or meta is None:
        return
    if meta.model_name != model_name or meta.feature_dim != feature_dim:
        raise ValueError(f"--store: gallery {args.gallery} was built with {meta.model_name} (dim "
                         f"{meta.feature_dim}), not {model_name} (dim {feature_dim}); nothing was written")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    meta = GalleryStore.read_meta(args.gallery) if args.gallery else None
    metric = args.metric or (meta.metric if meta else "cosine")
    if meta and metric != meta.metric:
        raise SystemExit(f"error: --metric {metric} differs from the gallery's metric {meta.metric}")
    if args.features:
        (query, gallery), model_name = load_feature_file(args.features), args.model_name
        _check_store_target(args, meta, model_name, query[0].shape[1])
    else:
        embedder = build_embedder(embedder_choice(args), device=args.device)
        _check_store_target(args, meta, embedder.model_name, embedder.feature_dim)  # before embedding
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
    if args.dataset_root:
        features = np.concatenate([query[0], gallery[0]])
        thresholds = image_set_thresholds(
            features,
            np.concatenate([query[1], gallery[1]]),
            np.concatenate([query[2], gallery[2]]),
            momentum=TrackerConfig().feature_momentum,
        )
        print(f"appearance thresholds for {model_name}: {dataclasses.asdict(thresholds)}")
        atomic_write_json(
            output / "appearance_thresholds.json",
            {"model_name": model_name, "dataset": args.dataset, **dataclasses.asdict(thresholds)},
        )
        if args.write_thresholds:
            target = embedder_path(args.checkpoint)
            write_thresholds(target, thresholds)
            print(f"wrote them into {target}")
            if target == SHIPPED_CHECKPOINT:
                print(f"the ONNX copy the video tools run keeps the old ones until re-exported: python "
                      f"tools/export_onnx.py {target} --out {SHIPPED_ONNX}")  # fmt: skip
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
