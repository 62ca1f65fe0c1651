"""Offline stitching, occlusion-aware appearance updates and the per-video match threshold."""

import numpy as np
import pytest
from test_video_tracking import colour_crop, majority_ids, run_tracker, walker_box

from reid.evaluation.distance import pairwise_distances
from reid.video.boxes import iou_matrix
from reid.video.descriptor import APPEARANCE_THRESHOLDS, describe_crops
from reid.video.self_calibration import StreamMatchThreshold, covisible_distances, video_match_threshold
from reid.video.stitching import Endpoint, StitchConfig, endpoint, link_costs, merge_tracks, stitch_chains
from reid.video.tracking import Tracker, TrackerConfig


def test_endpoint_recovers_constant_velocity():
    obs = [(f, np.array([10.0 + 3 * f, 20.0 - f, 30.0, 80.0]), 1.0) for f in range(20)]
    end = endpoint(obs, at_start=False, window=10)
    start = endpoint(obs, at_start=True, window=10)
    np.testing.assert_allclose(end.velocity, [3.0, -1.0], atol=1e-9)
    np.testing.assert_allclose(end.centre, [10 + 3 * 19 + 15, 20 - 19 + 40], atol=1e-9)
    np.testing.assert_allclose(start.centre, [25.0, 60.0], atol=1e-9)
    assert end.frame == 19 and start.frame == 0 and end.height == 80.0


def test_stitching_rejoins_two_people_hidden_while_crossing():
    # Two people cross behind an occluder: nobody is detected for 20 frames around the crossing, longer
    # than the tracker waits (short max_age), so each leaves two tracklets. Stitching must join each
    # person's pieces by motion and appearance, not swap them.
    walkers = [((100, 100), (5, 0), (0, 0, 220)), ((500, 110), (-5, 0), (220, 120, 0))]
    config = TrackerConfig(max_age_s=1.0, lost_after_s=0.5)  # at the 10 fps of run_tracker
    tracks = run_tracker(walkers, 90, drop=lambda f, w: 30 <= f < 50, config=config)
    before = majority_ids(tracks, walkers, 90)
    assert all(len(ids) == 2 for ids in before.values()), before  # the gap did split both people

    features = describe_crops([colour_crop(walkers[w][2], 999) for w in (0, 1)])
    owner = {tid: w for w, ids in before.items() for tid in ids}
    track_features = np.stack([features[owner[t.track_id]] for t in tracks])
    config = StitchConfig(max_appearance=APPEARANCE_THRESHOLDS.stitch)  # the descriptor's own gate
    chains = stitch_chains(tracks, track_features, config, frame_size=(800, 600), fps=10.0)
    merged = [merge_tracks([tracks[i] for i in chain]) for chain in chains]
    after = majority_ids(merged, walkers, 90)
    assert all(len(ids) == 1 for ids in after.values()), after
    assert after[0] != after[1]
    for track in merged:  # a chain never overlaps itself in time
        frames = [f for f, _, _ in track.observations]
        assert frames == sorted(set(frames))


def test_stitching_by_motion_alone_and_never_links_overlapping_or_exiting_tracklets():
    def tracklet(track_id, frames, start, velocity, fps=10.0):
        tracker = Tracker(TrackerConfig(n_init=1), fps=fps)
        for f in frames:
            tracker.step(f, walker_box(start, velocity, f)[None], np.ones(1), None)
        (track,) = tracker.finish_all()
        track.track_id = track_id
        return track

    a = tracklet(1, range(0, 20), (100, 100), (4, 0))
    b = tracklet(2, range(35, 60), (100, 100), (4, 0))  # a's continuation after a 15-frame gap
    c = tracklet(3, range(10, 40), (100, 300), (4, 0))  # overlaps a in time: another person
    assert sorted(map(sorted, stitch_chains([a, b, c], None, fps=10.0))) == [[0, 1], [2]]
    # The same continuation is refused when a walked out of the frame (its last box touches the border).
    assert len(stitch_chains([a, b], None, frame_size=(a.observations[-1][1][0] + 30, 600), fps=10.0)) == 2
    # ... and when b looks like someone else (once an embedder's appearance gate is set).
    far = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert len(stitch_chains([a, b], far, fps=10.0)) == 1  # the default gate never vetoes
    assert len(stitch_chains([a, b], far, StitchConfig(max_appearance=0.5), fps=10.0)) == 2
    # The gap is in seconds: a 4 s gap filmed at 30 fps (121 frames, more than the 50 frames that meant
    # 5 s at 10 fps) is linked, and a 6.1 s gap (past max_gap_s) is refused.
    fast_a = tracklet(1, range(0, 60), (100, 100), (4 / 3, 0), fps=30.0)
    fast_b = tracklet(2, range(180, 240), (100, 100), (4 / 3, 0), fps=30.0)
    assert stitch_chains([fast_a, fast_b], None, fps=30.0) == [[0, 1]]
    late = tracklet(2, range(80, 100), (100, 100), (4, 0))
    assert len(stitch_chains([a, late], None, StitchConfig(base_reach=100.0), fps=10.0)) == 2


