"""Benchmark of the evaluation code against a plain baseline measured in the same run.

Section ``eval``: ``reid.evaluation.evaluate_rank`` versus a straightforward numpy implementation that
fully argsorts every row and walks the queries one by one (the approach of the usual Cython/numpy
evaluators), on a seeded Market-1501-sized random problem (3368 x 15913, 750 identities, 6 cameras, 2793
pid-0 distractors). Prints both times, their ratio, the ratio against the fast-reid Cython figure quoted
for this machine (not measured here), whether the numbers agree, and peak memory. Section ``rerank`` runs
``tools/benchmark_rerank.py`` (k-reciprocal re-ranking against the all-pairs distance floor and a
torchreid-style dense pipeline). Timings on a shared machine are noisy; compare
ratios from the same run only.

    python tools/benchmark_eval.py                      # Market-sized
    python tools/benchmark_eval.py --num-query 50 --num-gallery 400 --num-ids 20 --num-distractors 20
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reid.evaluation import evaluate_rank

# fast-reid's Cython evaluate_rank on this problem size as quoted for this machine type (not measured here)
FASTREID_CYTHON_SECONDS = 2.7


def make_market_like_problem(
    num_query: int,
    num_gallery: int,
    num_ids: int,
    num_cams: int,
    num_distractors: int,
    seed: int,
    match_scale: float = 0.002,
) -> tuple[np.ndarray, ...]:
    """Uniform random distances, true matches scaled by ``match_scale`` towards 0 (a mAP of roughly 40%,
    like a weak model); about 14 valid matches per query at the Market-1501 sizes."""
    rng = np.random.default_rng(seed)
    g_pids = np.concatenate(
        [
            rng.integers(1, num_ids + 1, num_gallery - num_distractors),
            np.zeros(num_distractors, dtype=np.int64),
        ]
    )
    g_camids = rng.integers(0, num_cams, num_gallery)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    q_camids = rng.integers(0, num_cams, num_query)
    distmat = rng.random((num_query, num_gallery), dtype=np.float32)
    distmat[q_pids[:, None] == g_pids[None, :]] *= np.float32(match_scale)
    return distmat, q_pids, g_pids, q_camids, g_camids


def baseline_evaluate(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int,
) -> dict[str, Any]:
    """Full stable argsort of every row, then one query at a time: the textbook implementation."""
    order = np.argsort(distmat, axis=1, kind="stable")
    cmc_sum = np.zeros(max_rank)
    aps, inps = [], []
    for q in range(distmat.shape[0]):
        ranked = order[q]
        keep = ~((g_pids[ranked] == q_pids[q]) & (g_camids[ranked] == q_camids[q]))
        hits = (g_pids[ranked] == q_pids[q])[keep]
        positions = np.flatnonzero(hits) + 1  # 1-based ranks of the true matches
        if positions.size == 0:
            continue
        if positions[0] <= max_rank:
            cmc_sum[positions[0] - 1 :] += 1
        aps.append(np.mean(np.arange(1, positions.size + 1) / positions))
        inps.append(positions.size / positions[-1])
    return {"cmc": cmc_sum / len(aps), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


def best_time(function: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Fastest wall time of ``repeats`` runs, the CPU time of that run, and the last result.

    CPU time (all threads of the process) is far less sensitive than wall time to other processes on a
    shared machine; for single-threaded code it is what the wall time would be on an idle machine.
    """
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if wall < best_wall:
            best_wall, best_cpu = wall, cpu
    return best_wall, best_cpu, result


