"""Scalable k-reciprocal re-ranking: the result of the dense algorithm without any N x N array.

One chunked pass over the upper half of the (symmetric) distance matrix yields everything the algorithm
needs: each node's neighbour list (stable top-k instead of a full argsort), a small cache of its nearest
distances, and the query-to-gallery distances, written straight into the output. The encoding V is a CSR
matrix with a few times k1 non-zeros per row; the Jaccard term is computed for query rows only, chunk by
chunk, through the inverted index of V.
Peak memory beyond the output is a few strips of ``chunk_size x N`` floats plus O(N * k1^2) integers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from reid.evaluation.rerank_distances import (
    DistanceStrip,
    duplicate_labels,
    normalise_rows,
    order_by_value_then_index,
    pair_distances,
    squared_distance_rows,
    squared_norms,
    stable_smallest,
    upper_distance_strips,
)

logger = logging.getLogger(__name__)

#: Nodes per batch when building expansion sets (the batch's temporary is ``batch x (k1+1)^2 x k1/2`` bools).
EXPANSION_BATCH = 2048
#: Neighbours kept per node with their distances, in units of k1 + 1: most expansion members are among them.
CACHE_WIDTH_FACTOR = 2
#: Columns per slice when merging a whole transposed block (bounds the copy ``topk`` makes of it).
DENSE_MERGE_COLUMNS = 4096
#: Upper bounds for one Jaccard chunk: (query, gallery, shared column) triples and dense accumulator cells.
JACCARD_PAIR_BUDGET = 1_000_000
JACCARD_CELL_BUDGET = 4_000_000


@dataclass(frozen=True)
class NeighbourScan:
    """What the single pass over the distance matrix keeps: neighbour lists and a cache of their distances."""

    neighbours: np.ndarray  # N x W int32, sorted by (distance, index); exact for the first K columns
    distances: np.ndarray  # N x W float32, the normalised distances of ``neighbours``
    row_max: torch.Tensor  # N raw row maxima (on the compute device), to normalise recomputed distances
    norms: torch.Tensor  # N squared feature norms (on the compute device)
    labels: torch.Tensor | None  # duplicate groups, see ``duplicate_labels``


class RunningSmallest:
    """The ``width`` smallest raw distances seen so far for every node, merged strip by strip.

    Each merge keeps the ``width`` smallest of (kept so far, new candidates), so after all strips every entry
    left out is at least as large as every entry kept; ties at the boundary are kept arbitrarily, which
    :func:`scan_neighbours` checks for afterwards.
    """

    def __init__(self, num_nodes: int, width: int, device: torch.device) -> None:
        self.width = width
        self.values = torch.full((num_nodes, width), torch.inf, device=device)
        self.indices = torch.zeros((num_nodes, width), dtype=torch.long, device=device)

    def merge_rows(self, nodes: slice, block: torch.Tensor, candidate_offset: int) -> None:
        """Merge ``block[i, c]``: distance of node ``nodes.start + i`` to node ``candidate_offset + c``."""
        candidates = torch.topk(block, min(self.width, block.shape[1]), dim=1, largest=False, sorted=False)
        self._keep_smallest(nodes, candidates.values, candidates.indices.add_(candidate_offset))

    def merge_columns(self, nodes: slice, block: torch.Tensor, candidate_offset: int) -> None:
        """Merge ``block[c, i]``: the distance of node ``nodes.start + i`` to node ``candidate_offset + c``.

        ``topk`` along the columns of a row-major block is several times slower than along its rows, and
        once the lists have filled only a few entries per column beat a node's current ``width``-th smallest
        value: those are gathered and merged. A dense merge serves when many entries pass (the first strip).
        """
        passing = block < self.values[nodes].amax(dim=1)
        num_passing = int(passing.count_nonzero())
        if num_passing > self.width * block.shape[1]:
            for start in range(0, block.shape[1], DENSE_MERGE_COLUMNS):  # topk copies a transposed block
                columns = slice(start, min(start + DENSE_MERGE_COLUMNS, block.shape[1]))
                part = slice(nodes.start + columns.start, nodes.start + columns.stop)
                self.merge_rows(part, block[:, columns].T, candidate_offset)
            return
        if num_passing == 0:
            return
        candidates, columns = torch.nonzero(passing, as_tuple=True)
        order = torch.argsort(columns, stable=True)
        candidates, columns = candidates[order], columns[order]
        hit, counts = torch.unique_consecutive(columns, return_counts=True)
        which = torch.repeat_interleave(torch.arange(len(hit), device=block.device), counts)
        slot = torch.arange(num_passing, device=block.device) - (torch.cumsum(counts, 0) - counts)[which]
        values = torch.full((len(hit), int(counts.max())), torch.inf, device=block.device)
        indices = torch.zeros(values.shape, dtype=torch.long, device=block.device)
        values[which, slot] = block[candidates, columns]
        indices[which, slot] = candidates + candidate_offset
        self._keep_smallest(hit + nodes.start, values, indices)

    def _keep_smallest(
        self, nodes: slice | torch.Tensor, values: torch.Tensor, indices: torch.Tensor
    ) -> None:
        values = torch.cat([self.values[nodes], values], dim=1)
        indices = torch.cat([self.indices[nodes], indices], dim=1)
        best = torch.topk(values, self.width, dim=1, largest=False, sorted=False).indices
        self.values[nodes] = values.gather(1, best)
        self.indices[nodes] = indices.gather(1, best)


def _write_query_rows(
    strip: DistanceStrip, num_query: int, row_max: torch.Tensor, lambda_value: float, out: np.ndarray
) -> None:
    """Write ``lambda * d + (1 - lambda)`` for the strip's query rows (their row maxima are final by now)."""
    stop = min(strip.stop, num_query)
    blended = strip.values[: stop - strip.start, num_query - strip.start :]
    normalise_rows(blended, row_max[strip.start : stop]).mul_(lambda_value).add_(1.0 - lambda_value)
    out[strip.start : stop] = blended.cpu().numpy()


