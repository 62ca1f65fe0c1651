#!/usr/bin/env python
"""Run ablation rows x seeds and write one comparison table (method.md 4.6).

    python tools/ablate.py --base configs/synthetic.yml --rows A B C D --seeds 0 1 2 --output runs/ablation
    python tools/ablate.py --base configs/market1501/baseline.yml --rows A B B0 C C0 D --seeds 0 1 2 \\
        --output runs/ablation/market1501

A row is a name under configs/ablation/ (``D`` -> configs/ablation/D.yml) or a path to a YAML overlay; it is
composed over the ``--base`` config(s), then ``seed=<seed>`` and any ``KEY=VALUE`` overrides. Runs go
sequentially to ``<output>/<row>/seed<seed>``; a run that already has results.json is skipped (and one with
only last.pt is resumed), so an interrupted ablation continues where it stopped.

The table (``summary.md``, ``summary.csv``, ``summary.json``, written atomically) gives per row the mean and
sample standard deviation over seeds of Rank-1, mAP and mINP on the unseen test identities and of the
seen-identity Rank-1/mAP (training images), whose gap to the unseen figures measures over-fitting.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

from reid.engine.launch import compose_config, train
from reid.utils.io import atomic_write_json, atomic_write_text

logger = logging.getLogger("ablate")

ROWS_DIR = Path(__file__).resolve().parent.parent / "configs" / "ablation"
METRICS = ("rank1", "mAP", "mINP", "seen_ids_rank1", "seen_ids_mAP")


def resolve_row(row: str) -> tuple[str, Path]:
    """(row name, overlay file) for a row name under configs/ablation/ or a path to a YAML file."""
    path = Path(row)
    if path.suffix in (".yml", ".yaml"):
        if not path.is_file():
            raise FileNotFoundError(f"Ablation row file not found: {path}")
        return path.stem, path
    candidate = ROWS_DIR / f"{row}.yml"
    if not candidate.is_file():
        known = sorted(p.stem for p in ROWS_DIR.glob("*.yml"))
        raise FileNotFoundError(f"Unknown ablation row {row!r}: no {candidate}; known rows: {known}")
    return row, candidate


def run_grid(
    base: list[str], rows: list[str], seeds: list[int], output: Path, overrides: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Train every (row, seed) not finished yet; returns per row the results of its finished seeds."""
    resolved = [resolve_row(row) for row in rows]
    results: dict[str, list[dict[str, Any]]] = {}
    failures = []
    for name, overlay in resolved:
        results[name] = []
        for seed in seeds:
            run_dir = output / name / f"seed{seed}"
            done = run_dir / "results.json"
            if done.is_file():
                logger.info("%s seed %d: finished earlier, skipped", name, seed)
            else:
                logger.info("%s seed %d: training into %s", name, seed, run_dir)
                cfg = compose_config(
                    [*base, str(overlay)], [*overrides, f"seed={seed}", f"output_dir={run_dir}"]
                )
                resume = run_dir / "last.pt" if (run_dir / "last.pt").is_file() else None
                try:
                    train(cfg, run_dir, resume=resume)
                except (ValueError, RuntimeError, FileNotFoundError, FloatingPointError) as exc:
                    logger.error("%s seed %d failed: %s", name, seed, exc)
                    failures.append(f"{name}/seed{seed}: {exc}")
                    continue
            record = json.loads(done.read_text(encoding="utf-8"))
            results[name].append({"seed": seed, **{k: record.get(k) for k in METRICS}})
    if failures:
        logger.error("%d run(s) failed:\n  %s", len(failures), "\n  ".join(failures))
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per ablation row: seeds, mean/std (in %) of each metric and the train-test Rank-1 gap."""
    table = []
    for name, runs in results.items():
        row: dict[str, Any] = {"row": name, "seeds": len(runs)}
        for metric in METRICS:
            mean, std = _mean_std([100 * r[metric] if r[metric] is not None else None for r in runs])
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        row["gap_rank1"] = row["seen_ids_rank1_mean"] - row["rank1_mean"]
        table.append(row)
    return table


def to_markdown(table: list[dict[str, Any]]) -> str:
    header = (
        "| row | seeds | Rank-1 (unseen ids) | mAP (unseen ids) | mINP (unseen ids) | Rank-1 (seen ids) "
        "| mAP (seen ids) | Rank-1 gap |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in table:
        cells = [f"{row[f'{m}_mean']:.1f} ± {row[f'{m}_std']:.1f}" for m in METRICS]
        lines.append(
            f"| {row['row']} | {row['seeds']} | " + " | ".join(cells) + f" | {row['gap_rank1']:.1f} |"
        )
    note = (
        "\nValues in %, mean ± sample standard deviation over seeds. Seen ids: training images of training "
        "identities; gap = seen-id Rank-1 - unseen-id Rank-1.\n"
    )
    return header + "\n".join(lines) + "\n" + note


def to_csv(table: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]) if table else ["row"])
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def write_summary(results: dict[str, list[dict[str, Any]]], output: Path) -> str:
    table = summarise(results)
    markdown = to_markdown(table)
    atomic_write_text(output / "summary.md", markdown)
    atomic_write_text(output / "summary.csv", to_csv(table))
    atomic_write_json(output / "summary.json", {"table": table, "runs": results})
    return markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", action="append", required=True, help="dataset config (repeat to compose)")
    parser.add_argument("--rows", nargs="+", default=["A", "B", "C", "D"], help="row names or YAML overlays")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output", required=True, type=Path, help="folder for the runs and the summary")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        results = run_grid(args.base, args.rows, args.seeds, args.output, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    print(write_summary(results, args.output))
    complete = all(len(runs) == len(args.seeds) for runs in results.values())
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
