#!/usr/bin/env python
"""Train (or evaluate) a re-ID model from a YAML config.

    python tools/train_reid.py --config configs/market1501/framework.yml
    python tools/train_reid.py --config configs/synthetic.yml --config configs/ablation/D.yml seed=1
    python tools/train_reid.py --config configs/synthetic.yml --output runs/x --resume        # runs/x/last.pt
    python tools/train_reid.py --config configs/synthetic.yml --eval-only runs/x/best.pt test.flip=true
    torchrun --nproc_per_node 4 tools/train_reid.py --config configs/market1501/framework.yml

Several ``--config`` files compose left to right; ``KEY=VALUE`` overrides (dotted keys) come last. The
run folder (``--output``, else the config's ``output_dir``) receives config.yaml, train.log, metrics.jsonl,
last.pt, best.pt and results.json. ``--eval-only`` writes its own folder (``--output``, else
``eval-<time>/`` beside the checkpoint) and refuses one that holds a training run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from reid.engine.launch import compose_config, evaluate_checkpoint, train
from reid.engine.trainer import TrainingDivergedError

logger = logging.getLogger("train_reid")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", action="append", required=True, help="YAML config (repeat to compose; later wins)"
    )
    parser.add_argument("--output", help="run folder (default: the config's output_dir)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CKPT",
        help="continue training from CKPT (default: <run folder>/last.pt)",
    )
    parser.add_argument(
        "--force-resume", action="store_true", help="resume even if the checkpoint's config differs"
    )
    parser.add_argument(
        "--eval-only", metavar="CKPT", help="evaluate CKPT on the config's dataset, no training"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. seed=1")
    return parser.parse_args(argv)


TRAINING_OUTPUTS = ("last.pt", "best.pt", "metrics.jsonl")


def evaluation_folder(checkpoint: str, output: str | None) -> Path:
    """Where ``--eval-only`` writes: never a training run's folder, whose results and config it would lose."""
    folder = Path(output) if output else Path(checkpoint).parent / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    found = [name for name in TRAINING_OUTPUTS if (folder / name).exists()]
    if found:
        raise ValueError(
            f"--eval-only: {folder} holds a training run ({', '.join(found)}); an evaluation would overwrite "
            "its results.json, config.yaml and train.log. Give --output a new folder (default: eval-<time>/ "
            "beside the checkpoint)"
        )
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    is_main = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = compose_config(args.config, args.overrides)
        if args.eval_only:
            eval_dir = evaluation_folder(args.eval_only, args.output)
            cfg["output_dir"] = str(eval_dir)
            evaluate_checkpoint(cfg, args.eval_only, eval_dir)
            return 0
        if args.output:
            cfg["output_dir"] = args.output
        run_dir = Path(cfg["output_dir"])
        resume = None
        if args.resume is not None:
            resume = Path(args.resume) if args.resume else run_dir / "last.pt"
            if not resume.is_file():
                raise FileNotFoundError(f"--resume: checkpoint {resume} does not exist")
        elif (run_dir / "last.pt").exists() and is_main:
            logger.warning("%s already holds a run; starting over (use --resume to continue it)", run_dir)
        train(cfg, run_dir, resume=resume, force_resume=args.force_resume)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    except TrainingDivergedError:
        return 1  # the trainer has logged the one-line reason (console and train.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
