"""Scalable k-reciprocal re-ranking: the result of the dense algorithm without any N x N array.

One chunked pass over the distance matrix yields everything the algorithm needs: each node's neighbour list
(stable top-k instead of a full argsort), a small cache of its nearest distances, and the query-to-gallery
distances, written straight into the output. The encoding V is a CSR matrix with a few times k1 non-zeros per
row; the Jaccard term is computed for query rows only, chunk by chunk, through the inverted index of V.
Peak memory beyond the output is a few blocks of ``chunk_size x N`` floats plus O(N * k1^2) integers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from reid.evaluation.knn import (
    duplicate_labels,
    normalised_distance_blocks,
    pair_distances,
    squared_norms,
    stable_smallest,
)

logger = logging.getLogger(__name__)

#: Nodes per batch when building expansion sets (the batch's temporary is ``batch x (k1+1)^2 x k1/2`` bools).
EXPANSION_BATCH = 2048
#: Neighbours kept per node with their distances, in units of k1 + 1: most expansion members are among them.
CACHE_WIDTH_FACTOR = 2
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


def scan_neighbours(
    features: torch.Tensor,
    num_query: int,
    list_length: int,
    cache_width: int,
    chunk_size: int,
    lambda_value: float,
    out: np.ndarray,
) -> NeighbourScan:
    """Stable top-``list_length`` neighbour lists of all nodes, in one pass over the distance matrix.

    Also writes ``lambda * d + (1 - lambda)`` into ``out`` for query x gallery pairs: the final distance for
    pairs with an empty Jaccard overlap (J = 1), which :func:`blend_jaccard` then corrects where it is not.
    """
    num_nodes = features.shape[0]
    width = min(max(cache_width, list_length + 1), num_nodes)
    neighbours = np.empty((num_nodes, width), dtype=np.int32)
    distances = np.empty((num_nodes, width), dtype=np.float32)
    row_max = torch.empty(num_nodes, dtype=features.dtype, device=features.device)
    norms, labels = squared_norms(features), duplicate_labels(features)
    blocks = normalised_distance_blocks(features, chunk_size, norms, labels)
    with tqdm(total=num_nodes, desc="re-ranking: neighbours", unit="node", leave=False) as progress:
        for block in blocks:
            values, indices = stable_smallest(block.values, width, list_length)
            neighbours[block.start : block.stop] = indices.cpu().numpy()
            distances[block.start : block.stop] = values.cpu().numpy()
            row_max[block.start : block.stop] = block.row_max
            if block.start < num_query:
                query_rows = min(block.stop, num_query) - block.start
                blended = block.values[:query_rows, num_query:].mul_(lambda_value).add_(1.0 - lambda_value)
                out[block.start : block.start + query_rows] = blended.cpu().numpy()  # block is not reused
                del blended
            progress.update(block.stop - block.start)
            del block, values, indices  # before the generator computes the next block
    return NeighbourScan(neighbours, distances, row_max, norms, labels)


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


def _query_chunks(query_encoding: sp.csr_matrix, column_counts: np.ndarray, num_gallery: int) -> list[slice]:
    """Split query rows so each chunk stays within the Jaccard pair budget and dense accumulator budget."""
    num_rows = query_encoding.shape[0]
    rows = np.repeat(np.arange(num_rows), np.diff(query_encoding.indptr))
    pairs_per_row = np.bincount(rows, weights=column_counts[query_encoding.indices], minlength=num_rows)
    max_rows = max(1, JACCARD_CELL_BUDGET // max(num_gallery, 1))
    chunks, start, pairs = [], 0, 0
    for row, row_pairs in enumerate(pairs_per_row):
        if row > start and (pairs + row_pairs > JACCARD_PAIR_BUDGET or row - start >= max_rows):
            chunks.append(slice(start, row))
            start, pairs = row, 0
        pairs += row_pairs
    chunks.append(slice(start, num_rows))
    return chunks


def blend_jaccard(encoding: sp.csr_matrix, num_query: int, lambda_value: float, out: np.ndarray) -> None:
    """Turn ``out`` = lambda * d + (1 - lambda) into lambda * d + (1 - lambda) * J for query x gallery pairs.

    With S = sum_j min(V[q, j], V[g, j]) and rows of V summing to 1, J = 1 - S / (2 - S): the correction is
    -(1 - lambda) * S / (2 - S), zero where S = 0. S only has terms on columns where both rows are non-zero:
    for each non-zero (q, j), the gallery rows sharing column j come from the inverted index (CSC of the
    gallery rows); the minima of all those (q, g) pairs are summed by one ``bincount`` per chunk of queries.
    """
    num_gallery = encoding.shape[0] - num_query
    query_encoding = encoding[:num_query]
    inverted = encoding[num_query:].tocsc()
    column_counts = np.diff(inverted.indptr)
    chunks = _query_chunks(query_encoding, column_counts, num_gallery)
    for chunk in tqdm(chunks, desc="re-ranking: jaccard", leave=False):
        part = query_encoding[chunk]
        num_rows = part.shape[0]
        counts = column_counts[part.indices]
        starts = np.cumsum(counts) - counts
        positions = np.repeat(inverted.indptr[part.indices] - starts, counts) + np.arange(int(counts.sum()))
        cells = np.repeat(np.repeat(np.arange(num_rows) * num_gallery, np.diff(part.indptr)), counts)
        cells += inverted.indices[positions]
        minima = np.minimum(np.repeat(part.data, counts), inverted.data[positions])
        shared = np.bincount(cells, weights=minima, minlength=num_rows * num_gallery).reshape(num_rows, -1)
        shared /= 2.0 - shared
        shared *= 1.0 - lambda_value
        out[chunk] -= shared.astype(np.float32)


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
