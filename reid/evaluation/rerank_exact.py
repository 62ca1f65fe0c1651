"""Dense k-reciprocal re-ranking that follows the published algorithm step by step (Zhong et al., CVPR 2017).

Holds several N x N arrays (distances, the full argsort, V and its query expansion), so it is meant for small
problems and as the ground truth that :mod:`reid.evaluation.rerank_sparse` is tested against.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from reid.evaluation.rerank_distances import normalised_distance_matrix

logger = logging.getLogger(__name__)


def _reciprocal_neighbours(initial_rank: np.ndarray, node: int, list_length: int) -> np.ndarray:
    """Members of ``node``'s top-``list_length`` list whose own top-``list_length`` list contains ``node``."""
    forward = initial_rank[node, :list_length]
    backward = initial_rank[forward, :list_length]
    return forward[(backward == node).any(axis=1)]


def re_ranking_exact(
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
    logger.info(
        "exact re-ranking: %d nodes, about %.2f GB of dense arrays", num_nodes, 28 * num_nodes**2 / 1e9
    )
    # Step 1: squared Euclidean distances between all nodes, each row divided by its maximum.
    dist = normalised_distance_matrix(features, chunk_size)
    # Step 2: full stable sort of every row (ties by node index).
    initial_rank = np.argsort(dist, axis=1, kind="stable")
    k1_length = min(k1 + 1, num_nodes)
    half_length = min(int(np.around(k1 / 2)) + 1, num_nodes)
    # Steps 3-5: k-reciprocal sets, their expansion, Gaussian encoding with rows summing to 1.
    encoding = np.zeros((num_nodes, num_nodes), dtype=np.float64)
    for node in range(num_nodes):
        reciprocal = _reciprocal_neighbours(initial_rank, node, k1_length)
        expansion = [reciprocal]
        for candidate in reciprocal:
            candidate_set = _reciprocal_neighbours(initial_rank, candidate, half_length)
            if 3 * len(np.intersect1d(candidate_set, reciprocal)) > 2 * len(candidate_set):
                expansion.append(candidate_set)
        members = np.unique(np.concatenate(expansion))
        weights = np.exp(-dist[node, members].astype(np.float64))
        encoding[node, members] = weights / weights.sum()
    # Step 6: local query expansion over each node's top-k2 list (self included).
    if k2 != 1:
        expanded = np.empty_like(encoding)
        for node in range(num_nodes):
            expanded[node] = encoding[initial_rank[node, :k2]].mean(axis=0)
        encoding = expanded
    del initial_rank
    # Step 7: Jaccard distance of query rows to gallery rows through an inverted index of non-zero columns.
    gallery_encoding = encoding[num_query:]
    inverted_index = [np.flatnonzero(column) for column in gallery_encoding.T]
    for query in range(num_query):
        shared = np.zeros(num_nodes - num_query, dtype=np.float64)
        for column in np.flatnonzero(encoding[query]):
            rows = inverted_index[column]
            shared[rows] += np.minimum(encoding[query, column], gallery_encoding[rows, column])
        jaccard = 1.0 - shared / (2.0 - shared)
        # Step 8: blend with the normalised original distance.
        out[query] = (1.0 - lambda_value) * jaccard + lambda_value * dist[query, num_query:]
    return out
