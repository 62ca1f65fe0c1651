"""A match threshold calibrated on the video itself, from pairs of tracks that are certainly different people.

Two tracks visible in the same frame are two people: every such pair is a free, correctly labelled negative
(the co-occurrence constraint that many tracking-by-re-ID works rely on). Their feature distances show
how close *different* people of this footage look under the current descriptor - for a weak descriptor
(the handcrafted colour histograms, with many people in dark clothes) much closer than on the data the gallery
threshold was set on. Capping the gallery threshold at a low quantile of these distances (``max_fpr``, the
share of different-person pairs that would still merge; see :mod:`reid.gallery.calibration`) makes the
gallery merge tracks of this video only when the descriptor separates people here, and keep the tracker's
split otherwise: a wrong merge costs identity precision for both people, a missed one only a fragment.

Only pairs whose boxes never overlap count: at a crossing, or when one person is detected twice, two tracks
can swap or share crops, and a single such pair (distance near 0) would set the cap and stop all matching.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from reid.gallery.metric import pairwise_distances

logger = logging.getLogger(__name__)

MIN_COVISIBLE_PAIRS = 10
"""Fewest co-visible track pairs from which a video's own percentile replaces the model's gate."""


def covisible_distances(spans: Sequence[tuple[int, int]], features: np.ndarray, *, metric: str,
                        boxes: Sequence[Mapping[int, np.ndarray]] | None = None) -> np.ndarray:
    """Gallery-``metric`` distances (:mod:`reid.gallery.metric`, the units of the threshold they cap) of all
    track pairs whose frame spans ``(first, last)`` overlap (different people).

    With ``boxes`` (per track, frame -> x, y, w, h), a pair counts only when its boxes never overlap in the
    frames both were seen: two tracks whose boxes touch (people crossing, walking close, or one person
    detected twice) may have swapped or mixed crops, so their features are not those of two clean, different
    people - one such pair would otherwise set the cap.
    """
    if len(spans) != len(features) or (boxes is not None and len(boxes) != len(spans)):
        raise ValueError(f"{len(spans)} spans, {len(features)} features"
                         + ("" if boxes is None else f" and {len(boxes)} box tracks") + " must match")
    if len(spans) < 2:
        return np.zeros(0)
    first = np.array([s[0] for s in spans])
    last = np.array([s[1] for s in spans])
    overlap = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    rows, cols = np.nonzero(np.triu(overlap, k=1))
    if boxes is not None:
        apart = np.array([_never_overlap(boxes[i], boxes[j]) for i, j in zip(rows, cols, strict=True)], bool)
        rows, cols = rows[apart], cols[apart]
    features = np.asarray(features, np.float32)
    return pairwise_distances(features, features, metric)[rows, cols].astype(np.float64)


def _never_overlap(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> bool:
    """No frame seen by both where the two x, y, w, h boxes share any area (compared frame by frame)."""
    shared = sorted(a.keys() & b.keys())
    if not shared:
        return True
    boxes_a = np.array([a[f] for f in shared], dtype=np.float64)
    boxes_b = np.array([b[f] for f in shared], dtype=np.float64)
    lo = np.maximum(boxes_a[:, :2], boxes_b[:, :2])
    hi = np.minimum(boxes_a[:, :2] + boxes_a[:, 2:], boxes_b[:, :2] + boxes_b[:, 2:])
    return not bool(np.any(np.all(hi > lo, axis=1)))


def video_match_threshold(spans: Sequence[tuple[int, int]], features: np.ndarray, ceiling: float, *,
                          metric: str, max_fpr: float = 0.02, min_pairs: int = MIN_COVISIBLE_PAIRS,
                          boxes: Sequence[Mapping[int, np.ndarray]] | None = None) -> float:
    """``ceiling`` (the gallery's threshold) lowered so that at most ``max_fpr`` of the co-visible
    (different-person) track pairs of this video would match; ``ceiling`` when there are fewer than
    ``min_pairs`` such pairs to measure. ``boxes``: see :func:`covisible_distances`."""
    negatives = covisible_distances(spans, features, metric=metric, boxes=boxes)
    if len(negatives) < min_pairs:
        warn_uncapped(len(negatives), min_pairs, ceiling)
        return float(ceiling)
    threshold = capped_threshold(negatives, ceiling, max_fpr)
    logger.info("match threshold for this video %.4f (gallery %.4f; %d co-visible pairs, median %.4f)",
                threshold, ceiling, len(negatives), float(np.median(negatives)))
    return threshold


def capped_threshold(negatives: np.ndarray, ceiling: float, max_fpr: float) -> float:
    """``ceiling`` lowered to the largest distance that at most ``max_fpr`` of the ``negatives`` reach (the
    FPR target of :func:`reid.gallery.calibration.calibrate_threshold`; only the negatives matter for it)."""
    negatives = np.sort(np.asarray(negatives, dtype=np.float64))
    within = np.searchsorted(negatives, negatives, side="right") <= max_fpr * len(negatives)
    cut = float(negatives[within][-1]) if within.any() else float(np.nextafter(negatives[0], -np.inf))
    return min(float(ceiling), cut)


def warn_uncapped(pairs: int, min_pairs: int, ceiling: float) -> None:
    logger.warning("only %d pair(s) of tracks seen apart at the same time (%d needed): the gallery "
                   "threshold %.4f, calibrated on the model's training data, is not checked against this "
                   "footage; if different people merge here, set --match-threshold lower",
                   pairs, min_pairs, ceiling)


class StreamMatchThreshold:
    """:func:`video_match_threshold` for a live stream, whose tracks go to the gallery one by one as they
    end: the cap comes from the co-visible pairs among the tracks that have ended so far (the latest
    ``window``), and is None (the gallery's own threshold) until ``min_pairs`` of them are in."""

    def __init__(self, *, metric: str, max_fpr: float, min_pairs: int = MIN_COVISIBLE_PAIRS,
                 window: int = 200) -> None:
        self.metric, self.max_fpr, self.min_pairs = metric, float(max_fpr), int(min_pairs)
        self._tracks: deque[tuple[tuple[int, int], np.ndarray, Mapping[int, np.ndarray]]] = deque(
            maxlen=int(window))
        self.pairs = 0
        """Co-visible pairs among the tracks recorded so far (within the window)."""

    def add(self, span: tuple[int, int], feature: np.ndarray, boxes: Mapping[int, np.ndarray],
            ceiling: float) -> float | None:
        """Record an ended track; the threshold for it (None: too few pairs yet, use the gallery's)."""
        self._tracks.append((span, np.asarray(feature, np.float32), boxes))
        spans, features, box_maps = zip(*self._tracks, strict=True)
        negatives = covisible_distances(spans, np.stack(features), metric=self.metric, boxes=box_maps)
        self.pairs = len(negatives)
        if len(negatives) < self.min_pairs:
            return None
        return capped_threshold(negatives, ceiling, self.max_fpr)


def percentile_cap(negatives: np.ndarray, gate: float, percentile: float) -> float:
    """``gate``, or the ``percentile`` of this footage's different-person distances when that is lower: the
    rule of the model's gates (:mod:`reid.video.separability`) applied to the footage's own pairs."""
    return min(gate, float(np.percentile(negatives, percentile)))


class CovisibleNegatives:
    """A running sample of this footage's certainly-different-person distances, at the level of the tracker:
    a track's running feature against the crop of another person detected in the same frame whose box does
    not touch the track's (the level of :func:`reid.video.separability.running_feature_negatives`).

    The tracker's appearance gates are stated percentiles of such distances on the model's held-out training
    identities; on footage unlike them every distance shrinks (people of one scene share light, background
    and camera), and a gate set where different people are 0.98 apart passes nearly everyone where they are
    0.5 apart. :meth:`cap` lowers a gate to the same percentile of this footage's own distances, once
    ``min_count`` of them are in; the most recent ``capacity`` are kept, so the gate follows the scene.
    """

    def __init__(self, min_count: int = 50, capacity: int = 5000) -> None:
        self.min_count = int(min_count)
        self._values: deque[float] = deque(maxlen=int(capacity))

    def __len__(self) -> int:
        return len(self._values)

    def distances(self) -> np.ndarray:
        return np.fromiter(self._values, float, count=len(self._values))

    def add(self, distances: np.ndarray) -> None:
        self._values.extend(float(d) for d in np.ravel(distances))

    def cap(self, gate: float, percentile: float) -> float:
        """``gate``, or the ``percentile`` of the distances seen so far if lower (once enough are in)."""
        if len(self._values) < self.min_count:
            return gate
        return percentile_cap(self.distances(), gate, percentile)