def _link_cost_reference(a, b, app, config, fps):
    """One pair, written out: the rules of the module docstring."""
    gap = b.frame - a.frame
    if gap < 1 or gap / fps > config.max_gap_s:
        return np.inf
    scale = b.height / max(a.height, 1e-6)
    if not 1 / config.max_scale_change <= scale <= config.max_scale_change:
        return np.inf
    error = np.linalg.norm((a.centre + a.velocity * gap / 2) - (b.centre - b.velocity * gap / 2))
    error /= (a.height + b.height) / 2
    reach = config.base_reach + config.reach_per_s * gap / fps
    if error > reach or app > config.max_appearance:
        return np.inf
    w = config.appearance_weight
    return (1 - w) * error / reach + w * app / config.max_appearance


def test_link_costs_match_the_per_pair_rules():
    rng = np.random.default_rng(3)

    def points(n):
        return [Endpoint(int(rng.integers(0, 120)), rng.uniform(0, 300, 2), rng.normal(0, 2, 2),
                         float(rng.uniform(40, 120))) for _ in range(n)]

    ends, starts = points(40), points(35)
    end_feats, start_feats = rng.normal(size=(40, 8)), rng.normal(size=(35, 8))
    config = StitchConfig(max_appearance=0.9, base_reach=1.0)
    fps = 12.5
    cost = link_costs(ends, starts, end_feats, start_feats, config, fps)
    app = pairwise_distances(end_feats, start_feats, "cosine")
    expected = np.array([[_link_cost_reference(a, b, app[i, j], config, fps) for j, b in enumerate(starts)]
                         for i, a in enumerate(ends)])
    assert np.isfinite(expected).sum() > 20 and np.isinf(expected).sum() > 20  # both outcomes are exercised
    np.testing.assert_array_equal(np.isfinite(cost), np.isfinite(expected))
    np.testing.assert_allclose(cost[np.isfinite(cost)], expected[np.isfinite(expected)], rtol=1e-12)


def test_stitch_config_rejects_nonsense():
    with pytest.raises(ValueError):
        StitchConfig(max_gap_s=0)
    with pytest.raises(ValueError):
        StitchConfig(max_scale_change=0.5)


def test_occluded_detections_do_not_update_track_appearance():
    tracker = Tracker(TrackerConfig(n_init=1, max_occlusion_for_update=0.1), fps=10.0)
    red, dark_red, blue = describe_crops(
        [colour_crop((0, 0, 220), 1), colour_crop((0, 0, 180), 2), colour_crop((220, 0, 0), 3)]
    )
    mixed = 0.85 * red + 0.15 * blue  # what a crop partly covered by a blue-dressed person looks like
    tracker.step(0, np.array([[100.0, 100, 30, 80]]), np.ones(1), red[None])
    before = tracker.tracks[0].feature.copy()
    # Next frame the person (same box) is partly hidden by someone in front (lower bottom edge).
    boxes = np.array([[100.0, 100, 30, 80], [115.0, 110, 30, 80]])
    tracker.step(1, boxes, np.ones(2), np.stack([mixed, blue]))
    assert tracker.tracks[0].hits == 2  # matched ...
    np.testing.assert_array_equal(tracker.tracks[0].feature, before)  # ... but its look is not learnt
    tracker.step(2, boxes[:1], np.ones(1), dark_red[None])  # a clean view updates it
    assert tracker.tracks[0].hits == 3 and not np.array_equal(tracker.tracks[0].feature, before)


