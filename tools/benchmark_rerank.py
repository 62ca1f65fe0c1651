"""Benchmark k-reciprocal re-ranking: time and peak memory against the all-pairs floor and torchreid's way.

Features are synthetic but clustered (identities with Gaussian noise) and seeded. Each contender runs in its
own subprocess that loads the features from disk and reports its wall time and the increase of its peak RSS
(``ru_maxrss``) over the RSS it had after loading, so the numbers are comparable:

* ``floor``: computing the full N x N squared-distance matrix with torch, block by block (N^2 d multiply-adds;
  blocks are discarded, so this is the arithmetic alone);
* ``sparse``: ``re_ranking(features[:Q], features[Q:], method="sparse")``, features to the Q x G result;
* ``baseline``: q-q, q-g and g-g distance matrices, then dense float32 numpy re-ranking with a full argsort
  and dense V / V_qe, the way torchreid's ``re_ranking`` does it. Its time and memory grow with N^2, so by
  default it runs at ``--baseline-nodes`` nodes and is extrapolated to the full size (printed as such).

Timings on a shared machine are noisy: compare the ratios, which come from the same run.

    python tools/benchmark_rerank.py --size market1501
    python tools/benchmark_rerank.py --size msmt17 --skip-baseline --out-dir /tmp/rerank   # minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reid.evaluation.rerank import re_ranking

logger = logging.getLogger(__name__)

SIZES = {"market1501": (3368, 15913, 751), "msmt17": (11659, 82161, 3060), "small": (500, 2500, 150)}


def clustered_features(
    num_nodes: int, dim: int, num_ids: int, seed: int, separation: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Identity centres (std ``separation``) plus unit-variance noise, float32, made in batches.

    At d = 2048 and separation 0.25, neighbour lists mix identities as with real features (N = 6000: mAP 0.26
    plain, 0.67 re-ranked); at 1.0 every identity is perfectly separated.
    """
    rng = np.random.default_rng(seed)
    pids = rng.integers(0, num_ids, size=num_nodes)
    centres = separation * rng.standard_normal((num_ids, dim), dtype=np.float32)
    features = np.empty((num_nodes, dim), dtype=np.float32)
    for start in range(0, num_nodes, 4096):
        batch = pids[start : start + 4096]
        features[start : start + 4096] = centres[batch] + rng.standard_normal(
            (len(batch), dim), dtype=np.float32
        )
    return features, pids


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (
        torch.addmm((b * b).sum(1)[None, :], a, b.T, alpha=-2.0).add_((a * a).sum(1)[:, None]).clamp_(min=0)
    )


def run_floor(features: np.ndarray, num_query: int) -> None:
    x = torch.from_numpy(features)
    norms = (x * x).sum(1)
    rows = 1024
    block = torch.empty(rows, len(x))
    for start in range(0, len(x), rows):
        part = x[start : start + rows]
        torch.addmm(norms[None, :], part, x.T, alpha=-2.0, out=block[: len(part)])
        block[: len(part)].add_(norms[start : start + rows, None]).clamp_(min=0)


