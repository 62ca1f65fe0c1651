"""Choose the match threshold from data: distances of same-person (positive) and different-person (negative)
pairs.

A pair matches when its distance is <= the threshold, so at threshold t
FPR(t) = share of negatives with d <= t (two people merged into one identity) and
FNR(t) = share of positives with d > t (one person split into two identities).
``target="eer"`` picks the t where FPR and FNR are closest (the equal error rate); ``("fpr", x)`` picks the
largest t whose FPR is at most x, i.e. the best recall that keeps merges of different people that rare.

Caveat: pairs of single images are noisier than the track-level features the gallery compares (a track feature
averages several crops), so a threshold calibrated on image pairs is conservative for tracks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from reid.gallery.metric import check_metric, pairwise_distances
from reid.utils.io import atomic_save_figure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThresholdReport:
    """The chosen threshold and its error rates; ``eer`` and ``eer_threshold`` are given for any target."""

    threshold: float
    fpr: float
    fnr: float
    eer: float
    eer_threshold: float
    target: str
    num_positive: int
    num_negative: int
    positive_median: float
    negative_median: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"threshold {self.threshold:.4f} ({self.target}): FPR {100 * self.fpr:.2f}% "
            f"(different people merged), FNR {100 * self.fnr:.2f}% (one person split); "
            f"EER {100 * self.eer:.2f}% at {self.eer_threshold:.4f}; "
            f"{self.num_positive} positive / {self.num_negative} negative pairs, "
            f"median distance {self.positive_median:.4f} / {self.negative_median:.4f}"
        )


def _as_distances(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty: calibration needs both positive and negative pairs")
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} NaN or infinite distance(s)")
    return np.sort(array)


def _parse_target(target: str | tuple[str, float]) -> tuple[str, float | None]:
    if target == "eer":
        return "eer", None
    if isinstance(target, tuple) and len(target) == 2 and target[0] == "fpr":
        rate = float(target[1])
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"target FPR must be in [0, 1], got {rate}")
        return f"fpr<={rate:g}", rate
    raise ValueError(f'target must be "eer" or ("fpr", rate), got {target!r}')


def error_rates(
    pos_sorted: np.ndarray, neg_sorted: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, ...]:
    """(FPR, FNR) at each threshold, by binary search in the sorted distances."""
    fpr = np.searchsorted(neg_sorted, thresholds, side="right") / neg_sorted.size
    fnr = 1.0 - np.searchsorted(pos_sorted, thresholds, side="right") / pos_sorted.size
    return fpr, fnr


def calibrate_threshold(
    pos_dists: np.ndarray, neg_dists: np.ndarray, *, target: str | tuple[str, float] = "eer"
) -> ThresholdReport:
    """Threshold over pair distances for ``target`` ("eer" or ("fpr", max_rate)); see the module docstring."""
    pos, neg = _as_distances(pos_dists, "pos_dists"), _as_distances(neg_dists, "neg_dists")
    label, max_fpr = _parse_target(target)
    # Every distinct distance is a place where a rate changes; below the smallest one nothing matches.
    values = np.unique(np.concatenate([pos, neg]))
    candidates = np.concatenate([[np.nextafter(values[0], -np.inf)], values])
    fpr, fnr = error_rates(pos, neg, candidates)
    eer_i = int(np.argmin(np.abs(fpr - fnr)))
    if max_fpr is None:
        chosen = eer_i
    else:
        chosen = int(np.flatnonzero(fpr <= max_fpr)[-1])  # the lowest candidate always has FPR 0
    return ThresholdReport(
        threshold=float(candidates[chosen]),
        fpr=float(fpr[chosen]),
        fnr=float(fnr[chosen]),
        eer=float((fpr[eer_i] + fnr[eer_i]) / 2),
        eer_threshold=float(candidates[eer_i]),
        target=label,
        num_positive=int(pos.size),
        num_negative=int(neg.size),
        positive_median=float(np.median(pos)),
        negative_median=float(np.median(neg)),
    )


def plot_distance_histograms(
    pos_dists: np.ndarray,
    neg_dists: np.ndarray,
    report: ThresholdReport,
    path: str | Path,
    *,
    title: str = "",
) -> None:
    """Write a PNG of both distance histograms (densities) with the chosen and the EER thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos, neg = np.asarray(pos_dists, dtype=np.float64), np.asarray(neg_dists, dtype=np.float64)
    bins = np.linspace(min(pos.min(), neg.min()), max(pos.max(), neg.max()), 80)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(pos, bins=bins, density=True, alpha=0.55, color="tab:green", label=f"same person ({pos.size})")
    ax.hist(neg, bins=bins, density=True, alpha=0.55, color="tab:red", label=f"different people ({neg.size})")
    ax.axvline(
        report.threshold,
        color="black",
        linestyle="-",
        label=f"threshold {report.threshold:.3f} ({report.target}): FPR {100 * report.fpr:.1f}%, "
        f"FNR {100 * report.fnr:.1f}%",
    )
    if not math.isclose(report.eer_threshold, report.threshold):
        ax.axvline(
            report.eer_threshold,
            color="grey",
            linestyle="--",
            label=f"EER {100 * report.eer:.1f}% at {report.eer_threshold:.3f}",
        )
    ax.set_xlabel("distance")
    ax.set_ylabel("density")
    ax.set_title(title or "Pair distance distributions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def labelled_pair_distances(
    query_features: np.ndarray,
    query_pids: np.ndarray,
    query_camids: np.ndarray,
    gallery_features: np.ndarray,
    gallery_pids: np.ndarray,
    gallery_camids: np.ndarray,
    *,
    metric: str = "cosine",
    max_negatives: int = 200_000,
    chunk_size: int = 256,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive (same pid, different camera) and negative (different pid) query-gallery pair distances.

    Cross-camera positives mirror what a gallery must match (another track, usually another view); junk pids
    (< 0) are skipped. Negatives are a uniform random sample of at most ``max_negatives`` pairs (seeded);
    positives are all kept. Pass the same set twice to use every pair within one set.
    """
    check_metric(metric)
    qf, gf = np.asarray(query_features, dtype=np.float32), np.asarray(gallery_features, dtype=np.float32)
    qp, qc = np.asarray(query_pids).ravel(), np.asarray(query_camids).ravel()
    gp, gc = np.asarray(gallery_pids).ravel(), np.asarray(gallery_camids).ravel()
    for name, feats, pids, cams in (("query", qf, qp, qc), ("gallery", gf, gp, gc)):
        if feats.ndim != 2 or len(feats) != len(pids) or len(pids) != len(cams):
            raise ValueError(
                f"{name}: features {feats.shape}, pids {pids.shape} and camids {cams.shape} must "
                "describe the same number of samples"
            )
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"query features have dimension {qf.shape[1]} but gallery features {gf.shape[1]}")
    q_valid, g_valid = qp >= 0, gp >= 0
    # Exact number of negative pairs, so each chunk can take its proportional share of the sample.
    pid_counts = dict(zip(*np.unique(gp[g_valid], return_counts=True), strict=True))
    total_neg = int(sum(g_valid.sum() - pid_counts.get(p, 0) for p in qp[q_valid]))
    keep_ratio = min(1.0, max_negatives / total_neg) if total_neg else 0.0
    rng = np.random.default_rng(seed)
    positives, negatives = [], []
    for start in tqdm(
        range(0, len(qf), chunk_size), desc="pair distances", unit="chunk", disable=len(qf) <= 4 * chunk_size
    ):
        rows = slice(start, start + chunk_size)
        dist = pairwise_distances(qf[rows], gf, metric)
        valid = q_valid[rows, None] & g_valid[None, :]
        same = qp[rows, None] == gp[None, :]
        positives.append(dist[valid & same & (qc[rows, None] != gc[None, :])])
        neg = dist[valid & ~same]
        if keep_ratio < 1.0:
            neg = neg[rng.random(neg.size) < keep_ratio]
        negatives.append(neg)
    pos, neg = np.concatenate(positives), np.concatenate(negatives)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"found {pos.size} positive (same pid, different camera) and {neg.size} negative pairs; "
            "calibration needs identities seen by more than one camera and more than one identity"
        )
    logger.info("pair distances: %d positive, %d negative (of %d)", pos.size, neg.size, total_neg)
    return pos, neg
