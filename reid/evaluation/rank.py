"""Exact CMC, mAP and mINP for re-ID retrieval, vectorised and chunked over queries.

Protocol (Market-1501 / torchreid / fast-reid convention):

* For each query, gallery entries with the query's pid AND the query's camera are removed. Gallery entries
  whose pid is in ``junk_pids`` (e.g. ``[-1]`` for Market-1501's junk images) are removed too, as in the
  original Market-1501 Matlab code. Every other gallery pid, pid 0 distractors included, is an ordinary
  identity.
* True matches are the remaining entries with the query's pid; a query without any is skipped and counted in
  ``num_skipped_queries``.
* Gallery entries are ranked by ascending distance; exact ties are broken by gallery index (the order of a
  stable argsort), so the result never depends on the sorting algorithm.

Metrics, with r_1 < ... < r_K the 1-based ranks of the K true matches of a query:

* CMC[k] = fraction of valid queries with r_1 <= k + 1. The curve always has ``max_rank`` entries; when the
  gallery is shorter than ``max_rank`` it simply saturates (every valid query is found by rank G).
* AP, ``ap_mode="noninterpolated"`` (torchreid / fast-reid / BoT): mean over matches of the precision at
  each match, (1/K) * sum_i i / r_i.
* AP, ``ap_mode="trapezoidal"`` (original Market-1501 Matlab ``compute_AP``): each recall step 1/K is weighted
  by the mean of the precision just before the match, (i - 1) / (r_i - 1) (1 when r_i = 1), and at it,
  i / r_i.
* INP = K / r_K (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021);
  mINP is its mean over valid queries.

Why it is fast: no argsort. Excluded entries are set to +inf so they sort last, each row's *values* are
sorted (numpy's SIMD sort), and the rank of each true match is found by a binary search of its distance in the
sorted row. Entries tied with a match are resolved exactly afterwards (only those few matches are
re-examined).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from .input_checks import EvaluationInputError, check_retrieval_inputs, check_valid_queries

AP_MODES = ("noninterpolated", "trapezoidal")
# Elements of the distance matrix handled per chunk: a few tens of MB of temporaries, which keeps memory
# bounded and the working set cache-friendly (measured faster than whole-matrix passes).
DEFAULT_CHUNK_ELEMENTS = 1 << 22
MAX_DEFAULT_THREADS = 4


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    *,
    ap_mode: str = "noninterpolated",
    junk_pids: Iterable[int] | None = None,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Score a query x gallery distance matrix (smaller = more similar); see the module docstring.

    ``chunk_size`` is the number of query rows processed at once (default: about 4M matrix elements);
    ``num_threads`` chunks are processed concurrently (default: the number of CPUs, at most 4).
    Returns ``cmc`` (float64 array of length ``max_rank``), ``mAP``, ``mINP`` (floats in [0, 1]),
    ``num_valid_queries``, ``num_skipped_queries``, per-query ``AP`` and ``INP`` (NaN for skipped queries) and
    ``first_match_rank`` (1-based rank of the first true match, 0 for skipped queries).
    """
    if ap_mode not in AP_MODES:
        raise EvaluationInputError(f"ap_mode: expected one of {AP_MODES}, got {ap_mode!r}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, int | np.integer) or max_rank < 1:
        raise EvaluationInputError(f"max_rank: expected a positive integer, got {max_rank!r}")
    if num_threads is not None and num_threads < 1:
        raise EvaluationInputError(f"num_threads: expected a positive integer, got {num_threads!r}")
    if chunk_size is not None and chunk_size < 1:
        raise EvaluationInputError(
            f"chunk_size: expected a positive number of query rows, got {chunk_size!r}"
        )
    dist, q_pids, g_pids, q_camids, g_camids = check_retrieval_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids
    )
    num_query, num_gallery = dist.shape
    gallery = _GalleryIndex.build(g_pids, g_camids, junk_pids)
    rows_per_chunk = chunk_size or max(1, DEFAULT_CHUNK_ELEMENTS // num_gallery)

    first_rank = np.zeros(num_query, dtype=np.int64)
    average_precision = np.full(num_query, np.nan)
    inverse_negative_penalty = np.full(num_query, np.nan)
    starts = range(0, num_query, rows_per_chunk)

    def score_chunk(start: int) -> None:
        chunk = slice(start, min(start + rows_per_chunk, num_query))
        rows, ranks = _true_match_ranks(dist[chunk], q_pids[chunk], q_camids[chunk], gallery)
        first_rank[chunk], average_precision[chunk], inverse_negative_penalty[chunk] = _query_metrics(
            rows, ranks, chunk.stop - chunk.start, ap_mode
        )

    # Chunks write disjoint slices; numpy releases the GIL while sorting, so threads scale over cores.
    workers = num_threads or min(MAX_DEFAULT_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(score_chunk, starts)
        for _ in tqdm(done, total=len(starts), desc="evaluate_rank", unit="chunk", leave=False, disable=None):
            pass

    valid = first_rank > 0
    num_valid = int(valid.sum())
    check_valid_queries(num_valid, q_pids, g_pids, q_camids, g_camids)
    hits_at_rank = np.bincount(np.minimum(first_rank[valid], max_rank + 1) - 1, minlength=max_rank + 1)
    cmc = np.cumsum(hits_at_rank[:max_rank]) / num_valid
    return {
        "cmc": cmc.astype(np.float64),
        "mAP": float(average_precision[valid].mean()),
        "mINP": float(inverse_negative_penalty[valid].mean()),
        "num_valid_queries": num_valid,
        "num_skipped_queries": num_query - num_valid,
        "AP": average_precision,
        "INP": inverse_negative_penalty,
        "first_match_rank": first_rank,
    }


def ranked_gallery(
    distances: Any,
    q_pid: int,
    q_camid: int,
    g_pids: Any,
    g_camids: Any,
    topk: int,
    *,
    junk_pids: Iterable[int] | None = None,
) -> np.ndarray:
    """Gallery indices of one query's top-``topk`` list exactly as ``evaluate_rank`` ranks them.

    Same pid + same camera entries and junk pids are left out; ties are broken by gallery index.
    """
    g_pids = np.asarray(g_pids, dtype=np.int64)
    gallery = _GalleryIndex.build(g_pids, np.asarray(g_camids, dtype=np.int64), junk_pids)
    excluded = gallery.excluded_mask(np.array([q_pid]), np.array([q_camid]))[0]
    order = np.argsort(np.asarray(distances), kind="stable")
    return order[~excluded[order]][:topk]


@dataclass(frozen=True)
class _GalleryIndex:
    """Gallery labels grouped by pid.

    The (query, gallery) pairs sharing a pid are then listed without building a query x gallery mask: a
    handful of pairs per query instead of millions of comparisons.
    """

    pids: np.ndarray
    camids: np.ndarray
    junk: np.ndarray  # bool per gallery entry: pid listed in junk_pids
    order: np.ndarray  # gallery indices sorted by pid (stable)
    group_pids: np.ndarray
    group_starts: np.ndarray
    group_sizes: np.ndarray

    @classmethod
    def build(cls, pids: np.ndarray, camids: np.ndarray, junk_pids: Iterable[int] | None) -> _GalleryIndex:
        junk_list = np.fromiter(junk_pids if junk_pids is not None else (), dtype=np.int64)
        order = np.argsort(pids, kind="stable")
        group_pids, group_starts, group_sizes = np.unique(pids[order], return_index=True, return_counts=True)
        return cls(pids, camids, np.isin(pids, junk_list), order, group_pids, group_starts, group_sizes)

    def same_pid_pairs(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, gallery column) of every pair with equal pids, grouped by row."""
        group = np.minimum(np.searchsorted(self.group_pids, q_pids), self.group_pids.size - 1)
        sizes = np.where(self.group_pids[group] == q_pids, self.group_sizes[group], 0)
        rows = np.repeat(np.arange(q_pids.size), sizes)
        offset_in_group = np.arange(rows.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        cols = self.order[np.repeat(self.group_starts[group], sizes) + offset_in_group]
        return rows, cols

    def excluded_mask(self, q_pids: np.ndarray, q_camids: np.ndarray) -> np.ndarray:
        """Dense (len(q_pids) x G) mask of removed entries, for the few queries that need one."""
        same_pid = q_pids[:, None] == self.pids[None, :]
        return (same_pid & (q_camids[:, None] == self.camids[None, :])) | self.junk[None, :]


def _true_match_ranks(
    dist: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, gallery: _GalleryIndex
) -> tuple[np.ndarray, np.ndarray]:
    """Row index and 1-based rank of every true match of a chunk of queries, sorted by (row, rank)."""
    rows, cols = gallery.same_pid_pairs(q_pids)
    same_cam = gallery.camids[cols] == q_camids[rows]
    # Removed entries become +inf so that they sort after every (finite) distance and are never counted.
    sorted_valid = np.where(gallery.junk[None, :], np.inf, dist) if gallery.junk.any() else dist.copy()
    sorted_valid[rows[same_cam], cols[same_cam]] = np.inf
    sorted_valid.sort(axis=1)

    is_match = ~same_cam & ~gallery.junk[cols]
    rows, cols = rows[is_match], cols[is_match]
    values = dist[rows, cols]
    below = np.empty(rows.size, dtype=np.int64)  # valid entries strictly closer than each match
    bounds = np.searchsorted(rows, np.arange(dist.shape[0] + 1))
    for row in np.flatnonzero(np.diff(bounds)):
        segment = slice(bounds[row], bounds[row + 1])
        below[segment] = np.searchsorted(sorted_valid[row], values[segment], side="left")

    # sorted_valid[row, below] is the first entry equal to the match's distance; another equal one follows iff
    # the distance is tied with some other valid entry.
    next_position = below + 1
    tied = np.flatnonzero(next_position < dist.shape[1])
    tied = tied[sorted_valid[rows[tied], next_position[tied]] == values[tied]]
    ranks = below + 1
    if tied.size:
        ranks[tied] += _earlier_ties(dist, rows[tied], cols[tied], values[tied], q_pids, q_camids, gallery)
    order = np.lexsort((ranks, rows))
    return rows[order], ranks[order]


def _earlier_ties(
    dist: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    gallery: _GalleryIndex,
) -> np.ndarray:
    """Per (row, col) match: valid entries of its row with the same distance and a smaller gallery index."""
    num_gallery = dist.shape[1]
    gallery_index = np.arange(num_gallery)
    batch = max(1, DEFAULT_CHUNK_ELEMENTS // num_gallery)
    counts = np.empty(rows.size, dtype=np.int64)
    for start in range(0, rows.size, batch):
        part = slice(start, start + batch)
        r = rows[part]
        earlier_equal = (dist[r] == values[part, None]) & (gallery_index[None, :] < cols[part, None])
        earlier_equal &= ~gallery.excluded_mask(q_pids[r], q_camids[r])
        counts[part] = earlier_equal.sum(axis=1)
    return counts


def _query_metrics(
    rows: np.ndarray, ranks: np.ndarray, num_rows: int, ap_mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-match rank (0 if none), AP and INP (NaN if none) per query from its sorted match ranks."""
    first_rank = np.zeros(num_rows, dtype=np.int64)
    average_precision = np.full(num_rows, np.nan)
    inverse_negative_penalty = np.full(num_rows, np.nan)
    if rows.size == 0:
        return first_rank, average_precision, inverse_negative_penalty
    num_matches = np.bincount(rows, minlength=num_rows)
    has_match = num_matches > 0
    row_start = np.cumsum(num_matches) - num_matches
    match_number = np.arange(rows.size) - row_start[rows] + 1  # i in 1..K within each query
    precision = match_number / ranks
    if ap_mode == "trapezoidal":
        precision_before = np.where(ranks > 1, (match_number - 1) / np.maximum(ranks - 1, 1), 1.0)
        precision = (precision_before + precision) / 2
    precision_sum = np.bincount(rows, weights=precision, minlength=num_rows)
    first_rank[has_match] = ranks[row_start[has_match]]
    average_precision[has_match] = precision_sum[has_match] / num_matches[has_match]
    last_rank = ranks[row_start[has_match] + num_matches[has_match] - 1]
    inverse_negative_penalty[has_match] = num_matches[has_match] / last_rank
    return first_rank, average_precision, inverse_negative_penalty