def scan_neighbours(
    features: torch.Tensor,
    num_query: int,
    list_length: int,
    cache_width: int,
    chunk_size: int,
    lambda_value: float,
    out: np.ndarray,
) -> NeighbourScan:
    """Stable top-``list_length`` neighbour lists of all nodes, in one pass over half the distance matrix.

    Each strip ``d[start:stop, start:]`` serves its own rows and, transposed, the rows of the nodes after it,
    so every distance is computed once; row maxima are gathered the same way. Query rows come first, so a
    query row's maximum is final once its own strip is done: ``lambda * d + (1 - lambda)`` is then written
    into ``out`` for its gallery columns, the final distance for pairs with an empty Jaccard overlap (J = 1),
    which :func:`blend_jaccard` corrects where it is not.
    """
    num_nodes = features.shape[0]
    width = min(max(cache_width, list_length + 1), num_nodes)
    norms, labels = squared_norms(features), duplicate_labels(features)
    smallest = RunningSmallest(num_nodes, width, features.device)
    row_max = torch.zeros(num_nodes, dtype=features.dtype, device=features.device)
    with tqdm(total=num_nodes, desc="re-ranking: neighbours", unit="node", leave=False) as progress:
        for strip in upper_distance_strips(features, chunk_size, norms, labels):
            own, later = slice(strip.start, strip.stop), slice(strip.stop, num_nodes)
            later_rows = strip.values[:, strip.stop - strip.start :]  # distances to the later nodes
            torch.maximum(row_max[own], strip.values.amax(dim=1), out=row_max[own])
            smallest.merge_rows(own, strip.values, strip.start)
            if later_rows.shape[1]:
                torch.maximum(row_max[later], later_rows.amax(dim=0), out=row_max[later])
                smallest.merge_columns(later, later_rows, strip.start)
            if strip.start < num_query:
                _write_query_rows(strip, num_query, row_max, lambda_value, out)
            progress.update(strip.stop - strip.start)
            del strip, later_rows  # before the generator computes the next strip
    values, indices = _ordered_lists(smallest, row_max, features, norms, labels, list_length, chunk_size)
    return NeighbourScan(indices.to(torch.int32).cpu().numpy(), values.cpu().numpy(), row_max, norms, labels)


