"""k-reciprocal re-ranking of query-to-gallery distances, with the semantics of the authors' feature code.

Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017. Every query and
gallery image is a node. The original distance is the squared Euclidean distance between features, each row
divided by its maximum; ties between equal distances are broken by node index (query rows first, then gallery
rows), as a stable sort does. Two implementations give the same result:

* ``"exact"`` (:mod:`reid.evaluation.rerank_exact`): the published algorithm step by step with dense N x N
  arrays (about 28 N^2 bytes): the ground truth, for small problems;
* ``"sparse"`` (:mod:`reid.evaluation.rerank_sparse`): one chunked pass over half the (symmetric) distance
  matrix, sparse encodings, no N x N array. ``"auto"`` always picks it: it was also the faster one at every
  size measured (N = 500 to 4000), so the dense path only serves as a reference.
"""

from __future__ import annotations

import logging
import numbers

import numpy as np
import torch

from reid.evaluation.distance import resolve_device
from reid.evaluation.rerank_distances import default_chunk_size
from reid.evaluation.rerank_exact import re_ranking_exact
from reid.evaluation.rerank_sparse import re_ranking_sparse

logger = logging.getLogger(__name__)

FeatureArray = np.ndarray | torch.Tensor


def _feature_tensor(name: str, features: FeatureArray, device: torch.device) -> torch.Tensor:
    """Validate one feature matrix and return it as float32 on ``device``."""
    if isinstance(features, torch.Tensor):
        tensor = features.detach()
    else:
        array = np.asarray(features)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{name}: expected a numeric array, got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D (num_images x feature_dim) array, got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(
            f"{name}: expected at least one image and one feature dimension, got {tuple(tensor.shape)}"
        )
    tensor = tensor.to(device=device, dtype=torch.float32)
    # A row sum is finite only if all its entries are (one cheap pass); it can also overflow for large
    # finite entries, which the element-wise test, run only then, tells apart.
    if not torch.isfinite(tensor.sum(dim=1)).all() and not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return tensor


def _coarse_mean(features: torch.Tensor) -> torch.Tensor:
    """The feature mean rounded to 8 significant bits, to subtract before computing distances.

    Distances are translation invariant; centring shrinks the norms and so the cancellation error of
    |a|^2 + |b|^2 - 2 a.b (CNN features often share a large mean). The rounding keeps the subtraction exact
    for coarse-grained inputs (e.g. small integers), so their exactly tied distances stay tied.
    """
    mantissa, exponent = torch.frexp(features.mean(dim=0))
    return torch.ldexp(torch.round(mantissa * 256) / 256, exponent.to(features.dtype))


def _check_parameters(k1: int, k2: int, lambda_value: float, method: str) -> None:
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if not isinstance(lambda_value, numbers.Real) or not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value: expected a number in [0, 1], got {lambda_value!r}")
    if method not in ("auto", "exact", "sparse"):
        raise ValueError(f"method: expected 'auto', 'exact' or 'sparse', got {method!r}")


def _check_out(out: np.ndarray | None, num_query: int, num_gallery: int) -> np.ndarray:
    if out is None:
        return np.empty((num_query, num_gallery), dtype=np.float32)
    if not isinstance(out, np.ndarray) or out.shape != (num_query, num_gallery) or out.dtype != np.float32:
        raise ValueError(
            f"out: expected a float32 numpy array or np.memmap of shape ({num_query}, {num_gallery}), got "
            f"{type(out).__name__} {getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}"
        )
    if not out.flags.writeable:
        raise ValueError("out: the array is read-only")
    return out


def re_ranking(
    query_features: FeatureArray,
    gallery_features: FeatureArray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    method: str = "auto",
    *,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Re-ranked query x gallery distances (float32, Q x G): (1 - lambda) * Jaccard + lambda * original.

    ``method``: "exact", "sparse" or "auto" (= "sparse"). ``device``: where distances are computed (default:
    CUDA when available, else CPU). ``chunk_size``: distance rows per strip (default: strips of at most
    ~64 MB); with the same value both methods see bit-identical distances, hence break ties identically
    (except rows recomputed for a tie run longer than the candidate window, see ``rerank_sparse``). ``out``: a
    preallocated float32 (Q, G) array or ``np.memmap`` to write into, so that a huge result needs no second
    copy; it is returned. Lists longer than N (k1 + 1 > N) are truncated.
    """
    _check_parameters(k1, k2, lambda_value, method)
    device = resolve_device(device)
    query = _feature_tensor("query_features", query_features, device)
    gallery = _feature_tensor("gallery_features", gallery_features, device)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query_features has {query.shape[1]} dimensions but gallery_features has {gallery.shape[1]}"
        )
    num_query, num_gallery = query.shape[0], gallery.shape[0]
    num_nodes = num_query + num_gallery
    if chunk_size is None:
        chunk_size = default_chunk_size(num_nodes)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    out = _check_out(out, num_query, num_gallery)
    features = torch.cat([query, gallery])
    del query, gallery
    features -= _coarse_mean(features)
    if method == "auto":
        method = "sparse"
    logger.info("re-ranking %d queries x %d gallery images (%s, %s)", num_query, num_gallery, method, device)
    run = re_ranking_exact if method == "exact" else re_ranking_sparse
    return run(features, num_query, int(k1), int(k2), float(lambda_value), int(chunk_size), out)
