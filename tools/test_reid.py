"""Evaluate re-ID features and write a report (results.json, results.md, cmc.png, ranked_list.png).

From a feature file written by ``reid.evaluation.features_file.save_features``::

    python tools/test_reid.py --features feats.npz --output reports/run1 --rerank --worst-first

From a checkpoint (features are extracted, then saved as OUTPUT/features.npz for later reruns)::

    python tools/test_reid.py --checkpoint runs/x/best.pt --output reports/run1 [--config cfg.yml]
        [--dataset market1501 --root data/market1501] [--flip]

The dataset defaults to the one in the checkpoint's config; ``--config`` or ``--dataset/--root`` override it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reid.evaluation.features_file import FeatureSet, load_features
from reid.evaluation.rank import AP_MODES
from reid.evaluation.report import (
    EvaluationSettings,
    RerankSettings,
    describe,
    evaluate_features,
    write_report,
)

logger = logging.getLogger("test_reid")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", type=Path, help=".npz feature file (query/gallery features and labels)")
    source.add_argument("--checkpoint", type=Path, help="model checkpoint to extract features with")
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        help="report folder (created, or replaced whole when it holds an earlier report)",
    )
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    parser.add_argument("--max-rank", type=int, default=50, help="length of the CMC curve")
    parser.add_argument("--ap-mode", choices=AP_MODES, default="noninterpolated")
    parser.add_argument(
        "--junk-pids", type=int, nargs="*", default=[], help="gallery pids to ignore, e.g. -1 for Market junk"
    )
    rerank = parser.add_argument_group("re-ranking")
    rerank.add_argument("--rerank", action="store_true", help="also report k-reciprocal re-ranking")
    rerank.add_argument("--k1", type=int, default=20)
    rerank.add_argument("--k2", type=int, default=6)
    rerank.add_argument("--lambda-value", type=float, default=0.3)
    visual = parser.add_argument_group("ranked list")
    visual.add_argument("--worst-first", action="store_true", help="show the queries with the lowest AP")
    visual.add_argument("--num-queries", type=int, default=10)
    visual.add_argument("--topk", type=int, default=10)
    model = parser.add_argument_group("checkpoint mode")
    model.add_argument("--config", type=Path, help="YAML config whose data section names the dataset")
    model.add_argument("--dataset", help="dataset name (overrides the config)")
    model.add_argument("--root", help="dataset root folder (overrides the config)")
    model.add_argument("--flip", action="store_true", help="average features of the image and its mirror")
    model.add_argument("--batch-size", type=int, default=128)
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    args = parser.parse_args(argv)
    for name in ("max_rank", "num_queries", "topk", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    return args


def features_from_checkpoint(args: argparse.Namespace) -> tuple[FeatureSet, dict[str, Any]]:
    """Load the retrieval model and extract query/gallery features of the configured dataset."""
    from reid.engine.trainer import load_dataset
    from reid.evaluation.distance import resolve_device
    from reid.extraction import extract_features
    from reid.models import load_retrieval_model

    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: file not found: {args.checkpoint}")
    device = resolve_device(args.device)
    model, info = load_retrieval_model(args.checkpoint, device=device)
    data_cfg = dict(info["config"].get("data", {}))
    if args.config is not None:
        from reid.config.loader import load_config

        data_cfg = dict(load_config(args.config)["data"])
    name, root = args.dataset or data_cfg.get("name"), args.root or data_cfg.get("root")
    if not name or not root:
        raise ValueError(
            "checkpoint mode needs a dataset: give --dataset NAME --root DIR or --config FILE "
            "(the checkpoint's config has no data.name/data.root)"
        )
    # The trainer's reader (data.custom / data.cuhk03 / data.synthetic options included) and its feature.
    dataset = load_dataset({"data": {**data_cfg, "name": name, "root": root}})
    feat = (info["config"].get("test") or {}).get("feat", "after_bn")
    options = dict(
        feat=feat,
        input_size=tuple(info["input_size"]),
        mean=info["mean"],
        std=info["std"],
        batch_size=args.batch_size,
        flip=args.flip,
        device=device,
    )
    fields: dict[str, Any] = {}
    for split in ("query", "gallery"):
        records = getattr(dataset, split)
        fields[f"{split}_features"] = extract_features(model, records, **options)
        fields[f"{split}_pids"] = [r.pid for r in records]
        fields[f"{split}_camids"] = [r.camid for r in records]
        fields[f"{split}_paths"] = [str(r.path) for r in records]
    features = FeatureSet(**fields)
    source = {"checkpoint": str(args.checkpoint), "dataset": name, "root": str(root), "flip": args.flip,
              "feat": feat}
    return features, source


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (OSError, ValueError, KeyError) as exc:  # bad input: one clear line (a traceback with --debug)
        if args.debug:
            raise
        message = str(exc) if not isinstance(exc, KeyError) else f"missing field {exc}"
        print(f"test_reid: error: {message}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.features is not None:
        features = load_features(args.features)
        source: dict[str, Any] = {"features": str(args.features)}
    else:
        features, source = features_from_checkpoint(args)
    settings = EvaluationSettings(
        metric=args.metric,
        max_rank=args.max_rank,
        ap_mode=args.ap_mode,
        junk_pids=tuple(args.junk_pids),
        rerank=RerankSettings(args.k1, args.k2, args.lambda_value) if args.rerank else None,
        source=source,
    )
    outcome = evaluate_features(features, settings, device=args.device)
    write_report(
        args.output,
        outcome,
        features,
        worst_first=args.worst_first,
        num_queries=args.num_queries,
        topk=args.topk,
        # the folder is replaced whole: keep a feature file that was read from it
        include_features=args.features is None or args.features.resolve().parent == args.output.resolve(),
    )
    for line in describe(outcome):
        logger.info(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
