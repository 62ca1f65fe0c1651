"""Offline tracklet stitching: join the pieces of one person's trajectory that the online tracker broke apart.

An online tracker must decide at every frame; when a person is hidden (behind a pole, behind another person)
or missed by the detector for longer than it can wait, the track ends and the person comes back under a new
id. Once the video (or a window of it) is over, every tracklet's end and every tracklet's start are known,
so the links can be chosen *globally*: one Hungarian assignment (``scipy.optimize.linear_sum_assignment``)
between tracklet ends and later tracklet starts, in the spirit of the tracklet-linking step of Huang, Wu &
Nevatia, "Robust object tracking by hierarchical association of detection responses" (ECCV 2008).

A tracklet that ends at the frame border is an exit and one that starts there an entry: the person walked
out of (into) view, so those ends are never linked (otherwise whoever walks in next at that edge would
inherit the id). A pair (end of A, start of B) is admissible only when
  * B starts after A ends, at most ``max_gap_s`` seconds later (tracklets that overlap in time are two
    people);
  * constant-velocity extrapolation of A forward and of B backward meet: both are moved half the gap and
    their centres must lie within ``base_reach + reach_per_s * gap`` box heights, the gap in seconds
    (uncertainty grows with the gap, as people turn and change pace);
  * the box heights differ by at most a factor ``max_scale_change``;
  * the appearance distance of the two tracklet features is at most ``max_appearance``.
The cost mixes the normalised motion error and appearance distance, so when two people cross behind an
occluder, who is who is settled by both where they were heading and what they look like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reid.evaluation.distance import pairwise_distances
from reid.video.tracking import Track, assign_finite


@dataclass(frozen=True)
class StitchConfig:
    """Times are seconds (converted with the video's fps, so a setting means the same at any frame rate),
    distances box heights (scale-free), appearance cosine distance.
    ``velocity_window_s``: the time at a tracklet's end (or start) whose boxes estimate its velocity;
    ``border_margin``: px from the frame edge within which a box counts as leaving (entering) the view.
    ``max_appearance``: the median distance of different people's tracklet features, which belongs to the
    embedder (its ``appearance.stitch``, set by :func:`reid.video.pipeline.pipeline_config_for`); the
    default 2.0 never vetoes, and ``appearance_weight`` 0 leaves the cost to motion alone.
    ``reach_per_s`` 0.4 heights/s is half a walking speed (see :class:`reid.video.tracking.TrackerConfig`):
    how far a person's turns and changes of pace can take them from the extrapolated path; the gap and the
    window were chosen in this project's first phase on PETS 2009 S2.L1 (10 fps), in-sample there."""

    max_gap_s: float = 5.0
    velocity_window_s: float = 1.0
    base_reach: float = 0.5
    reach_per_s: float = 0.4
    max_scale_change: float = 1.5
    max_appearance: float = 2.0
    appearance_weight: float = 0.5
    border_margin: float = 4.0

    def __post_init__(self) -> None:
        if not (self.max_gap_s > 0 and self.velocity_window_s > 0):
            raise ValueError("max_gap_s and velocity_window_s must be positive durations")
        if self.max_scale_change < 1.0 or not 0.0 <= self.appearance_weight <= 1.0:
            raise ValueError("need max_scale_change >= 1 and 0 <= appearance_weight <= 1")


@dataclass(frozen=True)
class Endpoint:
    """Where a tracklet is at one of its ends: frame, box centre, velocity (px/frame) and box height."""

    frame: int
    centre: np.ndarray
    velocity: np.ndarray
    height: float


def endpoint(observations: Sequence[tuple[int, np.ndarray, float]], *, at_start: bool,
             window: float) -> Endpoint:
    """Least-squares constant-velocity fit to the tracklet's boxes within ``window`` frames of one end."""
    frames = np.array([f for f, _, _ in observations], dtype=np.float64)
    boxes = np.stack([b for _, b, _ in observations])
    anchor = frames[0] if at_start else frames[-1]
    near = np.abs(frames - anchor) <= window
    t, b = frames[near], boxes[near]
    centres = b[:, :2] + b[:, 2:] / 2
    if len(t) >= 2 and np.ptp(t) > 0:
        slope, intercept = np.polyfit(t - anchor, centres, 1)
        centre, velocity = intercept, slope
    else:
        centre, velocity = centres[0 if at_start else -1], np.zeros(2)
    return Endpoint(int(anchor), np.asarray(centre), np.asarray(velocity), float(np.median(b[:, 3])))


def link_costs(ends: Sequence[Endpoint], starts: Sequence[Endpoint], end_features: np.ndarray | None,
               start_features: np.ndarray | None, config: StitchConfig, fps: float) -> np.ndarray:
    """Cost of continuing each ending tracklet with each starting one (ends x starts); inf = forbidden.

    All pairs at once (an hour of busy footage has thousands of tracklets: millions of pairs)."""
    cost = np.full((len(ends), len(starts)), np.inf)
    if not len(ends) or not len(starts):
        return cost
    app = np.zeros_like(cost)
    if end_features is not None and start_features is not None:
        app = pairwise_distances(np.asarray(end_features, np.float64), np.asarray(start_features, np.float64),
                                 "cosine")
    end_frame, start_frame = (np.array([e.frame for e in points], np.float64) for points in (ends, starts))
    end_height, start_height = (np.array([e.height for e in points], np.float64) for points in (ends, starts))
    gap = start_frame[None, :] - end_frame[:, None]
    scale = start_height[None, :] / np.maximum(end_height, 1e-6)[:, None]
    admissible = ((gap >= 1) & (gap / fps <= config.max_gap_s)
                  & (scale >= 1.0 / config.max_scale_change) & (scale <= config.max_scale_change))
    rows, cols = np.nonzero(admissible)
    if not len(rows):
        return cost
    gap = gap[rows, cols][:, None]
    end_centre, end_velocity = (np.stack([getattr(e, k) for e in ends]) for k in ("centre", "velocity"))
    start_centre, start_velocity = (np.stack([getattr(e, k) for e in starts]) for k in ("centre", "velocity"))
    forward = end_centre[rows] + end_velocity[rows] * gap / 2
    backward = start_centre[cols] - start_velocity[cols] * gap / 2
    error = np.linalg.norm(forward - backward, axis=1) / ((end_height[rows] + start_height[cols]) / 2)
    reach = config.base_reach + config.reach_per_s * gap[:, 0] / fps
    pair_app = app[rows, cols]
    ok = (error <= reach) & (pair_app <= config.max_appearance)
    w = config.appearance_weight
    cost[rows[ok], cols[ok]] = ((1 - w) * error[ok] / reach[ok]
                                + w * pair_app[ok] / max(config.max_appearance, 1e-12))
    return cost


def _at_border(box: np.ndarray, frame_size: tuple[int, int] | None, margin: float) -> bool:
    if frame_size is None:
        return False
    x, y, w, h = box
    width, height = frame_size
    return bool(x <= margin or y <= margin or x + w >= width - margin or y + h >= height - margin)


def stitch_chains(tracks: Sequence[Track], features: np.ndarray | None, config: StitchConfig | None = None,
                  frame_size: tuple[int, int] | None = None, *, fps: float) -> list[list[int]]:
    """Group tracklets into chains of one person each: lists of indices into ``tracks``, in time order.

    ``features``: one appearance feature per tracklet (rows), or None to link by motion alone;
    ``frame_size``: (width, height), to recognise exits and entries at the border (None: no border);
    ``fps``: the video's frame rate, which turns the config's seconds into frames.
    Every tracklet appears in exactly one chain; a chain never holds two tracklets that overlap in time.
    """
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive frame rate, got {fps}")
    config = config or StitchConfig()
    if not tracks:
        return []
    window = config.velocity_window_s * fps
    ends = [endpoint(t.observations, at_start=False, window=window) for t in tracks]
    starts = [endpoint(t.observations, at_start=True, window=window) for t in tracks]
    cost = link_costs(ends, starts, features, features, config, fps)
    np.fill_diagonal(cost, np.inf)
    margin = config.border_margin
    cost[[_at_border(t.observations[-1][1], frame_size, margin) for t in tracks], :] = np.inf
    cost[:, [_at_border(t.observations[0][1], frame_size, margin) for t in tracks]] = np.inf
    successor: dict[int, int] = dict(assign_finite(cost))
    has_predecessor = set(successor.values())
    chains = []
    for head in range(len(tracks)):
        if head in has_predecessor:
            continue
        chain = [head]
        while chain[-1] in successor:
            chain.append(successor[chain[-1]])
        chains.append(chain)
    return chains


def merge_tracks(chain: Sequence[Track]) -> Track:
    """One track from a time-ordered chain of tracklets: the first one's id, all observations in order."""
    if not chain:
        raise ValueError("cannot merge an empty chain of tracklets")
    first, last = chain[0], chain[-1]
    return Track(
        track_id=first.track_id,
        kalman=last.kalman,
        feature=last.feature,
        confirmed=any(t.confirmed for t in chain),
        hits=sum(t.hits for t in chain),
        last_matched_frame=last.last_matched_frame,
        observations=[obs for t in chain for obs in t.observations],
    )
