"""Row-normalised squared-Euclidean distances between all re-ranking nodes, by blocks; stable neighbour lists.

Both re-ranking paths read their distances from :func:`upper_distance_strips`, so they see bit-identical
values and break ties the same way: by distance, then by node index (what a stable full sort of a row gives).
That shared convention is what lets the scalable path reproduce the dense one exactly, duplicates included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Bytes one block of distance rows may take; the block has ``chunk_size x N`` float32 entries.
DEFAULT_BLOCK_BYTES = 64 * 2**20


def default_chunk_size(num_nodes: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per distance block so that one block stays near ``block_bytes`` (at least 16 rows)."""
    return int(max(16, min(num_nodes, block_bytes // (4 * max(num_nodes, 1)))))


@dataclass(frozen=True)
class DistanceStrip:
    """Raw squared distances of rows ``start:stop`` to the nodes ``start:`` (on the compute device)."""

    start: int
    stop: int
    values: torch.Tensor


def squared_norms(features: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Squared row norms, in batches so that no temporary as large as ``features`` is made."""
    norms = torch.cat([(part * part).sum(dim=1) for part in features.split(batch)])
    if not torch.isfinite(norms).all():
        raise ValueError("features are too large: their squared norms overflow float32; rescale them")
    return norms


def duplicate_labels(features: torch.Tensor, key_columns: int = 32) -> torch.Tensor | None:
    """Group id per node for nodes whose feature vector occurs more than once (-1 otherwise); None if none do.

    ``|a|^2 + |b|^2 - 2 a.b`` leaves rounding noise where the true distance is 0; knowing exact duplicates
    lets the blocks return exactly 0 for them, so they tie with the node itself and are ordered by index.
    Rows are bucketed by a hash of a few of their components (cheap, and equal for equal rows), then compared
    in full within each bucket.
    """
    num_nodes, dim = features.shape
    columns = np.linspace(0, dim - 1, min(key_columns, dim)).astype(np.int64)
    key = features[:, torch.as_tensor(columns, device=features.device)].cpu().numpy() + np.float32(0.0)
    bits = key.view(np.int32).astype(np.int64)  # + 0.0 above turns -0.0 into 0.0
    multipliers = np.random.default_rng(0).integers(1, 2**62, size=len(columns), dtype=np.int64) | 1
    hashes = (bits * multipliers).sum(axis=1)
    order = np.argsort(hashes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(hashes[order]) != 0])
    sizes = np.diff(np.r_[starts, len(order)])
    labels = np.full(num_nodes, -1, dtype=np.int64)
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
        members = order[start : start + size]
        rows = features[torch.as_tensor(members, device=features.device)].cpu().numpy() + np.float32(0.0)
        _, first, group, counts = np.unique(
            rows, axis=0, return_index=True, return_inverse=True, return_counts=True
        )
        group = group.ravel()
        repeated = counts[group] > 1
        labels[members[repeated]] = members[first[group[repeated]]]  # label = a member's node index
    if (labels < 0).all():
        return None
    return torch.as_tensor(labels, device=features.device)


def squared_distance_rows(
    features: torch.Tensor,
    norms: torch.Tensor,
    labels: torch.Tensor | None,
    rows: torch.Tensor,
    col_start: int,
) -> torch.Tensor:
    """Squared Euclidean distances of the nodes ``rows`` to the nodes ``col_start:`` (not normalised).

    ``d`` is computed as ``|b|^2 - 2 a.b + |a|^2``, clamped at 0, and set to exactly 0 between a node and
    itself and between duplicates (``labels`` from :func:`duplicate_labels`).
    """
    block = torch.addmm(norms[None, col_start:], features[rows], features[col_start:].T, alpha=-2.0)
    block.add_(norms[rows, None]).clamp_(min=0.0)
    on_diagonal = torch.nonzero(rows >= col_start).flatten()
    block[on_diagonal, rows[on_diagonal] - col_start] = 0.0
    if labels is not None:
        duplicated = torch.nonzero(labels[rows] >= 0).flatten()
        if duplicated.numel():
            same = labels[None, col_start:] == labels[rows[duplicated], None]
            block[duplicated] = block[duplicated].masked_fill_(same, 0.0)
    return block


def upper_distance_strips(
    features: torch.Tensor, chunk_size: int, norms: torch.Tensor, labels: torch.Tensor | None
) -> Iterator[DistanceStrip]:
    """Yield the strips ``d[start:stop, start:]`` of consecutive row blocks: the block upper triangle.

    The distance matrix is symmetric, so this half (N^2 d / 2 multiply-adds) determines it: the entries left
    of a strip are the transposed columns of earlier strips. Both re-ranking paths use exactly this
    convention, so they see bit-identical distances even though ``|a|^2 + |b|^2 - 2 a.b`` in float32 is not
    symmetric to the last bit.
    """
    num_nodes = features.shape[0]
    for start in range(0, num_nodes, chunk_size):
        stop = min(start + chunk_size, num_nodes)
        rows = torch.arange(start, stop, device=features.device)
        yield DistanceStrip(start, stop, squared_distance_rows(features, norms, labels, rows, start))


def normalise_rows(values: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    """Divide each row by its raw distance maximum in place (rows whose maximum is 0 stay 0)."""
    return values.div_(torch.where(row_max > 0, row_max, torch.ones_like(row_max))[:, None])


def normalised_distance_matrix(features: torch.Tensor, chunk_size: int) -> np.ndarray:
    """The dense N x N matrix ``d[i, j] / max_j d[i, j]`` assembled from :func:`upper_distance_strips`."""
    num_nodes = features.shape[0]
    dist = np.empty((num_nodes, num_nodes), dtype=np.float32)
    for strip in upper_distance_strips(
        features, chunk_size, squared_norms(features), duplicate_labels(features)
    ):
        values = strip.values.cpu().numpy()
        dist[strip.start : strip.stop, strip.start :] = values
        dist[strip.stop :, strip.start : strip.stop] = values[:, strip.stop - strip.start :].T
    matrix = torch.from_numpy(dist)
    normalise_rows(matrix, matrix.amax(dim=1))
    return dist


def order_by_value_then_index(
    values: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row's (value, index) pairs by value, ties by index: what a stable sort of the row gives."""
    by_value = torch.sort(values, dim=1).indices
    values, indices = values.gather(1, by_value), indices.gather(1, by_value)
    if (values[:, 1:] == values[:, :-1]).any():  # rare outside duplicates: skip the index sort otherwise
        by_index = torch.argsort(indices, dim=1)
        values, indices = values.gather(1, by_index), indices.gather(1, by_index)
        by_value = torch.sort(values, dim=1, stable=True).indices
        values, indices = values.gather(1, by_value), indices.gather(1, by_value)
    return values, indices


def stable_smallest(block: torch.Tensor, width: int, exact_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` smallest entries of each row of ``block``, sorted by (value, column index).

    ``torch.topk`` breaks ties arbitrarily, so its result is re-sorted by (value, index); rows where a tie
    straddles position ``exact_prefix`` (the part callers rely on) are redone with a full stable sort. The
    first ``exact_prefix`` columns therefore equal those of ``np.argsort(row, kind="stable")``.
    """
    num_cols = block.shape[1]
    width = min(width, num_cols)
    values, indices = order_by_value_then_index(*torch.topk(block, width, dim=1, largest=False, sorted=False))
    if exact_prefix < width:
        straddling = torch.nonzero(values[:, exact_prefix] == values[:, exact_prefix - 1]).flatten()
        if straddling.numel():
            resorted = torch.sort(block[straddling], dim=1, stable=True)
            values[straddling] = resorted.values[:, :width]
            indices[straddling] = resorted.indices[:, :width]
    return values, indices


def pair_distances(
    features: torch.Tensor,
    norms: torch.Tensor,
    labels: torch.Tensor | None,
    row_max: torch.Tensor,
    rows: np.ndarray,
    cols: np.ndarray,
    batch: int = 8192,
) -> np.ndarray:
    """Normalised distances for arbitrary (row, col) pairs, same convention as the blocks (float64 result).

    Values agree with the blocks to float32 rounding, not bit for bit (a different summation order).
    """
    result = np.empty(len(rows), dtype=np.float64)
    device = features.device
    for start in range(0, len(rows), batch):
        r = torch.as_tensor(rows[start : start + batch], device=device, dtype=torch.long)
        c = torch.as_tensor(cols[start : start + batch], device=device, dtype=torch.long)
        dots = (features[r] * features[c]).sum(dim=1)
        dist = (norms[r] + norms[c] - 2.0 * dots).clamp_(min=0.0)
        same = r == c if labels is None else (r == c) | ((labels[r] == labels[c]) & (labels[r] >= 0))
        dist = torch.where(same, torch.zeros_like(dist), dist)
        scale = row_max[r]
        dist = dist / torch.where(scale > 0, scale, torch.ones_like(scale))
        result[start : start + batch] = dist.cpu().numpy()
    return result
