"""evaluate_rank against a slow, obviously-correct per-query walk of a stable ranking."""

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.evaluation import evaluate_rank
from reid.evaluation.input_checks import EvaluationInputError


def reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, ap_mode, junk_pids=()):
    """Per query: stable argsort, drop same pid+cam and junk entries, walk the list and score."""
    cmc_hits = np.zeros(max_rank)
    aps, inps = [], []
    per_query_ap = np.full(len(q_pids), np.nan)
    for q in range(len(q_pids)):
        order = np.argsort(distmat[q], kind="stable")
        kept = [
            g
            for g in order
            if g_pids[g] not in junk_pids and not (g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q])
        ]
        is_match = [g_pids[g] == q_pids[q] for g in kept]
        num_matches = sum(is_match)
        if num_matches == 0:
            continue
        match_ranks = [position + 1 for position, hit in enumerate(is_match) if hit]
        cmc_hits[match_ranks[0] - 1 :] += 1
        if ap_mode == "noninterpolated":
            ap = np.mean([(i + 1) / rank for i, rank in enumerate(match_ranks)])
        else:  # literal transcription of the Market-1501 Matlab compute_AP loop
            ap, old_recall, old_precision, found = 0.0, 0.0, 1.0, 0
            for position, hit in enumerate(is_match):
                found += hit
                recall, precision = found / num_matches, found / (position + 1)
                ap += (recall - old_recall) * (old_precision + precision) / 2
                old_recall, old_precision = recall, precision
                if found == num_matches:
                    break
        aps.append(ap)
        per_query_ap[q] = ap
        inps.append(num_matches / match_ranks[-1])
    return {
        "cmc": cmc_hits / len(aps),
        "mAP": np.mean(aps),
        "mINP": np.mean(inps),
        "num_valid_queries": len(aps),
        "AP": per_query_ap,
    }


def random_problem(seed, num_query=40, num_gallery=300, num_ids=25, num_cams=3, distance_levels=None):
    """Random pids (0 = distractor, -1 = junk, some query pids absent from the gallery) and cameras.

    ``distance_levels`` quantises distances so exact ties (including -0.0 vs 0.0) are frequent.
    """
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(-1, num_ids, num_gallery)
    g_camids = rng.integers(0, num_cams, num_gallery)
    q_pids = rng.integers(1, num_ids + 3, num_query)
    q_camids = rng.integers(0, num_cams, num_query)
    if distance_levels is None:
        distmat = rng.standard_normal((num_query, num_gallery)).astype(np.float32)
    else:
        distmat = rng.integers(0, distance_levels, (num_query, num_gallery)).astype(np.float32) / 2
        distmat[rng.random(distmat.shape) < 0.1] = -0.0
    # A query whose only matches share its camera must be skipped, not scored.
    q_pids[0], q_camids[0] = num_ids + 5, 0
    g_pids[:2], g_camids[:2] = num_ids + 5, 0
    return distmat, q_pids, g_pids, q_camids, g_camids


