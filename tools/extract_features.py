#!/usr/bin/env python
"""Write re-ID features of a query and a gallery as the feature file ``tools/test_reid.py --features`` reads.

    python tools/extract_features.py --query q_dir --gallery g_dir --out feats.npz
    python tools/extract_features.py --model runs/m/best.pt --dataset market1501 --root data/market1501 \
        --out feats.npz
    python tools/test_reid.py --features feats.npz --output reports/m

``--model``: ``default`` (the shipped model), a ``.pt`` checkpoint or an exported ``.onnx``. Folders are read
non-recursively, images sorted by name. Identities and cameras come from the file names when every name of a
split follows one known convention (Market-1501 ``0002_c1s1_000451_03.jpg``, DukeMTMC-reID
``0005_c2_f0046985.jpg``, CUHK03 ``0001_07.jpg``); otherwise they are written as -1 and the tool says so.
With ``--dataset``, the dataset's reader gives them. Features are L2-normalised unless ``--raw``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from reid.shipped import DEFAULT_MODEL

logger = logging.getLogger("extract_features")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="'default', a .pt checkpoint or an .onnx model"
    )
    parser.add_argument("--query", type=Path, help="folder of query images")
    parser.add_argument("--gallery", type=Path, help="folder of gallery images")
    parser.add_argument(
        "--dataset", help="read query and gallery with this dataset's reader (e.g. market1501)"
    )
    parser.add_argument("--root", help="the dataset's root folder (with --dataset)")
    parser.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. boxes=both",
    )
    parser.add_argument("--out", type=Path, required=True, help=".npz feature file to write")
    parser.add_argument(
        "--flip", action="store_true", help="average each image with its mirror (test-time aug.)"
    )
    parser.add_argument("--raw", action="store_true", help="keep the raw features (no L2 normalisation)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda'...")
    args = parser.parse_args(argv)
    if args.dataset is None and (args.query is None or args.gallery is None):
        parser.error("give --query and --gallery folders, or --dataset NAME --root R")
    if args.dataset is not None and (args.query is not None or args.gallery is not None):
        parser.error("--dataset reads query and gallery itself: drop --query / --gallery")
    if args.dataset is not None and args.root is None:
        parser.error("--dataset needs --root")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def labelled_splits(args: argparse.Namespace) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    """Paths, pids and camids of the query and the gallery."""
    from reid.data.datasets import build_dataset
    from reid.data.datasets.registry import labels_from_names, parse_reader_options
    from reid.extraction import collect_images

    if args.dataset is not None:
        dataset = build_dataset(args.dataset, args.root, **parse_reader_options(args.dataset_option))
        return {
            split: (
                [r.path for r in records],
                np.asarray([r.pid for r in records], dtype=np.int64),
                np.asarray([r.camid for r in records], dtype=np.int64),
            )
            for split, records in (("query", dataset.query), ("gallery", dataset.gallery))
        }
    splits = {}
    for split, folder in (("query", args.query), ("gallery", args.gallery)):
        if not folder.is_dir():
            raise FileNotFoundError(f"--{split} {folder}: not a folder")
        paths = [str(p) for p in collect_images(folder)]  # as FeatureExtractor reads a folder
        pids, camids, convention = labels_from_names(paths)
        if convention is None:
            print(
                f"note: the {split} names follow no known dataset convention: pids and camids are written as "
                "-1 (fine for search; test_reid.py needs real ones)",
                file=sys.stderr,
            )
        else:
            logger.info("%s: identities and cameras read from %s-style names", split, convention)
        splits[split] = (paths, pids, camids)
    return splits


def run(args: argparse.Namespace) -> int:
    from reid.evaluation.features_file import FeatureSet, save_features
    from reid.extraction import FeatureExtractor

    splits = labelled_splits(args)
    extractor = FeatureExtractor(
        args.model, device=args.device, batch_size=args.batch_size, flip=args.flip, normalize=not args.raw
    )
    logger.info("%r", extractor)
    features = {split: extractor(paths) for split, (paths, _, _) in splits.items()}
    (q_paths, q_pids, q_camids), (g_paths, g_pids, g_camids) = splits["query"], splits["gallery"]
    save_features(
        args.out,
        FeatureSet.from_arrays(
            features["query"], q_pids, q_camids, features["gallery"], g_pids, g_camids, q_paths, g_paths
        ),
    )
    print(
        f"wrote {args.out}: {len(q_paths)} query and {len(g_paths)} gallery features of dimension "
        f"{extractor.feature_dim} ({extractor.model_name}, {extractor.runtime})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (OSError, ValueError, ImportError) as err:  # bad input: one line, no traceback
        print(f"extract_features: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
