"""How well an appearance descriptor tells people apart, measured on labelled crops of a video.

Same-person pairs are taken at least ``min_gap`` frames apart: consecutive frames of one person are nearly
identical images and would make any descriptor look good, while what tracking and the gallery need is to
recognise a person after they turned, crossed someone or walked into other light. Every different-person
pair is a negative. The summary is threshold-free - the ROC AUC, the probability that a random same-person
pair is closer than a random different-person pair (Mann-Whitney U statistic, ties count half) - plus the
equal error rate of :func:`reid.gallery.calibration.calibrate_threshold`.

The same labelled crops re-derive the appearance thresholds of tracking, stitching and the gallery whenever
the descriptor changes (:func:`derive_appearance_thresholds`, printed by ``tools/eval_descriptor.py``). Each
threshold is a stated percentile of the distances of *different* people at the level the decision compares:
  * tracker (``TrackerConfig``): a track's running feature (exponential moving average with the tracker's
    momentum) against a crop of someone else on screen at the time;
  * stitching and gallery: tracklet features (mean of up to 8 crops spread over ``tracklet_span`` frames)
    of different people.
Where motion already says "same person" (the round-1 veto: the detection overlaps the predicted box; the
stitching gate: the extrapolated trajectories meet) appearance only vetoes a pair that looks less alike than
a typical pair of different people: the median (``VETO_PERCENTILE``). Where appearance decides nearly alone
(re-activating a lost track after a gap; joining a gallery identity) only a small share of different-person
pairs may pass: ``REACTIVATION_PERCENTILE`` and ``GALLERY_PERCENTILE``. These percentiles are the ranks that
the previously hand-tuned thresholds (0.3, 0.16, 0.2, 0.12) had under the descriptor before foreground
weighting on PETS 2009 S2.L1 (p65, p5, p48, p11), rounded to round percentiles.

A trained model's thresholds are taken by the same rule from a labelled image set instead
(:func:`image_set_thresholds`, run by ``tools/calibrate_threshold.py --write-thresholds``): held-out
identities of its training dataset, so that no footage it is later scored on has set them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from reid.evaluation.distance import pairwise_distances
from reid.gallery.calibration import calibrate_threshold


@dataclass(frozen=True)
class Separability:
    auc: float
    eer: float
    num_positive: int
    num_negative: int
    positive_median: float
    negative_median: float


VETO_PERCENTILE = 50.0
REACTIVATION_PERCENTILE = 5.0
GALLERY_PERCENTILE = 10.0


@dataclass(frozen=True)
class AppearanceThresholds:
    """Cosine-distance thresholds for ``TrackerConfig.max_appearance`` and ``.reactivate_appearance``,
    ``StitchConfig.max_appearance`` and a new gallery's match threshold. They belong to one embedder: a
    trained model carries its own in its file (``appearance_thresholds``), the handcrafted descriptor in
    :mod:`reid.video.descriptor`."""

    tracker_veto: float
    reactivation: float
    stitch: float
    gallery: float

    @classmethod
    def from_mapping(cls, values: Mapping[str, float], source: str) -> AppearanceThresholds:
        """Read them back from a stored dict; ``source`` names where it came from in the error."""
        names = [f.name for f in fields(cls)]
        try:
            numbers = {name: float(values[name]) for name in names}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: appearance_thresholds must map {names} to distances,"
                             f" got {values!r}") from error
        bad = {name: v for name, v in numbers.items() if not 0.0 <= v <= 2.0}
        if bad:
            raise ValueError(f"{source}: appearance_thresholds must be cosine distances in [0, 2], got {bad}")
        return cls(**numbers)


def labelled_pair_distances(features: np.ndarray, ids: np.ndarray, frames: np.ndarray, *,
                            min_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances of same-id pairs at least ``min_gap`` frames apart, and of all different-id pairs."""
    features = np.asarray(features, dtype=np.float64)
    ids, frames = np.asarray(ids).ravel(), np.asarray(frames).ravel()
    if features.ndim != 2 or not len(features) == len(ids) == len(frames):
        raise ValueError(f"features {features.shape}, ids {ids.shape} and frames {frames.shape} must "
                         "describe the same crops")
    rows, cols = np.triu_indices(len(ids), k=1)
    dist = pairwise_distances(features, features, "cosine")[rows, cols]
    same = ids[rows] == ids[cols]
    far = np.abs(frames[rows] - frames[cols]) >= min_gap
    return dist[same & far], dist[~same]


