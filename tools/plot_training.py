#!/usr/bin/env python
"""Plot training curves from runs' ``metrics.jsonl``, e.g. the class adversary's accuracy against chance.

    python tools/plot_training.py runs/ablation/cuhk03_e3/E/seed*/ --metrics acc_adv acc_id --out adv.png

The adversary tries to tell the training identities apart from the features behind the gradient reversal;
the extractor is pushed to defeat it. An adversary accuracy near chance (1 / number of training identities,
drawn as a dotted line) means the reversal does its job; one that climbs with the ID accuracy means the
features stay class-separable to it. Step-level points come from records of ``solver.log_period``; runs
without them are drawn per epoch. The chance level is read from the run's ``last.pt`` (``num_classes``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reid.engine.metrics_log import read_metrics
from reid.models.checkpoint import CheckpointError, read_checkpoint


def curve(records: list[dict], metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``metric``: the step-window records if the run has them, else the epoch ones."""
    partial = [r for r in records if r.get("partial") and metric in r]
    chosen = partial or [r for r in records if not r.get("partial") and metric in r]
    return [int(r["step"]) for r in chosen], [float(r[metric]) for r in chosen]


def num_classes(run: Path) -> int | None:
    for name in ("last.pt", "best.pt"):
        if (run / name).is_file():
            return int(read_checkpoint(run / name).get("num_classes") or 0) or None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.jsonl")
    parser.add_argument("--metrics", nargs="+", default=["acc_adv", "acc_id"], help="keys to plot")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from reid.utils.io import atomic_save_figure

        figure, axes = plt.subplots(1, len(args.metrics), figsize=(5 * len(args.metrics), 3.6), squeeze=False)
        drawn = 0
        chance = set()
        for run in args.runs:
            records = read_metrics(run / "metrics.jsonl")
            if not records:
                raise ValueError(
                    f"{run / 'metrics.jsonl'}: missing or empty (is {run} a training run folder?)"
                )
            classes = num_classes(run)
            if classes:
                chance.add(1.0 / classes)
            for axis, metric in zip(axes[0], args.metrics, strict=True):
                steps, values = curve(records, metric)
                if steps:
                    axis.plot(steps, values, marker="." if len(steps) < 20 else None, label=str(run))
                    drawn += 1
        if not drawn:
            raise ValueError(f"none of the runs logged {', '.join(args.metrics)}")
        for axis, metric in zip(axes[0], args.metrics, strict=True):
            for level in sorted(chance):
                if metric.startswith("acc"):
                    axis.axhline(level, linestyle=":", color="grey", label=f"chance {level:.4f}")
            axis.set_xlabel("step")
            axis.set_title(metric)
            axis.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        figure.tight_layout()
        atomic_save_figure(figure, args.out, dpi=110)
        plt.close(figure)
    except (OSError, ValueError, CheckpointError) as err:
        print(f"plot_training: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