def run_baseline(
    features: np.ndarray, num_query: int, k1: int = 20, k2: int = 6, lam: float = 0.3
) -> np.ndarray:
    """torchreid-style: three distance matrices, then dense float32 arrays of N x N throughout."""
    x = torch.from_numpy(features)
    query, gallery = x[:num_query], x[num_query:]
    q_g = squared_distances(query, gallery).numpy()
    q_q = squared_distances(query, query).numpy()
    g_g = squared_distances(gallery, gallery).numpy()
    original = np.concatenate(
        [np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0
    )
    del q_q, g_g
    num_nodes = original.shape[0]
    original = np.transpose(original / np.max(original, axis=0))
    encoding = np.zeros_like(original)
    initial_rank = np.argsort(original).astype(np.int32)
    half = int(np.around(k1 / 2)) + 1
    for i in range(num_nodes):
        forward = initial_rank[i, : k1 + 1]
        reciprocal = forward[np.where(initial_rank[forward, : k1 + 1] == i)[0]]
        expansion = reciprocal
        for candidate in reciprocal:
            c_forward = initial_rank[candidate, :half]
            c_reciprocal = c_forward[np.where(initial_rank[c_forward, :half] == candidate)[0]]
            if len(np.intersect1d(c_reciprocal, reciprocal)) > 2 / 3 * len(c_reciprocal):
                expansion = np.append(expansion, c_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        encoding[i, expansion] = weight / np.sum(weight)
    original = original[:num_query]
    expanded = np.zeros_like(encoding)
    for i in range(num_nodes):
        expanded[i] = np.mean(encoding[initial_rank[i, :k2]], axis=0)
    encoding = expanded
    del expanded, initial_rank
    inverted = [np.where(encoding[:, j] != 0)[0] for j in range(num_nodes)]
    jaccard = np.zeros_like(original)
    for i in range(num_query):
        shared = np.zeros(num_nodes, dtype=np.float32)
        columns = np.where(encoding[i] != 0)[0]
        for j in columns:
            shared[inverted[j]] += np.minimum(encoding[i, j], encoding[inverted[j], j])
        jaccard[i] = 1 - shared / (2 - shared)
    return (jaccard * (1 - lam) + original * lam)[:, num_query:]


def child(args: argparse.Namespace) -> None:
    """Run one contender and print a JSON line with its wall time and peak-RSS increase."""
    features = np.load(args.features)
    if args.nodes:
        keep_query = round(args.nodes * args.num_query / len(features))
        features = np.concatenate(
            [features[:keep_query], features[args.num_query : args.num_query + args.nodes - keep_query]]
        )
        num_query = keep_query
    else:
        num_query = args.num_query
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out, out_bytes = None, 0
    if args.run == "sparse" and args.out_dir:
        out_path = Path(args.out_dir) / "reranked.npy"
        out = np.lib.format.open_memmap(
            out_path, mode="w+", dtype=np.float32, shape=(num_query, len(features) - num_query)
        )
        out_bytes = out.nbytes
    start = time.perf_counter()
    if args.run == "floor":
        run_floor(features, num_query)
        result = None
    elif args.run == "baseline":
        result = run_baseline(features, num_query)
    else:
        result = re_ranking(
            features[:num_query], features[num_query:], method="sparse", out=out, device="cpu"
        )  # the floor and the baseline run on the CPU too
        out_bytes = result.nbytes
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    if args.save_result and result is not None:
        np.save(args.save_result, result)
    print(
        json.dumps(
            {
                "run": args.run,
                "nodes": len(features),
                "seconds": seconds,
                "peak_bytes": peak,
                "out_bytes": out_bytes,
            }
        )
    )


def launch(run: str, args: argparse.Namespace, features_path: Path, **extra) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        run,
        "--features",
        str(features_path),
        "--num-query",
        str(args.num_query),
    ]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    logger.info("running %s", " ".join(command[2:]))
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="market1501")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--separation", type=float, default=0.25, help="std of identity centres (noise std 1)"
    )
    parser.add_argument("--baseline-nodes", type=int, default=6000, help="0: run the baseline at full size")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out-dir", help="write the sparse result into an np.memmap here instead of RAM")
    parser.add_argument("--child", choices=["floor", "sparse", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--num-query", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--save-result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.run = args.child
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    num_query, num_gallery, num_ids = SIZES[args.size]
    args.num_query = num_query
    num_nodes = num_query + num_gallery
    with tempfile.TemporaryDirectory() as tmp:
        features_path = Path(tmp) / "features.npy"
        features, _ = clustered_features(num_nodes, args.dim, num_ids, args.seed, args.separation)
        np.save(features_path, features)
        del features
        logger.info(
            "%s-sized problem: Q=%d G=%d d=%d, %d identities, %d threads",
            args.size,
            num_query,
            num_gallery,
            args.dim,
            num_ids,
            torch.get_num_threads(),
        )
        results = {"floor": launch("floor", args, features_path)}
        extra = {"out_dir": args.out_dir} if args.out_dir else {}
        results["sparse"] = launch("sparse", args, features_path, **extra)
        if not args.skip_baseline:
            nodes = args.baseline_nodes if 0 < args.baseline_nodes < num_nodes else 0
            baseline = launch("baseline", args, features_path, **({"nodes": nodes} if nodes else {}))
            if nodes:
                scale = (num_nodes / nodes) ** 2
                baseline.update(
                    seconds=baseline["seconds"] * scale,
                    peak_bytes=baseline["peak_bytes"] * scale,
                    measured_at=nodes,
                )
            results["baseline"] = baseline
    floor, sparse = results["floor"], results["sparse"]
    print(f"\nN={num_nodes} (Q={num_query}, G={num_gallery}), d={args.dim}; noisy timings (shared machine)")
    print(f"{'contender':<12}{'seconds':>10}{'peak GB':>10}")
    for name, result in results.items():
        note = f"  (extrapolated ~N^2 from N={result['measured_at']})" if "measured_at" in result else ""
        print(f"{name:<12}{result['seconds']:>10.1f}{result['peak_bytes'] / 1e9:>10.2f}{note}")
    print(f"sparse / floor time: {sparse['seconds'] / floor['seconds']:.2f} (target <= 1.5)")
    excluding = (sparse["peak_bytes"] - sparse["out_bytes"]) / 1e9
    print(f"sparse peak excluding its {sparse['out_bytes'] / 1e9:.2f} GB output: {excluding:.2f} GB")
    if "baseline" in results:
        baseline = results["baseline"]
        print(f"baseline / sparse time: {baseline['seconds'] / sparse['seconds']:.1f}x (target >= 4)")
        memory_ratio = sparse["peak_bytes"] / baseline["peak_bytes"]
        print(f"sparse / baseline peak memory: {memory_ratio:.3f} (target <= 0.1)")


if __name__ == "__main__":
    main()