def roc_auc(pos_dists: np.ndarray, neg_dists: np.ndarray) -> float:
    """P(positive distance < negative distance) + 0.5 P(equal), from ranks in O(n log n)."""
    pos, neg = np.asarray(pos_dists, np.float64).ravel(), np.asarray(neg_dists, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need positive and negative pairs, got {pos.size} and {neg.size}")
    from scipy.stats import rankdata  # here: scipy.stats costs ~1 s to import, every tool start would pay it

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


def running_feature_negatives(features: np.ndarray, ids: np.ndarray, frames: np.ndarray, *, momentum: float,
                              recent: int = 4) -> np.ndarray:
    """Distances of each person's running feature (EMA of their L2-normalised crop features over frames, as
    the tracker keeps it) to every crop of a different person in a frame where the first was seen within
    ``recent`` frames - the wrong pairs the tracker's association has to reject."""
    features = np.asarray(features, dtype=np.float64)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    ids, frames = np.asarray(ids).ravel(), np.asarray(frames).ravel()
    running: dict[int, np.ndarray] = {}
    last_seen: dict[int, int] = {}
    out: list[float] = []
    for frame in np.unique(frames):
        here = np.flatnonzero(frames == frame)
        for k in here:
            out.extend(1.0 - float(feature @ features[k]) for other, feature in running.items()
                       if other != ids[k] and frame - last_seen[other] <= recent)
        for k in here:
            person = int(ids[k])
            mean = features[k]
            if person in running:
                mean = momentum * running[person] + (1 - momentum) * features[k]
            running[person] = mean / max(float(np.linalg.norm(mean)), 1e-12)
            last_seen[person] = int(frame)
    return np.asarray(out)


def tracklet_features(features: np.ndarray, ids: np.ndarray, frames: np.ndarray, *, span: int = 40,
                      crops: int = 8, min_crops: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Tracklet-level features as the pipeline builds them: per person and window of ``span`` frames, the
    normalised mean of up to ``crops`` crop features spread evenly over the window (windows with fewer than
    ``min_crops`` crops are skipped). Returns (features, ids)."""
    features = np.asarray(features, dtype=np.float64)
    ids, frames = np.asarray(ids).ravel(), np.asarray(frames).ravel()
    out, out_ids = [], []
    for person in np.unique(ids):
        mine = np.flatnonzero(ids == person)
        windows = frames[mine] // span
        for window in np.unique(windows):
            members = mine[windows == window]
            if len(members) < min_crops:
                continue
            members = members[np.argsort(frames[members], kind="stable")]
            chosen = members[np.linspace(0, len(members) - 1, min(crops, len(members))).astype(int)]
            mean = features[chosen].mean(axis=0)
            out.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
            out_ids.append(person)
    return np.asarray(out).reshape(-1, features.shape[1]), np.asarray(out_ids)


def derive_appearance_thresholds(features: np.ndarray, ids: np.ndarray, frames: np.ndarray, *,
                                 momentum: float, tracklet_span: int = 40) -> AppearanceThresholds:
    """The appearance thresholds for the current descriptor, from labelled crops (see module docstring)."""
    running = running_feature_negatives(features, ids, frames, momentum=momentum)
    tracklets, tracklet_ids = tracklet_features(features, ids, frames, span=tracklet_span)
    return _percentile_thresholds(running, _different_pair_distances(tracklets, tracklet_ids))


def _different_pair_distances(features: np.ndarray, ids: np.ndarray) -> np.ndarray:
    rows, cols = np.triu_indices(len(ids), k=1)
    different = ids[rows] != ids[cols]
    return pairwise_distances(features, features, "cosine")[rows, cols][different]


def image_set_thresholds(features: np.ndarray, pids: np.ndarray, camids: np.ndarray, *, momentum: float,
                         tracklet_crops: int = 8) -> AppearanceThresholds:
    """The same thresholds from a labelled re-ID image set (no frame numbers), e.g. held-out identities of
    a dataset: so that a trained model's gates come from people and cameras that no test footage shares.

    Each (person, camera) group of images, in the given order, stands in for a track: the running feature
    is its exponential moving average (``momentum``, as the tracker keeps it) after each image, compared to
    every image of other people; the tracklet feature is the normalised mean of its first
    ``tracklet_crops`` images, compared to other people's tracklet features.
    """
    features = np.asarray(features, dtype=np.float64)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    pids, camids = np.asarray(pids).ravel(), np.asarray(camids).ravel()
    if features.ndim != 2 or not len(features) == len(pids) == len(camids):
        raise ValueError(f"features {features.shape}, pids {pids.shape} and camids {camids.shape} must "
                         "describe the same images")
    states, state_pids, tracklets, tracklet_pids = [], [], [], []
    for pid, camid in sorted(set(zip(pids.tolist(), camids.tolist(), strict=True))):
        members = np.flatnonzero((pids == pid) & (camids == camid))
        running = features[members[0]]
        for k in members:
            if k != members[0]:
                running = momentum * running + (1 - momentum) * features[k]
                running = running / max(float(np.linalg.norm(running)), 1e-12)
            states.append(running)
            state_pids.append(pid)
        mean = features[members[:tracklet_crops]].mean(axis=0)
        tracklets.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        tracklet_pids.append(pid)
    states_arr, state_pids_arr = np.asarray(states).reshape(-1, features.shape[1]), np.asarray(state_pids)
    different = state_pids_arr[:, None] != pids[None, :]
    running_negatives = pairwise_distances(states_arr, features, "cosine")[different]
    tracklet_negatives = _different_pair_distances(
        np.asarray(tracklets).reshape(-1, features.shape[1]), np.asarray(tracklet_pids))
    return _percentile_thresholds(running_negatives, tracklet_negatives)


def _percentile_thresholds(running: np.ndarray, tracklet_negatives: np.ndarray) -> AppearanceThresholds:
    if running.size == 0 or tracklet_negatives.size == 0:
        raise ValueError(f"found {running.size} running-feature and {tracklet_negatives.size} tracklet "
                         "different-person pairs; need two or more people "
                         "(in a video: on screen together, on longer tracks)")
    return AppearanceThresholds(
        tracker_veto=float(np.percentile(running, VETO_PERCENTILE)),
        reactivation=float(np.percentile(running, REACTIVATION_PERCENTILE)),
        stitch=float(np.percentile(tracklet_negatives, VETO_PERCENTILE)),
        gallery=float(np.percentile(tracklet_negatives, GALLERY_PERCENTILE)),
    )
