"""How well an appearance descriptor tells people apart, measured on labelled crops of a video.

Same-person pairs are taken at least ``min_gap`` frames apart: consecutive frames of one person are nearly
identical images and would make any descriptor look good, while what tracking and the gallery need is to
recognise a person after they turned, crossed someone or walked into other light. Every different-person
pair is a negative. The summary is threshold-free - the ROC AUC, the probability that a random same-person
pair is closer than a random different-person pair (Mann-Whitney U statistic, ties count half) - plus the
equal error rate of :func:`reid.gallery.calibration.calibrate_threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from reid.gallery.calibration import calibrate_threshold
from reid.video.tracking import cosine_distances


@dataclass(frozen=True)
class Separability:
    auc: float
    eer: float
    num_positive: int
    num_negative: int
    positive_median: float
    negative_median: float


def labelled_pair_distances(features: np.ndarray, ids: np.ndarray, frames: np.ndarray, *,
                            min_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances of same-id pairs at least ``min_gap`` frames apart, and of all different-id pairs."""
    features = np.asarray(features, dtype=np.float64)
    ids, frames = np.asarray(ids).ravel(), np.asarray(frames).ravel()
    if features.ndim != 2 or not len(features) == len(ids) == len(frames):
        raise ValueError(f"features {features.shape}, ids {ids.shape} and frames {frames.shape} must "
                         "describe the same crops")
    rows, cols = np.triu_indices(len(ids), k=1)
    dist = cosine_distances(features, features)[rows, cols]
    same = ids[rows] == ids[cols]
    far = np.abs(frames[rows] - frames[cols]) >= min_gap
    return dist[same & far], dist[~same]


def roc_auc(pos_dists: np.ndarray, neg_dists: np.ndarray) -> float:
    """P(positive distance < negative distance) + 0.5 P(equal), from ranks in O(n log n)."""
    pos, neg = np.asarray(pos_dists, np.float64).ravel(), np.asarray(neg_dists, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need positive and negative pairs, got {pos.size} and {neg.size}")
    ranks = rankdata(np.concatenate([pos, neg]))  # ascending distance, ties get their mean rank
    # Sum of negative ranks minus its minimum = number of (pos, neg) pairs with the negative farther.
    u_neg = ranks[pos.size:].sum() - neg.size * (neg.size + 1) / 2
    return float(u_neg / (pos.size * neg.size))


def separability(features: np.ndarray, ids: np.ndarray, frames: np.ndarray, *, min_gap: int) -> Separability:
    pos, neg = labelled_pair_distances(features, ids, frames, min_gap=min_gap)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"found {pos.size} same-person pairs >= {min_gap} frames apart and {neg.size} "
                         "different-person pairs; need both (more frames or identities)")
    report = calibrate_threshold(pos, neg)
    return Separability(roc_auc(pos, neg), report.eer, int(pos.size), int(neg.size),
                        float(np.median(pos)), float(np.median(neg)))
