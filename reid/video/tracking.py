"""Multi-person tracking by detection: Kalman motion, IoU + appearance association, births, deaths, re-finds.

Per frame every track's constant-velocity Kalman filter predicts where its person is. On frames that have
detections (every frame, or every k-th with a detection stride) they are associated in three rounds, each a
Hungarian assignment (``scipy.optimize.linear_sum_assignment``) over a gated cost:

1. tracks seen recently vs detections: cost mixes ``1 - IoU`` of the predicted box with the appearance
   distance; pairs with too little overlap or too different a look are forbidden;
2. lost tracks (unseen for a while, but confirmed) vs the leftovers: re-activation when the person could
   have walked from where the track was last seen to the detection in the elapsed time (at most
   ``max_speed`` box heights per second, similar box size) *and* the detection looks like the track - so a
   person who was occluded keeps their id instead of getting a new one;
3. leftover detections start tentative tracks.

A tentative track is confirmed after ``n_init`` matched detections and dropped if it misses one before;
a confirmed track that stays unmatched for ``max_age_s`` seconds ends and is reported as finished.
Motion is modelled in ``(cx, cy, aspect, height)`` with noise proportional to the box height, the usual
choice for pedestrians whose apparent size changes with distance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from reid.evaluation.distance import pairwise_distances
from reid.video.boxes import SIMILAR_HEIGHT, iou_matrix
from reid.video.quality import occlusion_fractions
from reid.video.self_calibration import CovisibleNegatives
from reid.video.separability import REACTIVATION_PERCENTILE, VETO_PERCENTILE

_INFEASIBLE = 1e6

logger = logging.getLogger(__name__)


def xywh_to_xyah(box: np.ndarray) -> np.ndarray:
    x, y, w, h = np.asarray(box, dtype=np.float64)
    return np.array([x + w / 2, y + h / 2, w / max(h, 1e-6), h])


def xyah_to_xywh(state: np.ndarray) -> np.ndarray:
    cx, cy, a, h = state[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, w, h])


NOISE_REFERENCE_FPS = 10.0
"""Frame rate at which :class:`KalmanBoxFilter`'s per-step noise has DeepSORT's values (the rate the tracker's
settings were chosen at); at other rates the noise per step is rescaled to the same noise per second."""


class KalmanBoxFilter:
    """Constant-velocity Kalman filter over ``(cx, cy, a, h)`` and their velocities (per frame).

    Noise proportional to the box height, with DeepSORT's weights (Wojke et al. 2017: 1/20 of the height for
    positions, 1/160 per step for velocities) at :data:`NOISE_REFERENCE_FPS`. At ``fps`` the process noise
    per step is that of a continuous random walk over 1/fps s: position std times sqrt(ref/fps), velocity
    (px per frame) std times (ref/fps)**1.5, the starting velocity std times ref/fps; so 12 predictions at
    30 fps spread a box as far as 4 at 10 fps."""

    _POS_STD = 1.0 / 20
    _VEL_STD = 1.0 / 160

    def __init__(self, box_xywh: np.ndarray, fps: float = NOISE_REFERENCE_FPS) -> None:
        ratio = NOISE_REFERENCE_FPS / float(fps)
        self._pos_step = self._POS_STD * np.sqrt(ratio)
        self._vel_step = self._VEL_STD * ratio**1.5
        measurement = xywh_to_xyah(box_xywh)
        self.mean = np.r_[measurement, np.zeros(4)]
        h = measurement[3]
        velocity_std = 10 * self._VEL_STD * ratio * h
        std = np.array([2 * self._POS_STD * h, 2 * self._POS_STD * h, 1e-2, 2 * self._POS_STD * h,
                        velocity_std, velocity_std, 1e-5 * ratio, velocity_std])
        self.cov = np.diag(std**2)
        self._motion = np.eye(8)
        self._motion[:4, 4:] = np.eye(4)
        self._observe = np.eye(4, 8)

    def predict(self) -> None:
        h = self.mean[3]
        pos, vel = self._pos_step * h, self._vel_step * h
        std = np.array([pos, pos, 1e-2 * self._pos_step / self._POS_STD, pos,
                        vel, vel, 1e-5 * self._vel_step / self._VEL_STD, vel])
        self.mean = self._motion @ self.mean
        self.cov = self._motion @ self.cov @ self._motion.T + np.diag(std**2)
        self.mean[3] = max(self.mean[3], 1.0)

    def _projected(self) -> tuple[np.ndarray, np.ndarray]:
        h = self.mean[3]
        noise = np.diag(np.array([self._POS_STD * h, self._POS_STD * h, 1e-1, self._POS_STD * h]) ** 2)
        return self._observe @ self.mean, self._observe @ self.cov @ self._observe.T + noise

    def update(self, box_xywh: np.ndarray) -> None:
        projected_mean, projected_cov = self._projected()
        gain = np.linalg.solve(projected_cov, self._observe @ self.cov).T
        self.mean = self.mean + gain @ (xywh_to_xyah(box_xywh) - projected_mean)
        self.cov = self.cov - gain @ projected_cov @ gain.T

    @property
    def box(self) -> np.ndarray:
        return xyah_to_xywh(self.mean)


@dataclass(frozen=True)
class TrackerConfig:
    """Times are seconds and speeds box heights per second, so a setting means the same at any frame rate
    (the :class:`Tracker` converts with the video's fps). ``n_init`` counts matched detections.
    ``min_iou``/``max_appearance`` gate round 1; ``reactivate_appearance`` and ``max_speed`` gate round 2
    (appearance distances are cosine distances, 0..2). ``max_occlusion_for_update``: a detection more covered
    than this by a box in front of it does not update its track's appearance (its crop shows part of someone
    else, and would drag the feature towards them).

    ``max_speed`` 0.8 heights/s is a walking-speed prior: about 1.4 m/s (comfortable gait speed, e.g.
    Bohannon, Age and Ageing 1997) for a person about 1.7 m tall. ``n_init``, ``max_age_s``, ``lost_after_s``,
    ``min_iou``, ``iou_weight``, ``feature_momentum`` and ``max_occlusion_for_update`` were chosen in this
    project's first phase on PETS 2009 S2.L1 (10 fps, Faster R-CNN detections): in-sample for that footage.
    The published SORT / DeepSORT defaults (3 detections to confirm, IoU 0.3, about 1-2 s of age) assume a
    detection on every frame at ~30 fps, not one every 0.4 s as here. The appearance gates belong to the
    embedder (its ``appearance`` thresholds, set by :func:`reid.video.pipeline.pipeline_config_for`):
    ``max_appearance`` is the median, ``reactivate_appearance`` the 5th percentile of the distances of a
    person's running feature to other people's crops on held-out identities (:mod:`reid.video.separability`),
    and a :class:`Tracker` given ``negatives`` lowers both to the same percentiles of the video's own. The
    defaults here switch appearance off: it never vetoes a match and never re-activates a lost track on its
    own."""

    n_init: int = 5
    max_age_s: float = 6.0
    lost_after_s: float = 0.8
    iou_weight: float = 0.2
    min_iou: float = 0.1
    max_appearance: float = 2.0
    reactivate_appearance: float = 0.0
    new_track_score: float = 0.0
    feature_momentum: float = 0.8
    max_speed: float = 0.8
    max_occlusion_for_update: float = 0.1


@dataclass
class Track:
    """One followed person. ``observations``: (frame_index, box_xywh, score) of every matched detection."""

    track_id: int
    kalman: KalmanBoxFilter
    feature: np.ndarray | None
    confirmed: bool = False
    hits: int = 1
    last_matched_frame: int = 0
    observations: list[tuple[int, np.ndarray, float]] = field(default_factory=list)

    @property
    def box(self) -> np.ndarray:
        return self.kalman.box

    @property
    def first_frame(self) -> int:
        return self.observations[0][0]

    @property
    def span(self) -> tuple[int, int]:
        """First and last frame with a matched detection."""
        return self.observations[0][0], self.observations[-1][0]

    def boxes_by_frame(self) -> dict[int, np.ndarray]:
        """Frame -> x, y, w, h of every matched detection (what the co-visibility checks compare)."""
        return {frame: box for frame, box, _ in self.observations}


@dataclass(frozen=True)
class TrackerStep:
    """What one frame did: ``matches`` pairs (track_id, detection index); ``finished`` tracks ended now."""

    matches: list[tuple[int, int]]
    finished: list[Track]


def assign_finite(cost: np.ndarray) -> list[tuple[int, int]]:
    """Hungarian assignment that never returns an infeasible (non-finite) pair."""
    if cost.size == 0:
        return []
    finite = np.isfinite(cost)
    rows, cols = linear_sum_assignment(np.where(finite, cost, _INFEASIBLE))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if finite[r, c]]


class Tracker:
    """Call :meth:`step` once per video frame, with detections or ``None`` on frames not detected;
    ``fps``: the video's frame rate, which turns the config's seconds into frames. With ``negatives``, the
    appearance gates are capped at the same percentiles of this footage's own different-person distances,
    collected as the video plays (:class:`reid.video.self_calibration.CovisibleNegatives`)."""

    def __init__(self, config: TrackerConfig | None = None, *, fps: float,
                 negatives: CovisibleNegatives | None = None) -> None:
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive frame rate, got {fps}")
        self.config = config or TrackerConfig()
        self.fps = float(fps)
        self.negatives = negatives
        self._next_id = 1
        self.tracks: list[Track] = []

    def _seconds_since_seen(self, track: Track, frame_index: int) -> float:
        return (frame_index - track.last_matched_frame) / self.fps

    @staticmethod
    def _appearance(tracks: list[Track], features: np.ndarray | None) -> np.ndarray:
        """Appearance distances (tracks x detections); 0 (neutral) for a track without a feature yet."""
        if features is None:
            return np.zeros((len(tracks), 0))
        dist = np.zeros((len(tracks), len(features)))
        known = [i for i, t in enumerate(tracks) if t.feature is not None]
        if known and len(features):
            dist[known] = pairwise_distances(np.stack([tracks[i].feature for i in known]), features, "cosine")
        return dist

    def step(self, frame_index: int, boxes: np.ndarray | None = None, scores: np.ndarray | None = None,
             features: np.ndarray | None = None) -> TrackerStep:
        for track in self.tracks:
            track.kalman.predict()
        if boxes is None:
            return TrackerStep([], [])
        cfg = self.config
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64)
        unmatched = list(range(len(boxes)))
        matches: list[tuple[int, int]] = []
        occluded = occlusion_fractions(boxes) > cfg.max_occlusion_for_update
        veto, reactivation = cfg.max_appearance, cfg.reactivate_appearance
        if self.negatives is not None:
            veto = self.negatives.cap(veto, VETO_PERCENTILE)
            reactivation = self.negatives.cap(reactivation, REACTIVATION_PERCENTILE)

        recent = [t for t in self.tracks if self._seconds_since_seen(t, frame_index) <= cfg.lost_after_s]
        lost = [t for t in self.tracks
                if t.confirmed and self._seconds_since_seen(t, frame_index) > cfg.lost_after_s]

        # Round 1: overlap with the predicted box, vetoed by appearance.
        if recent and unmatched:
            det = np.asarray(unmatched)
            iou = iou_matrix(np.stack([t.box for t in recent]), boxes[det])
            app = self._appearance(recent, None if features is None else features[det])
            if app.shape[1] == 0:
                app = np.zeros_like(iou)
            cost = cfg.iou_weight * (1 - iou) + (1 - cfg.iou_weight) * app
            cost[(iou < cfg.min_iou) | (app > veto)] = np.inf
            for r, c in assign_finite(cost):
                matches.append((recent[r].track_id, int(det[c])))
            used = {d for _, d in matches}
            unmatched = [d for d in unmatched if d not in used]

        # Round 2: re-find lost tracks by appearance inside their motion uncertainty.
        if lost and unmatched and features is not None:
            det = np.asarray(unmatched)
            app = self._appearance(lost, features[det])
            cost = app.copy()
            for i, track in enumerate(lost):
                cost[i, ~self._reachable(track, boxes[det], frame_index)] = np.inf
            cost[app > reactivation] = np.inf
            for r, c in assign_finite(cost):
                logger.debug("frame %d: re-activated track %d at appearance distance %.3f", frame_index,
                             lost[r].track_id, app[r, c])
                matches.append((lost[r].track_id, int(det[c])))
            used = {d for _, d in matches}
            unmatched = [d for d in unmatched if d not in used]

        by_id = {t.track_id: t for t in self.tracks}
        if self.negatives is not None and features is not None:
            self._collect_negatives([(by_id[t], d) for t, d in matches], boxes, features)
        for track_id, d in matches:
            self._update(by_id[track_id], frame_index, boxes[d], float(scores[d]),
                         None if features is None or occluded[d] else features[d])

        matched_ids = {track_id for track_id, _ in matches}
        finished: list[Track] = []
        survivors: list[Track] = []
        for track in self.tracks:
            missed = track.track_id not in matched_ids
            if missed and not track.confirmed:
                continue  # a tentative track must be seen on every detection frame until confirmed
            if missed and self._seconds_since_seen(track, frame_index) > cfg.max_age_s:
                finished.append(track)
                continue
            survivors.append(track)
        self.tracks = survivors

        for d in unmatched:
            if scores[d] < cfg.new_track_score:
                continue
            track = Track(self._next_id, KalmanBoxFilter(boxes[d], self.fps), None,
                          last_matched_frame=frame_index)
            self._next_id += 1
            self._observe(track, frame_index, boxes[d], float(scores[d]),
                          None if features is None else features[d])
            track.confirmed = cfg.n_init <= 1
            self.tracks.append(track)
            matches.append((track.track_id, d))
        return TrackerStep(matches, finished)

    def _collect_negatives(self, matched: list[tuple[Track, int]], boxes: np.ndarray,
                           features: np.ndarray) -> None:
        """Distances of each matched track's running feature (before this frame's update) to the crops of the
        other detections of this frame whose boxes do not touch its own: certainly other people."""
        matched = [(track, d) for track, d in matched if track.feature is not None]
        if not matched or len(boxes) < 2:
            return
        own = np.array([d for _, d in matched])
        dist = pairwise_distances(np.stack([track.feature for track, _ in matched]), features, "cosine")
        apart = iou_matrix(boxes[own], boxes) <= 0.0
        apart[np.arange(len(own)), own] = False
        self.negatives.add(dist[apart])

    def _reachable(self, track: Track, boxes: np.ndarray, frame_index: int) -> np.ndarray:
        """Could the person of a lost track have walked to each box since it was last seen?"""
        _, last_box, _ = track.observations[-1]
        centre = last_box[:2] + last_box[2:] / 2
        centres = boxes[:, :2] + boxes[:, 2:] / 2
        reach = last_box[3] * (0.5 + self.config.max_speed * self._seconds_since_seen(track, frame_index))
        scale = boxes[:, 3] / last_box[3]
        similar = (scale > 1.0 / SIMILAR_HEIGHT) & (scale < SIMILAR_HEIGHT)
        return (np.linalg.norm(centres - centre, axis=1) <= reach) & similar

    def _observe(self, track: Track, frame_index: int, box: np.ndarray, score: float,
                 feature: np.ndarray | None) -> None:
        track.observations.append((frame_index, np.asarray(box, dtype=np.float64).copy(), score))
        track.last_matched_frame = frame_index
        if feature is not None:
            feature = feature / max(float(np.linalg.norm(feature)), 1e-12)
            if track.feature is None:
                track.feature = feature.astype(np.float64)
            else:
                m = self.config.feature_momentum
                track.feature = m * track.feature + (1 - m) * feature
                track.feature /= max(float(np.linalg.norm(track.feature)), 1e-12)

    def _update(self, track: Track, frame_index: int, box: np.ndarray, score: float,
                feature: np.ndarray | None) -> None:
        track.kalman.update(box)
        track.hits += 1
        if track.hits >= self.config.n_init:
            track.confirmed = True
        self._observe(track, frame_index, box, score, feature)

    def finish_all(self) -> list[Track]:
        """End every confirmed track (the video is over); tentative ones are dropped."""
        finished = [t for t in self.tracks if t.confirmed]
        self.tracks = []
        return finished


def track_rows(track: Track, max_gap: int = 30) -> list[tuple[int, np.ndarray, float]]:
    """The track's boxes for every frame from its first to its last detection: matched boxes as they are,
    frames between two matches (up to ``max_gap`` apart) filled by linear interpolation."""
    rows: list[tuple[int, np.ndarray, float]] = []
    observations = track.observations
    for (f0, b0, s0), (f1, b1, _) in zip(observations[:-1], observations[1:], strict=True):
        rows.append((f0, b0, s0))
        if f1 - f0 <= max_gap:
            for f in range(f0 + 1, f1):
                t = (f - f0) / (f1 - f0)
                rows.append((f, (1 - t) * b0 + t * b1, 0.0))
    rows.append(observations[-1])
    return rows
