import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from reid.evaluation import compute_distance_matrix
from reid.evaluation.distance import pairwise_distances
from reid.evaluation.input_checks import EvaluationInputError


def random_features(seed, num_query=37, num_gallery=53, dim=24):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_query, dim)), rng.standard_normal((num_gallery, dim)) * 3


@pytest.mark.parametrize(("metric", "scipy_metric"), [("euclidean", "sqeuclidean"), ("cosine", "cosine")])
@pytest.mark.parametrize("chunk_size", [1, 8, 4096])
def test_matches_scipy_cdist(metric, scipy_metric, chunk_size):
    query, gallery = random_features(0)
    result = compute_distance_matrix(query, gallery, metric, chunk_size=chunk_size, device="cpu")
    assert result.dtype == np.float32 and result.shape == (37, 53)
    expected = cdist(query, gallery, scipy_metric)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)


def test_accepts_torch_tensors():
    query, gallery = random_features(1)
    from_numpy = compute_distance_matrix(query, gallery, device="cpu")
    from_torch = compute_distance_matrix(torch.from_numpy(query), torch.from_numpy(gallery), device="cpu")
    np.testing.assert_array_equal(from_numpy, from_torch)


def test_identical_features_never_give_negative_distances():
    """The expanded form |q|^2 + |g|^2 - 2 q.g cancels to tiny negatives for identical large vectors."""
    features = np.random.default_rng(2).standard_normal((64, 128)).astype(np.float32) * 100
    for metric in ("euclidean", "cosine"):
        result = compute_distance_matrix(features, features, metric, device="cpu")
        assert result.min() >= 0.0
        assert np.abs(np.diag(result)).max() < 1e-2 * (1.0 if metric == "cosine" else 100.0**2)


def test_cosine_of_zero_vector_is_one():
    gallery = np.random.default_rng(3).standard_normal((5, 4))
    result = compute_distance_matrix(np.zeros((1, 4)), gallery, "cosine", device="cpu")
    np.testing.assert_allclose(result, 1.0)


@pytest.mark.parametrize(
    ("query", "gallery", "message"),
    [
        (np.zeros((2, 3)), np.zeros((4, 5)), "dimension 3 but gallery features have 5"),
        (np.zeros((0, 3)), np.zeros((4, 3)), "query features: is empty"),
        (np.zeros((2, 3)), np.zeros(3), "gallery features: expected a 2-D"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), np.ones((4, 2)), r"query features: .*1 values in rows \[0\]"),
    ],
)
def test_bad_features_raise_clear_errors(query, gallery, message):
    with pytest.raises(EvaluationInputError, match=message):
        compute_distance_matrix(query, gallery, device="cpu")


def test_unknown_metric_is_rejected():
    query, gallery = random_features(5)
    with pytest.raises(EvaluationInputError, match="metric"):
        compute_distance_matrix(query, gallery, "manhattan")


@pytest.mark.parametrize(("metric", "scipy_metric"), [("cosine", "cosine"), ("euclidean", "sqeuclidean")])
def test_numpy_pairwise_distances_match_scipy_in_the_inputs_precision(metric, scipy_metric):
    query, gallery = random_features(5)
    small = pairwise_distances(query[:7].astype(np.float32), gallery[:9].astype(np.float32), metric)
    assert small.dtype == np.float32
    np.testing.assert_allclose(small, cdist(query[:7], gallery[:9], scipy_metric), rtol=1e-4, atol=1e-5)
    exact = pairwise_distances(query[:7].astype(np.float64), gallery[:9].astype(np.float64), metric)
    assert exact.dtype == np.float64
    np.testing.assert_allclose(exact, cdist(query[:7], gallery[:9], scipy_metric), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        small, compute_distance_matrix(query[:7], gallery[:9], metric), rtol=1e-5, atol=1e-4
    )
    assert (pairwise_distances(query[:3], query[:3], metric) >= 0).all()