def traced_peak_mib(function: Callable[[], Any]) -> float:
    """Peak of Python/numpy allocations during one call (tracemalloc), in MiB."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run_eval_section(args: argparse.Namespace) -> None:
    problem = make_market_like_problem(
        args.num_query,
        args.num_gallery,
        args.num_ids,
        args.num_cams,
        args.num_distractors,
        args.seed,
        args.match_scale,
    )
    distmat = problem[0]
    print(
        f"[eval] problem: {distmat.shape[0]} queries x {distmat.shape[1]} gallery, float32 "
        f"({distmat.nbytes / 2**20:.0f} MiB), {args.num_ids} ids, {args.num_cams} cameras, seed {args.seed}"
    )

    def ours() -> dict[str, Any]:
        return evaluate_rank(*problem, max_rank=args.max_rank, chunk_size=args.chunk_size)

    def baseline() -> dict[str, Any]:
        return baseline_evaluate(*problem, max_rank=args.max_rank)

    ours_time, ours_cpu, ours_result = best_time(ours, args.repeats)
    baseline_time, baseline_cpu, baseline_result = best_time(baseline, args.baseline_repeats)
    differences = {
        "cmc": float(np.max(np.abs(ours_result["cmc"] - baseline_result["cmc"]))),
        "mAP": abs(ours_result["mAP"] - baseline_result["mAP"]),
        "mINP": abs(ours_result["mINP"] - baseline_result["mINP"]),
    }
    equal = max(differences.values()) <= 1e-6
    print(f"[eval] evaluate_rank   : wall {ours_time:7.3f} s, CPU {ours_cpu:7.3f} s (best of {args.repeats})")
    print(
        f"[eval] argsort baseline: wall {baseline_time:7.3f} s, CPU {baseline_cpu:7.3f} s "
        f"(best of {args.baseline_repeats})"
    )
    print(
        f"[eval] speed-up vs baseline measured now: wall {baseline_time / ours_time:.1f}x, "
        f"CPU {baseline_cpu / ours_cpu:.1f}x"
    )
    print(
        f"[eval] speed-up vs quoted fast-reid Cython {FASTREID_CYTHON_SECONDS} s (not measured in this run): "
        f"wall {FASTREID_CYTHON_SECONDS / ours_time:.1f}x, CPU {FASTREID_CYTHON_SECONDS / ours_cpu:.1f}x"
    )
    print(
        f"[eval] mAP {ours_result['mAP']:.6f} vs {baseline_result['mAP']:.6f}, Rank-1 "
        f"{ours_result['cmc'][0]:.6f} vs {baseline_result['cmc'][0]:.6f}; max abs differences "
        + ", ".join(f"{k} {v:.1e}" for k, v in differences.items())
        + f" -> {'EQUAL' if equal else 'DIFFERENT'} (tolerance 1e-6)"
    )
    if not args.skip_memory:
        print(
            f"[eval] peak traced allocations: evaluate_rank {traced_peak_mib(ours):.0f} MiB, "
            f"baseline {traced_peak_mib(baseline):.0f} MiB (distance matrix itself: "
            f"{distmat.nbytes / 2**20:.0f} MiB, allocated before tracing)"
        )
    if not equal:
        raise SystemExit("evaluate_rank and the baseline disagree")


def run_rerank_section(args: argparse.Namespace) -> None:
    """Re-ranking figures come from tools/benchmark_rerank.py, which isolates each contender in a subprocess
    so that peak memory is measured per contender; run it and stream its report."""
    script = Path(__file__).with_name("benchmark_rerank.py")
    command = [sys.executable, str(script), "--size", args.rerank_size, "--seed", str(args.seed)]
    print(f"[rerank] {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "eval": run_eval_section,
    "rerank": run_rerank_section,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--section", choices=[*SECTIONS, "all"], default="all")
    parser.add_argument("--num-query", type=int, default=3368)
    parser.add_argument("--num-gallery", type=int, default=15913)
    parser.add_argument("--num-ids", type=int, default=750)
    parser.add_argument("--num-cams", type=int, default=6)
    parser.add_argument("--num-distractors", type=int, default=2793)
    parser.add_argument("--max-rank", type=int, default=50)
    parser.add_argument("--chunk-size", type=int, default=None, help="query rows per chunk (default: auto)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--skip-memory", action="store_true", help="skip the (slower) tracemalloc pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rerank-size",
        choices=["small", "market1501", "msmt17"],
        default="market1501",
        help="problem size of the re-ranking section (msmt17 takes many minutes)",
    )
    parser.add_argument("--match-scale", type=float, default=0.002, help="true-match distance shrink factor")
    args = parser.parse_args(argv)
    if min(args.repeats, args.baseline_repeats, args.num_query, args.num_ids, args.num_cams) < 1:
        parser.error("--repeats, --baseline-repeats, --num-query, --num-ids and --num-cams must be >= 1")
    if not 0 <= args.num_distractors < args.num_gallery:
        parser.error("--num-distractors must be in [0, --num-gallery)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name, section in SECTIONS.items():
        if args.section in (name, "all"):
            section(args)
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
