"""The one home of feature distances: query x gallery matrices for evaluation (torch, chunked so large
galleries never need a second full-size temporary) and small numpy ones for the tracker, the stitcher and the
gallery. torch is imported only by the torch paths, so the video tools start without it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

from .input_checks import EvaluationInputError, check_features

METRICS = ("euclidean", "cosine")


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero): the cosine geometry as plain vectors."""
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def pairwise_distances(a: np.ndarray, b: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """(len(a), len(b)) distances of small in-memory feature sets in numpy: the tracker, the stitcher, the
    gallery and threshold calibration. Same units as :func:`compute_distance_matrix` (``cosine``: 1 - cosine
    similarity, features need not be normalised; ``euclidean``: squared), clamped to >= 0, computed in the
    inputs' precision (at least float32)."""
    dtype = np.result_type(np.asarray(a).dtype, np.asarray(b).dtype, np.float32)
    a, b = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    if metric == "cosine":
        dist = 1.0 - l2_normalize(a) @ l2_normalize(b).T
    elif metric == "euclidean":
        dist = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    else:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return np.maximum(dist, 0.0)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the GPU when one is present, so evaluation is fast by default and still runs on CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compute_distance_matrix(
    query: Any,
    gallery: Any,
    metric: str = "euclidean",
    *,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Distances between every query and gallery feature as a float32 (Q x G) numpy array.

    ``metric="euclidean"`` is the *squared* Euclidean distance ||q - g||^2 (same ranking as Euclidean,
    cheaper, and what re-ranking expects); ``"cosine"`` is 1 - cos(q, g) in [0, 2] (an all-zero vector has
    cosine 0 to everything). Inputs may be numpy arrays or torch tensors; they are computed in float32 on
    ``device``, ``chunk_size`` query rows at a time. Round-off can make the expanded ||q||^2 + ||g||^2 - 2 q.g
    slightly negative, so results are clamped to >= 0.
    """
    import torch
    import torch.nn.functional as F

    if metric not in METRICS:
        raise EvaluationInputError(f"metric: expected one of {METRICS}, got {metric!r}")
    if chunk_size < 1:
        raise EvaluationInputError(
            f"chunk_size: expected a positive number of query rows, got {chunk_size!r}"
        )
    query_array = check_features(query, "query features")
    gallery_array = check_features(gallery, "gallery features")
    if query_array.shape[1] != gallery_array.shape[1]:
        raise EvaluationInputError(
            f"query features have dimension {query_array.shape[1]} but gallery features have "
            f"{gallery_array.shape[1]}; both must come from the same model"
        )
    target = resolve_device(device)
    gallery_tensor = _to_float_tensor(gallery_array, target)
    if metric == "cosine":
        gallery_tensor = F.normalize(gallery_tensor, dim=1)
    else:
        gallery_sq_norms = gallery_tensor.pow(2).sum(dim=1)

    distances = np.empty((query_array.shape[0], gallery_array.shape[0]), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, query_array.shape[0], chunk_size):
            block = _to_float_tensor(query_array[start : start + chunk_size], target)
            if metric == "cosine":
                chunk = 1.0 - F.normalize(block, dim=1) @ gallery_tensor.T
                chunk.clamp_(0.0, 2.0)
            else:
                chunk = torch.addmm(gallery_sq_norms[None, :], block, gallery_tensor.T, alpha=-2.0)
                chunk.add_(block.pow(2).sum(dim=1, keepdim=True)).clamp_(min=0.0)
            distances[start : start + chunk.shape[0]] = chunk.cpu().numpy()
    return distances


def _to_float_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