def _ordered_lists(
    smallest: RunningSmallest,
    row_max: torch.Tensor,
    features: torch.Tensor,
    norms: torch.Tensor,
    labels: torch.Tensor | None,
    list_length: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise the kept distances and sort them by (value, index); the first ``list_length`` are exact.

    Candidates were chosen on raw distances, ordered here on normalised ones (the division may create new
    ties). If a run of equal values reaches the end of the window, a tied node with a smaller index may have
    been left out: such rows (in practice only large groups of duplicates or integer-valued features, whose
    distances are exact in any summation order) are recomputed in full and sorted stably.
    """
    width, num_nodes = smallest.width, features.shape[0]
    values, indices = order_by_value_then_index(normalise_rows(smallest.values, row_max), smallest.indices)
    if width < num_nodes:
        tied = torch.nonzero(values[:, width - 1] == values[:, list_length - 1]).flatten()
        logger.debug("re-ranking: %d neighbour lists recomputed for ties at the window end", tied.numel())
        for rows in tied.split(chunk_size):
            block = normalise_rows(squared_distance_rows(features, norms, labels, rows, 0), row_max[rows])
            values[rows], indices[rows] = stable_smallest(block, width, list_length)
    return values, indices


def _reciprocal_mask(neighbours: np.ndarray, list_length: int, batch: slice) -> np.ndarray:
    """mask[i, j]: is node i in the top-``list_length`` list of its j-th neighbour (nodes in ``batch``)?"""
    forward = neighbours[batch, :list_length]
    nodes = np.arange(batch.start, batch.start + len(forward))
    return (neighbours[forward, :list_length] == nodes[:, None, None]).any(axis=2)


def expansion_sets(neighbours: np.ndarray, k1: int) -> sp.csr_matrix:
    """Boolean CSR ``E`` with ``E[i, j]`` set iff j is in the expanded k-reciprocal set of node i.

    Vectorised over nodes: R(i, k1) from the top-(k1+1) lists, then each candidate's R(c, round(k1/2)) is
    added when more than 2/3 of it lies in R(i, k1), exactly as in the per-node formulation.
    """
    num_nodes = neighbours.shape[0]
    k1_length = min(k1 + 1, num_nodes)
    half_length = min(int(np.around(k1 / 2)) + 1, num_nodes)
    half_mask = np.concatenate(
        [
            _reciprocal_mask(neighbours, half_length, slice(s, min(s + EXPANSION_BATCH, num_nodes)))
            for s in range(0, num_nodes, EXPANSION_BATCH)
        ]
    )
    keys = []
    for start in range(0, num_nodes, EXPANSION_BATCH):
        batch = slice(start, min(start + EXPANSION_BATCH, num_nodes))
        forward = neighbours[batch, :k1_length]  # B x K1
        in_reciprocal = _reciprocal_mask(neighbours, k1_length, batch)  # B x K1
        candidates = neighbours[forward, :half_length]  # B x K1 x H: R(c, k1/2) before masking
        candidate_mask = half_mask[forward]  # B x K1 x H
        matches = (candidates[..., None] == forward[:, None, None, :]) & in_reciprocal[:, None, None, :]
        overlap = (matches.any(axis=3) & candidate_mask).sum(axis=2)  # |R(c, k1/2) & R(i, k1)|
        keep = in_reciprocal & (3 * overlap > 2 * candidate_mask.sum(axis=2))
        rows = np.arange(batch.start, batch.stop, dtype=np.int64)
        members = np.concatenate(
            [
                (rows[:, None] * num_nodes + forward)[in_reciprocal],
                (rows[:, None, None] * num_nodes + candidates)[keep[..., None] & candidate_mask],
            ]
        )
        keys.append(np.unique(members))
    keys = np.concatenate(keys)
    rows, cols = np.divmod(keys, num_nodes)
    indptr = np.searchsorted(rows, np.arange(num_nodes + 1))
    return sp.csr_matrix((np.ones(len(cols), dtype=bool), cols, indptr), shape=(num_nodes, num_nodes))


def _member_distances(members: sp.csr_matrix, scan: NeighbourScan, features: torch.Tensor) -> np.ndarray:
    """Normalised distance of every (node, member) pair: from the scan's cache, else recomputed."""
    num_nodes = members.shape[0]
    rows = np.repeat(np.arange(num_nodes, dtype=np.int64), np.diff(members.indptr))
    keys = rows * num_nodes + members.indices
    cache_keys = (np.arange(num_nodes, dtype=np.int64)[:, None] * num_nodes + scan.neighbours).ravel()
    order = np.argsort(cache_keys)
    cache_keys, cache_values = cache_keys[order], scan.distances.ravel()[order]
    position = np.minimum(np.searchsorted(cache_keys, keys), len(cache_keys) - 1)
    found = cache_keys[position] == keys
    result = np.where(found, cache_values[position], 0.0).astype(np.float64)
    missing = np.flatnonzero(~found)
    logger.debug(
        "re-ranking: %d of %d encoding weights recomputed outside the cache", len(missing), len(keys)
    )
    if len(missing):
        result[missing] = pair_distances(
            features,
            scan.norms,
            scan.labels,
            scan.row_max,
            rows[missing],
            members.indices[missing].astype(np.int64),
        )
    return result


def gaussian_encoding(members: sp.csr_matrix, distances: np.ndarray) -> sp.csr_matrix:
    """V[i, j] = exp(-d[i, j]) / sum over i's expanded set, so every row sums to 1."""
    weights = np.exp(-distances)
    rows = np.repeat(np.arange(members.shape[0]), np.diff(members.indptr))
    weights /= np.bincount(rows, weights=weights, minlength=members.shape[0])[rows]
    return sp.csr_matrix((weights, members.indices, members.indptr), shape=members.shape)


def local_query_expansion(encoding: sp.csr_matrix, neighbours: np.ndarray, k2: int) -> sp.csr_matrix:
    """Replace each row of V by the mean of the rows of its top-``k2`` neighbours (self included)."""
    num_nodes = encoding.shape[0]
    averaging = sp.csr_matrix(
        (
            np.full(num_nodes * k2, 1.0 / k2),
            neighbours[:, :k2].ravel(),
            np.arange(0, num_nodes * k2 + 1, k2),
        ),
        shape=(num_nodes, num_nodes),
    )
    return (averaging @ encoding).tocsr()


@dataclass(frozen=True)
class InvertedIndex:
    """The gallery rows of V grouped by column (CSC arrays): for each column, the gallery rows using it."""

    indptr: np.ndarray
    rows: np.ndarray  # int64, gallery row (0-based) of every entry
    values: np.ndarray  # float32
    counts: np.ndarray  # entries per column

    @classmethod
    def of(cls, gallery_encoding: sp.csr_matrix) -> InvertedIndex:
        csc = gallery_encoding.tocsc()
        return cls(csc.indptr, csc.indices.astype(np.int64), csc.data.astype(np.float32), np.diff(csc.indptr))


def _query_chunks(query_encoding: sp.csr_matrix, column_counts: np.ndarray, num_gallery: int) -> list[slice]:
    """Split query rows so each chunk stays within the Jaccard pair budget and dense accumulator budget."""
    num_rows = query_encoding.shape[0]
    pairs_before = np.concatenate([[0], np.cumsum(column_counts[query_encoding.indices])])
    pairs_per_row = np.diff(pairs_before[query_encoding.indptr])
    max_rows = max(1, JACCARD_CELL_BUDGET // max(num_gallery, 1))
    chunks, start, pairs = [], 0, 0
    for row, row_pairs in enumerate(pairs_per_row):
        if row > start and (pairs + row_pairs > JACCARD_PAIR_BUDGET or row - start >= max_rows):
            chunks.append(slice(start, row))
            start, pairs = row, 0
        pairs += row_pairs
    chunks.append(slice(start, num_rows))
    return chunks


def shared_mass(part: sp.csr_matrix, inverted: InvertedIndex, num_gallery: int) -> torch.Tensor:
    """S[q, g] = sum_j min(V[q, j], V[g, j]) for the query rows of ``part``: a dense float32 tensor.

    S only has terms on columns where both rows are non-zero. Every non-zero (q, j) of ``part`` is paired
    with the gallery entries of column j, a contiguous run of the inverted index; the minima of all pairs
    are summed into their (q, g) cells. Float32 halves the memory traffic of this, the costliest loop; sums
    of at most a few hundred terms in [0, 1] stay far inside the 1e-4 the result promises.
    """
    num_rows = part.shape[0]
    counts = inverted.counts[part.indices]  # gallery entries paired with each non-zero of part
    num_pairs = int(counts.sum())
    run_starts = inverted.indptr[part.indices] - (np.cumsum(counts) - counts)
    positions = np.repeat(run_starts, counts)  # index into the inverted index, run by run
    positions += np.arange(num_pairs)
    cells = np.repeat(np.repeat(np.arange(num_rows) * num_gallery, np.diff(part.indptr)), counts)
    cells += inverted.rows[positions]
    minima = inverted.values[positions]
    np.minimum(minima, np.repeat(part.data.astype(np.float32), counts), out=minima)
    shared = torch.zeros(num_rows * num_gallery)
    shared.scatter_add_(0, torch.from_numpy(cells), torch.from_numpy(minima))  # faster than np.bincount
    return shared.view(num_rows, num_gallery)


def blend_jaccard(encoding: sp.csr_matrix, num_query: int, lambda_value: float, out: np.ndarray) -> None:
    """Turn ``out`` = lambda * d + (1 - lambda) into lambda * d + (1 - lambda) * J for query x gallery pairs.

    With S = sum_j min(V[q, j], V[g, j]) (:func:`shared_mass`) and rows of V summing to 1,
    J = 1 - S / (2 - S): the correction is -(1 - lambda) * S / (2 - S), zero where S = 0.
    """
    num_gallery = encoding.shape[0] - num_query
    query_encoding = encoding[:num_query]
    inverted = InvertedIndex.of(encoding[num_query:])
    for chunk in tqdm(
        _query_chunks(query_encoding, inverted.counts, num_gallery), desc="re-ranking: jaccard", leave=False
    ):
        shared = shared_mass(query_encoding[chunk], inverted, num_gallery)
        target = torch.from_numpy(out[chunk])
        target.addcdiv_(shared, torch.sub(2.0, shared), value=lambda_value - 1.0)


def re_ranking_sparse(
    features: torch.Tensor,
    num_query: int,
    k1: int,
    k2: int,
    lambda_value: float,
    chunk_size: int,
    out: np.ndarray,
) -> np.ndarray:
    """Fill ``out`` (Q x G float32) with re-ranked distances; ``features`` stacks query then gallery rows."""
    num_nodes = features.shape[0]
    k2 = min(k2, num_nodes)
    list_length = max(min(k1 + 1, num_nodes), k2)
    cache_width = CACHE_WIDTH_FACTOR * (k1 + 1)
    scan = scan_neighbours(features, num_query, list_length, cache_width, chunk_size, lambda_value, out)
    members = expansion_sets(scan.neighbours, k1)
    logger.info("re-ranking: %.1f expanded neighbours per node on average", members.nnz / num_nodes)
    encoding = gaussian_encoding(members, _member_distances(members, scan, features))
    if k2 != 1:
        encoding = local_query_expansion(encoding, scan.neighbours, k2)
    del scan, members
    blend_jaccard(encoding, num_query, lambda_value, out)
    return out