def assert_same_metrics(result, expected):
    np.testing.assert_allclose(result["cmc"], expected["cmc"], rtol=0, atol=1e-6)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-6)
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    np.testing.assert_allclose(result["AP"], expected["AP"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("ap_mode", ["noninterpolated", "trapezoidal"])
@pytest.mark.parametrize("distance_levels", [None, 3, 12])
@pytest.mark.parametrize("junk_pids", [(), (-1,), (-1, 0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_walk(ap_mode, distance_levels, junk_pids, seed):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(seed, distance_levels=distance_levels)
    expected = reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, 20, ap_mode, junk_pids)
    result = evaluate_rank(
        distmat, q_pids, g_pids, q_camids, g_camids, 20, ap_mode=ap_mode, junk_pids=list(junk_pids) or None
    )
    assert_same_metrics(result, expected)
    assert result["num_skipped_queries"] == len(q_pids) - expected["num_valid_queries"]
    assert np.isnan(result["AP"][0]) and result["first_match_rank"][0] == 0


def test_market_like_problem_matches_reference():
    """Many gallery entries per id across cameras, continuous distances: the production regime."""
    rng = np.random.default_rng(7)
    num_ids, num_cams = 60, 6
    g_pids = np.concatenate([rng.integers(1, num_ids + 1, 1500), np.zeros(300, dtype=np.int64)])
    g_camids = rng.integers(0, num_cams, g_pids.size)
    q_pids = rng.integers(1, num_ids + 1, 150)
    q_camids = rng.integers(0, num_cams, 150)
    distmat = rng.random((150, g_pids.size), dtype=np.float32)
    distmat[q_pids[:, None] == g_pids[None, :]] *= 0.6  # better than chance, like a trained model
    for ap_mode in ("noninterpolated", "trapezoidal"):
        expected = reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, 50, ap_mode)
        result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, 50, ap_mode=ap_mode)
        assert_same_metrics(result, expected)


@pytest.mark.parametrize(("chunk_size", "num_threads"), [(1, 1), (1, 3), (7, 2), (1000, 1)])
def test_chunking_and_threads_do_not_change_results(chunk_size, num_threads):
    problem = random_problem(3, distance_levels=4)
    whole = evaluate_rank(*problem, 30, num_threads=1)
    chunked = evaluate_rank(*problem, 30, chunk_size=chunk_size, num_threads=num_threads)
    for key in ("cmc", "AP", "INP", "first_match_rank"):
        np.testing.assert_array_equal(chunked[key], whole[key])


def test_accepts_torch_tensors_and_float64():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(4)
    base = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    as_torch = evaluate_rank(*(torch.from_numpy(np.asarray(a)) for a in random_problem(4)))
    as_float64 = evaluate_rank(distmat.astype(np.float64), q_pids, g_pids, q_camids, g_camids)
    for other in (as_torch, as_float64):
        np.testing.assert_array_equal(other["cmc"], base["cmc"])
        assert other["mAP"] == base["mAP"]


def test_exact_ties_are_broken_by_gallery_index():
    """All distances equal: the ranking is the gallery order, so a match at index 3 is rank 4."""
    distmat = np.zeros((1, 6), dtype=np.float32)
    g_pids = np.array([5, 6, 7, 1, 8, 1])
    result = evaluate_rank(distmat, [1], g_pids, [0], np.ones(6, dtype=int), max_rank=6)
    assert result["first_match_rank"][0] == 4
    assert result["mAP"] == pytest.approx((1 / 4 + 2 / 6) / 2)
    assert result["mINP"] == pytest.approx(2 / 6)


def test_cmc_keeps_max_rank_length_and_saturates_on_small_gallery():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(5, num_gallery=30)
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=100)
    assert result["cmc"].shape == (100,)
    assert np.all(np.diff(result["cmc"]) >= 0)
    assert result["cmc"][-1] == 1.0
    assert np.all(result["cmc"][30:] == result["cmc"][29])


def test_same_camera_only_matches_raise_a_clear_error():
    distmat = np.random.default_rng(0).random((3, 5)).astype(np.float32)
    with pytest.raises(EvaluationInputError, match="none of the 3 queries has a valid gallery match.*camera"):
        evaluate_rank(distmat, [1, 2, 3], [1, 2, 3, 1, 2], [0, 0, 0], [0, 0, 0, 0, 0])


def test_partly_skipped_queries_warn_with_a_count(caplog):
    distmat = np.random.default_rng(0).random((3, 5)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="reid.evaluation.input_checks"):
        result = evaluate_rank(distmat, [1, 2, 3], [1, 2, 3, 1, 2], [0, 0, 1], [0, 0, 0, 0, 0])
    assert result["num_valid_queries"] == 1 and result["num_skipped_queries"] == 2
    assert "2 of 3 queries" in caplog.text


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((np.zeros((2, 3)), [1, 2], [1, 2], [0, 1], [0, 1, 0]), "g_pids: has 2 entries but 3"),
        ((np.zeros((2, 3)), [1], [1, 2, 3], [0, 1], [0, 1, 0]), "q_pids: has 1 entries but 2"),
        ((np.zeros((0, 3)), [], [1, 2, 3], [], [0, 1, 0]), "query set is empty"),
        ((np.zeros((2, 0)), [1, 2], [], [0, 1], []), "gallery is empty"),
        ((np.zeros(3), [1], [1, 2, 3], [0], [0, 1, 0]), "2-D"),
        ((np.zeros((2, 3)), [1.5, 2], [1, 2, 3], [0, 1], [0, 1, 0]), "q_pids: expected integer labels"),
    ],
)
def test_bad_shapes_and_labels_name_the_argument(arguments, message):
    with pytest.raises(EvaluationInputError, match=message):
        evaluate_rank(*arguments)


def test_nan_distances_report_count_and_rows():
    distmat = np.zeros((4, 3), dtype=np.float32)
    distmat[1, 0] = distmat[3, 2] = np.nan
    distmat[3, 1] = np.inf
    expected = r"distmat: contains NaN or infinite values: 3 values in rows \[1, 3\]"
    with pytest.raises(EvaluationInputError, match=expected):
        evaluate_rank(distmat, [1, 2, 3, 4], [1, 2, 3], [0, 0, 0, 0], [1, 1, 1])


def test_rejects_unknown_ap_mode_and_bad_max_rank():
    problem = random_problem(0)
    with pytest.raises(EvaluationInputError, match="ap_mode"):
        evaluate_rank(*problem, ap_mode="interpolated")
    with pytest.raises(EvaluationInputError, match="max_rank"):
        evaluate_rank(*problem, max_rank=0)


def test_benchmark_script_runs_tiny_and_agrees(capsys):
    """tools/benchmark_eval.py compares against its own baseline; a tiny run must report equal numbers."""
    path = Path(__file__).resolve().parents[1] / "tools" / "benchmark_eval.py"
    spec = importlib.util.spec_from_file_location("benchmark_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sizes = ["--num-query", "30", "--num-gallery", "200", "--num-ids", "12", "--num-distractors", "10"]
    assert module.main([*sizes, "--section", "eval", "--repeats", "1", "--match-scale", "0.3"]) == 0
    assert "-> EQUAL" in capsys.readouterr().out


def test_no_valid_query_says_whether_identities_or_cameras_are_the_cause():
    dist = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(EvaluationInputError, match="none of the 2 query identities appears in the gallery"):
        evaluate_rank(dist, np.array([1, 2]), np.array([3, 4, 5]), np.array([0, 1]), np.array([0, 1, 0]))
    with pytest.raises(EvaluationInputError, match="camera_regex") as error:
        evaluate_rank(dist, np.array([1, 2]), np.array([1, 2, 2]), np.zeros(2), np.zeros(3))
    assert "--camids" not in str(error.value)  # no tool has such a flag


def test_disjoint_query_and_gallery_cameras_are_warned_about(caplog):
    rng = np.random.default_rng(0)
    dist = rng.random((4, 6)).astype(np.float32)
    q_pids, g_pids = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3, 0, 1])
    with caplog.at_level("WARNING"):
        evaluate_rank(dist, q_pids, g_pids, np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0, 1, 0]))
    assert "share no camera" not in caplog.text
    with caplog.at_level("WARNING"):
        evaluate_rank(dist, q_pids, g_pids, np.zeros(4), np.ones(6))
    assert "share no camera" in caplog.text