def test_covisible_distances_against_brute_force():
    rng = np.random.default_rng(0)
    spans = [(0, 10), (5, 20), (21, 30), (30, 40), (50, 60)]
    feats = rng.normal(size=(5, 6))
    expected = [
        pairwise_distances(feats[[i]], feats[[j]], "cosine")[0, 0]
        for i in range(5)
        for j in range(i + 1, 5)
        if spans[i][0] <= spans[j][1] and spans[j][0] <= spans[i][1]
    ]
    np.testing.assert_allclose(
        np.sort(covisible_distances(spans, feats, metric="cosine")), np.sort(expected), rtol=1e-5, atol=1e-6
    )
    # In a euclidean gallery the cap must be in its units: squared distances of the raw features.
    squared = [
        np.sum((feats[i] - feats[j]) ** 2)
        for i in range(5)
        for j in range(i + 1, 5)
        if spans[i][0] <= spans[j][1] and spans[j][0] <= spans[i][1]
    ]
    euclidean = covisible_distances(spans, feats, metric="euclidean")
    np.testing.assert_allclose(np.sort(euclidean), np.sort(squared), rtol=1e-5)


def test_covisible_pairs_whose_boxes_touch_are_not_negatives():
    # Tracks 0 and 1 walk side by side, apart; track 2 crosses track 0 at frame 5 (boxes overlap there), so
    # its crops may be mixed with track 0's: that pair is no certain negative.
    spans = [(0, 9), (0, 9), (3, 7)]
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05]])
    walk = lambda x0, dx, frames: {f: np.array([x0 + dx * f, 0.0, 10.0, 30.0]) for f in frames}  # noqa: E731
    boxes = [walk(0, 0, range(10)), walk(50, 0, range(10)), walk(-25, 5, range(3, 8))]
    assert np.max(np.diag(iou_matrix(np.array([boxes[0][5]]), np.array([boxes[2][5]])))) > 0
    everything = covisible_distances(spans, feats, metric="cosine")
    apart = covisible_distances(spans, feats, metric="cosine", boxes=boxes)
    assert len(everything) == 3 and len(apart) == 2  # 0-2 left out, 0-1 and 1-2 kept
    np.testing.assert_allclose(
        np.sort(apart), np.sort(pairwise_distances(feats[[1]], feats[[0, 2]], "cosine")[0]), rtol=1e-5
    )


def test_video_threshold_stays_below_the_closest_different_people(caplog):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(12, 8))
    spans = [(0, 100)] * 12  # everyone is visible together: 66 negative pairs
    negatives = covisible_distances(spans, feats, metric="cosine")
    strict = video_match_threshold(spans, feats, ceiling=5.0, metric="cosine", max_fpr=0.0)
    assert strict < negatives.min()
    loose = video_match_threshold(spans, feats, ceiling=5.0, metric="cosine", max_fpr=0.1)
    assert np.mean(negatives <= loose) <= 0.1 < np.mean(negatives <= np.sort(negatives)[7])
    # never above the gallery's; and the gallery's when there are too few pairs to measure
    assert video_match_threshold(spans, feats, ceiling=0.01, metric="cosine", max_fpr=0.1) == 0.01
    with caplog.at_level("WARNING"):
        assert video_match_threshold(spans[:3], feats[:3], ceiling=0.5, metric="cosine") == 0.5
    assert "only 3 pair(s)" in caplog.text and "--match-threshold" in caplog.text  # said, not silent


def test_stream_threshold_is_the_video_threshold_of_the_tracks_ended_so_far():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(14, 8))
    spans = [(int(s), int(s) + 40) for s in rng.integers(0, 100, 14)]
    boxes = [{f: np.array([60.0 * i, 0, 30, 80]) for f in range(a, b + 1)} for i, (a, b) in enumerate(spans)]
    stream = StreamMatchThreshold(metric="cosine", max_fpr=0.0, min_pairs=10)
    for k in range(14):
        got = stream.add(spans[k], feats[k], boxes[k], ceiling=5.0)
        pairs = len(covisible_distances(spans[:k + 1], feats[:k + 1], metric="cosine", boxes=boxes[:k + 1]))
        assert stream.pairs == pairs
        if pairs < 10:
            assert got is None  # too few to judge: the gallery's own threshold
        else:
            assert got == video_match_threshold(spans[:k + 1], feats[:k + 1], 5.0, metric="cosine",
                                                max_fpr=0.0, boxes=boxes[:k + 1])
    assert stream.pairs >= 10
    # Only the latest `window` tracks count.
    short = StreamMatchThreshold(metric="cosine", max_fpr=0.0, min_pairs=1, window=3)
    for k in range(14):
        short.add(spans[k], feats[k], boxes[k], ceiling=5.0)
    assert short.pairs == len(covisible_distances(spans[-3:], feats[-3:], metric="cosine", boxes=boxes[-3:]))
