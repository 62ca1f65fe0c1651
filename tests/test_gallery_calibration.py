"""Threshold calibration against brute-force counting and against known Gaussian distance distributions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.stats import norm

from reid.gallery import calibrate_threshold
from reid.gallery.calibration import labelled_pair_distances, plot_distance_histograms


def brute_force_rates(pos: np.ndarray, neg: np.ndarray, t: float) -> tuple[float, float]:
    fpr = sum(1 for d in neg if d <= t) / len(neg)
    fnr = sum(1 for d in pos if d > t) / len(pos)
    return fpr, fnr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_tied_distances(seed):
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(0.4, 0.15, size=60), 2)  # rounding creates ties between and within the sets
    neg = np.round(rng.normal(0.7, 0.15, size=90), 2)
    candidates = [min(pos.min(), neg.min()) - 1.0, *sorted(set(pos) | set(neg))]
    rates = [brute_force_rates(pos, neg, t) for t in candidates]
    gaps = [abs(f - n) for f, n in rates]
    eer_i = gaps.index(min(gaps))
    report = calibrate_threshold(pos, neg)
    if eer_i > 0:
        assert report.threshold == pytest.approx(candidates[eer_i])
    else:
        assert report.threshold < min(pos.min(), neg.min())
    assert (report.fpr, report.fnr) == pytest.approx(rates[eer_i])
    assert report.eer == pytest.approx(sum(rates[eer_i]) / 2)

    for max_fpr in (0.0, 0.05, 0.3):
        allowed = [i for i, (f, _) in enumerate(rates) if f <= max_fpr]
        report = calibrate_threshold(pos, neg, target=("fpr", max_fpr))
        assert (report.fpr, report.fnr) == pytest.approx(rates[allowed[-1]])
        assert report.fpr <= max_fpr
        if allowed[-1] > 0:
            assert report.threshold == pytest.approx(candidates[allowed[-1]])
        else:
            assert report.threshold < min(pos.min(), neg.min())
        # Any larger candidate threshold would merge more different people than allowed.
        assert all(rates[i][0] > max_fpr for i in range(allowed[-1] + 1, len(candidates)))


def test_recovers_the_analytic_thresholds_of_two_gaussians():
    rng = np.random.default_rng(0)
    mu_pos, mu_neg, sigma, n = 0.3, 0.6, 0.1, 50_000
    pos, neg = rng.normal(mu_pos, sigma, n), rng.normal(mu_neg, sigma, n)
    # Equal spreads: the error curves cross half-way between the means, EER = Phi(-(gap / 2) / sigma).
    report = calibrate_threshold(pos, neg, target="eer")
    assert report.threshold == pytest.approx((mu_pos + mu_neg) / 2, abs=0.005)
    assert report.eer == pytest.approx(norm.cdf(-(mu_neg - mu_pos) / 2 / sigma), abs=0.003)
    # FPR target 1%: the 1% quantile of the negatives; FNR then follows from the positives' tail.
    report = calibrate_threshold(pos, neg, target=("fpr", 0.01))
    expected_t = mu_neg + sigma * norm.ppf(0.01)
    assert report.threshold == pytest.approx(expected_t, abs=0.005)
    assert 0.009 <= report.fpr <= 0.01
    assert report.fnr == pytest.approx(norm.sf((expected_t - mu_pos) / sigma), abs=0.01)
    assert report.num_positive == report.num_negative == n
    assert "FPR" in report.summary() and report.to_dict()["target"] == "fpr<=0.01"


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pos_dists is empty"):
        calibrate_threshold([], [0.5])
    with pytest.raises(ValueError, match="neg_dists has 1 NaN"):
        calibrate_threshold([0.1], [0.5, np.nan])
    with pytest.raises(ValueError, match="target"):
        calibrate_threshold([0.1], [0.5], target="fnr")
    with pytest.raises(ValueError, match="target FPR must be in"):
        calibrate_threshold([0.1], [0.5], target=("fpr", 2.0))


def test_histogram_png_is_written(tmp_path):
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(0.3, 0.1, 500), rng.normal(0.6, 0.1, 500)
    report = calibrate_threshold(pos, neg, target=("fpr", 0.05))
    plot_distance_histograms(pos, neg, report, tmp_path / "out" / "hist.png")
    image = cv2.imread(str(tmp_path / "out" / "hist.png"))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["hist.png"]  # no temporary file left


def test_pair_distances_match_brute_force_and_sample_negatives():
    rng = np.random.default_rng(2)
    qf, gf = rng.normal(size=(15, 8)), rng.normal(size=(25, 8))
    qp, gp = rng.integers(-1, 5, 15), rng.integers(-1, 5, 25)  # -1 = junk, skipped
    qc, gc = rng.integers(0, 3, 15), rng.integers(0, 3, 25)
    pos, neg = labelled_pair_distances(qf, qp, qc, gf, gp, gc, metric="euclidean", max_negatives=10**6)
    ref_pos, ref_neg = [], []
    for i in range(15):
        for j in range(25):
            if qp[i] < 0 or gp[j] < 0:
                continue
            d = float(((qf[i] - gf[j]) ** 2).sum())
            if qp[i] == gp[j] and qc[i] != gc[j]:
                ref_pos.append(d)
            elif qp[i] != gp[j]:
                ref_neg.append(d)
    np.testing.assert_allclose(np.sort(pos), np.sort(ref_pos), rtol=1e-4)
    np.testing.assert_allclose(np.sort(neg), np.sort(ref_neg), rtol=1e-4)

    sampled_pos, sampled = labelled_pair_distances(
        qf, qp, qc, gf, gp, gc, metric="euclidean", max_negatives=100
    )
    assert len(sampled_pos) == len(ref_pos)
    assert 50 <= len(sampled) <= 150 < len(ref_neg)
    assert (np.abs(sampled[:, None] - np.array(ref_neg)[None, :]).min(axis=1) < 1e-3).all()
    with pytest.raises(ValueError, match="gallery: features"):
        labelled_pair_distances(qf, qp, qc, gf, gp[:3], gc)
    with pytest.raises(ValueError, match="more than one camera"):
        labelled_pair_distances(qf, qp, np.zeros(15), gf, gp, np.zeros(25))
