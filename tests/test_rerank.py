"""k-reciprocal re-ranking: both paths against a plain loop reference, and against each other."""

import numpy as np
import pytest
import torch

from reid.evaluation import rerank_sparse
from reid.evaluation.rerank import re_ranking
from reid.evaluation.rerank_distances import normalised_distance_matrix, stable_smallest


def clustered_features(seed, num_query, num_gallery, num_ids=12, dim=16, noise=0.6):
    """Features around per-identity centres (so k-reciprocal sets are non-trivial), plus their identities."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    pids = rng.integers(0, num_ids, size=num_query + num_gallery)
    features = (centres[pids] + noise * rng.normal(size=(len(pids), dim))).astype(np.float32)
    return features[:num_query], features[num_query:], pids[:num_query], pids[num_query:]


def reference_re_ranking(query, gallery, k1, k2, lambda_value):
    """The published algorithm written as plainly as possible: float64, loops, Python sets, full matrices."""
    x = np.concatenate([query, gallery]).astype(np.float64)
    n, num_query = len(x), len(query)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    row_max = dist.max(axis=1, keepdims=True)
    dist = dist / np.where(row_max > 0, row_max, 1.0)
    rank = [sorted(range(n), key=lambda j, i=i: (dist[i, j], j)) for i in range(n)]

    def reciprocal(i, k):
        return [j for j in rank[i][: k + 1] if i in rank[j][: k + 1]]

    encoding = np.zeros((n, n))
    for i in range(n):
        r_i = reciprocal(i, k1)
        expanded = set(r_i)
        for candidate in r_i:
            r_c = reciprocal(candidate, round(k1 / 2))  # Python's round: half to even, like np.around
            if len(set(r_c) & set(r_i)) > 2 / 3 * len(r_c):
                expanded |= set(r_c)
        members = sorted(expanded)
        if members:
            weights = np.exp(-dist[i, members])
            encoding[i, members] = weights / weights.sum()
    if k2 != 1:
        encoding = np.array([encoding[rank[i][:k2]].mean(axis=0) for i in range(n)])
    result = np.empty((num_query, n - num_query))
    for q in range(num_query):
        shared = np.minimum(encoding[q][None, :], encoding[num_query:]).sum(axis=1)
        jaccard = 1 - shared / (2 - shared)
        result[q] = (1 - lambda_value) * jaccard + lambda_value * dist[q, num_query:]
    return result


def mean_average_precision(distmat, q_pids, g_pids):
    """Plain mAP over queries with at least one match (no camera filtering)."""
    aps = []
    for row, pid in zip(distmat, q_pids, strict=True):
        matches = g_pids[np.argsort(row, kind="stable")] == pid
        if matches.any():
            hits = np.flatnonzero(matches)
            aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
    return float(np.mean(aps))


@pytest.mark.parametrize(
    "seed, num_query, num_gallery, k1, k2, lambda_value",
    [(0, 30, 90, 20, 6, 0.3), (1, 25, 70, 7, 3, 0.5), (2, 20, 60, 5, 1, 0.0), (3, 10, 40, 4, 8, 1.0)],
)
def test_exact_path_matches_reference(seed, num_query, num_gallery, k1, k2, lambda_value):
    query, gallery, q_pids, g_pids = clustered_features(seed, num_query, num_gallery)
    expected = reference_re_ranking(query, gallery, k1, k2, lambda_value)
    result = re_ranking(query, gallery, k1, k2, lambda_value, method="exact")
    assert result.dtype == np.float32 and result.shape == (num_query, num_gallery)
    np.testing.assert_allclose(result, expected, atol=1e-5, rtol=0)
    assert mean_average_precision(result, q_pids, g_pids) == pytest.approx(
        mean_average_precision(expected, q_pids, g_pids), abs=1e-9
    )


def test_exact_path_matches_reference_with_duplicate_features():
    query, gallery, _, _ = clustered_features(4, 20, 60)
    query += 30.0  # a large common offset, as CNN features often have
    gallery += 30.0
    gallery[10] = gallery[3] = query[5]  # a query image repeated twice in the gallery
    gallery[20:26] = gallery[30]  # a group of identical gallery images
    query[6, 0] = 0.0
    gallery[40] = query[6]
    gallery[40, 0] = -0.0  # equal to query[6] although its bytes differ
    expected = reference_re_ranking(query, gallery, 6, 3, 0.3)
    np.testing.assert_allclose(
        re_ranking(query, gallery, 6, 3, 0.3, method="exact"), expected, atol=1e-5, rtol=0
    )


def test_reranking_improves_map_on_clustered_features():
    query, gallery, q_pids, g_pids = clustered_features(5, 40, 200, noise=1.0)
    plain = ((query[:, None, :] - gallery[None, :, :]) ** 2).sum(axis=2)
    reranked = re_ranking(query, gallery, method="exact")
    assert mean_average_precision(reranked, q_pids, g_pids) > mean_average_precision(plain, q_pids, g_pids)


def test_distance_blocks_give_exact_zeros_for_duplicates_and_stable_neighbour_order():
    rng = np.random.default_rng(6)
    features = (rng.normal(size=(120, 32)) + 30.0).astype(np.float32)
    features[10:20] = features[5]
    features[50, 0] = 0.0
    features[51] = features[50]
    features[51, 0] = -0.0
    tensor = torch.from_numpy(features)
    dist = normalised_distance_matrix(tensor, 16)
    group = [5, *range(10, 20)]
    assert (dist[np.ix_(group, group)] == 0).all() and dist[50, 51] == 0 and dist[51, 50] == 0
    expected = ((features[:, None, :].astype(np.float64) - features[None, :, :]) ** 2).sum(axis=2)
    expected /= expected.max(axis=1, keepdims=True)
    np.testing.assert_allclose(dist, expected, atol=1e-4)  # uncentred: float32 cancellation error
    _, indices = stable_smallest(torch.from_numpy(dist), 8, 6)
    np.testing.assert_array_equal(indices[:, :6].numpy(), np.argsort(dist, axis=1, kind="stable")[:, :6])


def test_stable_smallest_orders_ties_by_index_like_a_stable_sort():
    rng = np.random.default_rng(7)
    values = rng.integers(0, 4, size=(300, 50)).astype(
        np.float32
    )  # ties everywhere, also across the boundary
    for width, prefix in [(10, 9), (4, 3), (50, 50)]:
        result_values, indices = stable_smallest(torch.from_numpy(values), width, prefix)
        expected = np.argsort(values, axis=1, kind="stable")[:, :prefix]
        np.testing.assert_array_equal(indices[:, :prefix].numpy(), expected)
        np.testing.assert_array_equal(result_values.numpy(), np.sort(values, axis=1)[:, :width])


def test_running_smallest_keeps_the_smallest_entries_of_each_row_from_strips_and_their_transposes(
    monkeypatch,
):
    monkeypatch.setattr(rerank_sparse, "DENSE_MERGE_COLUMNS", 7)  # the first strip's merge in several slices
    rng = np.random.default_rng(8)
    dist = rng.integers(0, 40, size=(90, 90)).astype(np.float32)  # many ties
    dist = np.minimum(dist, dist.T)
    width = 12
    smallest = rerank_sparse.RunningSmallest(90, width, torch.device("cpu"))
    for start in range(0, 90, 20):  # the upper strips, as the scan visits them
        stop = min(start + 20, 90)
        strip = torch.from_numpy(dist[start:stop, start:].copy())
        smallest.merge_rows(slice(start, stop), strip, start)
        smallest.merge_columns(slice(stop, 90), strip[:, stop - start :], start)
    values, indices = smallest.values.numpy(), smallest.indices.numpy()
    np.testing.assert_array_equal(np.sort(values, axis=1), np.sort(dist, axis=1)[:, :width])
    np.testing.assert_array_equal(np.take_along_axis(dist, indices, axis=1), values)
    assert all(len(set(row)) == width for row in indices)


SPARSE_CASES = [
    # seed, num_query, num_gallery, k1, k2, lambda, chunk_size
    (10, 40, 260, 20, 6, 0.3, 64),
    (11, 60, 240, 10, 3, 0.3, 17),
    (12, 30, 150, 5, 1, 0.5, 1000),
    (13, 20, 180, 13, 9, 0.2, 50),
    (14, 5, 20, 20, 6, 0.3, 8),  # k1 + 1 > N: lists cover everything
    (15, 100, 500, 20, 6, 0.3, None),  # default block size
    (16, 80, 420, 30, 10, 0.3, 100),
]


@pytest.mark.parametrize("seed, num_query, num_gallery, k1, k2, lambda_value, chunk_size", SPARSE_CASES)
def test_sparse_path_matches_exact_path(seed, num_query, num_gallery, k1, k2, lambda_value, chunk_size):
    query, gallery, q_pids, g_pids = clustered_features(seed, num_query, num_gallery, num_ids=15, dim=24)
    args = (query, gallery, k1, k2, lambda_value)
    exact = re_ranking(*args, method="exact", chunk_size=chunk_size)
    sparse = re_ranking(*args, method="sparse", chunk_size=chunk_size)
    np.testing.assert_allclose(sparse, exact, atol=1e-4, rtol=0)
    assert mean_average_precision(sparse, q_pids, g_pids) == pytest.approx(
        mean_average_precision(exact, q_pids, g_pids), abs=1e-9
    )


def test_sparse_path_matches_exact_path_with_ties_and_duplicates():
    """Ties straddling the neighbour-list boundary and duplicate groups above k1 are ordered by index."""
    rng = np.random.default_rng(20)
    # Integer grid features: many exactly equal distances.
    features = rng.integers(0, 3, size=(240, 6)).astype(np.float32)
    features[50:80] = features[7]  # 31 copies of one vector: more than k1 + 1 duplicates
    query, gallery = features[:40], features[40:]
    for k1, k2 in [(20, 6), (8, 3)]:
        exact = re_ranking(query, gallery, k1, k2, 0.3, method="exact", chunk_size=32)
        sparse = re_ranking(query, gallery, k1, k2, 0.3, method="sparse", chunk_size=32)
        np.testing.assert_allclose(sparse, exact, atol=1e-4, rtol=0)
    expected = reference_re_ranking(query, gallery, 8, 3, 0.3)
    np.testing.assert_allclose(
        re_ranking(query, gallery, 8, 3, 0.3, method="sparse"), expected, atol=1e-5, rtol=0
    )


def test_sparse_path_writes_into_a_memmap_and_accepts_torch_input(tmp_path):
    query, gallery, _, _ = clustered_features(30, 30, 120)
    out = np.lib.format.open_memmap(tmp_path / "dist.npy", mode="w+", dtype=np.float32, shape=(30, 120))
    result = re_ranking(torch.from_numpy(query), torch.from_numpy(gallery), method="sparse", out=out)
    assert result is out
    out.flush()
    np.testing.assert_allclose(
        np.load(tmp_path / "dist.npy"), re_ranking(query, gallery, method="exact"), atol=1e-4
    )


def test_identical_features_do_not_divide_by_zero():
    features = np.ones((12, 4), dtype=np.float32)
    for method in ("exact", "sparse"):
        result = re_ranking(features[:3], features[3:], k1=3, k2=2, method=method)
        assert np.isfinite(result).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(query_features=np.zeros((0, 4)), gallery_features=np.ones((3, 4))), "query_features"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((3, 5))), "dimensions"),
        (dict(query_features=np.ones(4), gallery_features=np.ones((3, 4))), "2-D"),
        (
            dict(query_features=np.ones((2, 4)), gallery_features=np.full((3, 4), np.nan)),
            "gallery_features.*NaN",
        ),
        (dict(query_features=np.array([["a"]]), gallery_features=np.ones((3, 1))), "numeric"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((3, 4)), k1=0), "k1"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((3, 4)), k2=2.5), "k2"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((3, 4)), lambda_value=1.5), "lambda"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((3, 4)), method="fast"), "method"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((3, 4)), chunk_size=0), "chunk_size"),
        (dict(query_features=np.ones((2, 4)), gallery_features=np.ones((3, 4)), out=np.zeros((3, 2))), "out"),
        (dict(query_features=np.full((2, 4), 1e30), gallery_features=np.ones((3, 4))), "too large"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        re_ranking(**kwargs)
