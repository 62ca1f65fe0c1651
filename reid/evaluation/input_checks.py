"""Input checks for retrieval evaluation.

Evaluation code fed wrong arrays tends to fail deep inside numpy (broadcast errors) or, worse, to return a
plausible-looking number. These checks run first and say which argument is wrong and what was expected.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_MAX_LISTED_ROWS = 5


class EvaluationInputError(ValueError):
    """Evaluation inputs that cannot give a meaningful result (wrong shapes, NaN, no valid query...)."""


def to_numpy(array: Any, name: str) -> np.ndarray:
    """Accept numpy arrays, torch tensors (any device) and sequences; name the argument on failure."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        array = array.detach().cpu().numpy()
    try:
        return np.asarray(array)
    except (TypeError, ValueError) as error:
        raise EvaluationInputError(
            f"{name}: cannot convert {type(array).__name__} to an array ({error})"
        ) from error


def check_labels(values: Any, name: str, expected_length: int | None = None) -> np.ndarray:
    """A 1-D integer label array (pids or camera ids), optionally of a given length."""
    labels = to_numpy(values, name)
    if labels.ndim != 1:
        raise EvaluationInputError(f"{name}: expected a 1-D array, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        # Whole-number floats are accepted: labels often round-trip through float arrays (e.g. np.loadtxt).
        integral = labels.dtype.kind == "f" and bool(
            np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
        )
        if not integral:
            raise EvaluationInputError(f"{name}: expected integer labels, got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    if expected_length is not None and labels.shape[0] != expected_length:
        raise EvaluationInputError(
            f"{name}: has {labels.shape[0]} entries but {expected_length} were expected"
        )
    return labels


def _describe_bad_rows(bad: np.ndarray) -> str:
    """'12 values in rows [0, 3, ...]' for a boolean mask of non-finite entries."""
    rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
    listed = ", ".join(str(row) for row in rows[:_MAX_LISTED_ROWS])
    more = f", ... ({rows.size} rows)" if rows.size > _MAX_LISTED_ROWS else ""
    return f"{int(bad.sum())} values in rows [{listed}{more}]"


def check_finite(array: np.ndarray, name: str) -> None:
    """Reject NaN/inf: they silently corrupt rankings (NaN compares false with everything)."""
    if array.dtype.kind not in "fc" or array.size == 0:
        return
    # Fast path without a full-size temporary: NaN propagates through min/max and inf would be an extreme.
    if np.isfinite(array.min()) and np.isfinite(array.max()):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        raise EvaluationInputError(f"{name}: contains NaN or infinite values: {_describe_bad_rows(bad)}")


def check_features(features: Any, name: str) -> np.ndarray:
    """A non-empty, finite 2-D feature matrix (numpy view; torch tensors are copied to host)."""
    array = to_numpy(features, name)
    if array.ndim != 2:
        raise EvaluationInputError(
            f"{name}: expected a 2-D (num_images x feature_dim) array, got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise EvaluationInputError(f"{name}: is empty (0 images)")
    if array.shape[1] == 0:
        raise EvaluationInputError(f"{name}: has feature dimension 0")
    if array.dtype.kind not in "iuf":
        raise EvaluationInputError(f"{name}: expected numeric features, got dtype {array.dtype}")
    check_finite(array, name)
    return array


def check_retrieval_inputs(
    distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert the five arrays of ``evaluate_rank``.

    The distance matrix is returned as float32 or float64 (other dtypes are converted to float64, which holds
    integers and float16 exactly, so rankings are unchanged).
    """
    dist = to_numpy(distmat, "distmat")
    if dist.ndim != 2:
        raise EvaluationInputError(
            f"distmat: expected a 2-D (num_query x num_gallery) matrix, got shape {dist.shape}"
        )
    num_query, num_gallery = dist.shape
    if num_query == 0:
        raise EvaluationInputError("distmat: the query set is empty (0 rows)")
    if num_gallery == 0:
        raise EvaluationInputError("distmat: the gallery is empty (0 columns)")
    if dist.dtype.kind not in "iuf":
        raise EvaluationInputError(f"distmat: expected real numbers, got dtype {dist.dtype}")
    if dist.dtype not in (np.float32, np.float64):
        dist = dist.astype(np.float64)
    check_finite(dist, "distmat")
    q_pids = check_labels(q_pids, "q_pids", num_query)
    q_camids = check_labels(q_camids, "q_camids", num_query)
    g_pids = check_labels(g_pids, "g_pids", num_gallery)
    g_camids = check_labels(g_camids, "g_camids", num_gallery)
    return dist, q_pids, g_pids, q_camids, g_camids


def check_valid_queries(
    num_valid: int, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray
) -> None:
    """Fail when no query can be scored, saying why; warn with a count when only some are skipped, and
    when query and gallery share no camera (the same-camera rule then removes nothing: inflated figures)."""
    num_queries = len(q_pids)
    skipped = num_queries - num_valid
    if num_valid == 0:
        if not np.isin(q_pids, g_pids).any():
            raise EvaluationInputError(
                f"none of the {num_queries} query identities appears in the gallery (query pids e.g. "
                f"{sorted(set(q_pids.tolist()))[:5]}, gallery pids e.g. {sorted(set(g_pids.tolist()))[:5]}): "
                "query and gallery must hold images of the same people, with the same pid for a person"
            )
        raise EvaluationInputError(
            f"none of the {num_queries} queries has a valid gallery match: every gallery image of a query's "
            "identity has the query's camera id, and the standard protocol removes those. The camera ids are "
            "probably missing or constant. For a custom dataset give real ones (root/cameras.csv or "
            "data.custom.camera_regex), or data.custom.camera_mode=per_split when query and gallery come "
            "from different places or times; in a feature file, fill query_camids / gallery_camids."
        )
    if skipped:
        logger.warning(
            "%d of %d queries have no valid gallery match (every match shares the query's camera or is junk) "
            "and are skipped; metrics use the remaining %d queries",
            skipped,
            num_queries,
            num_valid,
        )
    query_cams, gallery_cams = set(q_camids.tolist()), set(g_camids.tolist())
    if query_cams.isdisjoint(gallery_cams):
        logger.warning(
            "query cameras %s and gallery cameras %s share no camera, so the same-camera rule removes "
            "nothing and near-duplicate views count as hits; check that the camera ids are right",
            sorted(query_cams)[:10],
            sorted(gallery_cams)[:10],
        )
