"""Tracker behaviour on generated walkers: one id per walker, ids kept through crossings and gaps."""

import numpy as np
import pytest

from reid.video.descriptor import APPEARANCE_THRESHOLDS, describe_crops
from reid.video.self_calibration import CovisibleNegatives
from reid.video.tracking import KalmanBoxFilter, Tracker, TrackerConfig, track_rows


def walker_box(start, velocity, frame, size=(30.0, 80.0)):
    x, y = np.asarray(start) + frame * np.asarray(velocity)
    return np.array([x, y, *size])


def colour_crop(bgr, seed):
    rng = np.random.default_rng(seed)
    crop = np.zeros((80, 30, 3), np.uint8)
    crop[:40] = bgr
    crop[40:] = (np.asarray(bgr) // 3).astype(np.uint8)
    return np.clip(crop.astype(int) + rng.integers(-10, 10, crop.shape), 0, 255).astype(np.uint8)


# The handcrafted descriptor's own gates, as the pipeline sets them (TrackerConfig() alone is motion-only).
DESCRIPTOR_GATES = TrackerConfig(max_appearance=APPEARANCE_THRESHOLDS.tracker_veto,
                                 reactivate_appearance=APPEARANCE_THRESHOLDS.reactivation)


def run_tracker(walkers, frames, detect_every=1, drop=lambda f, w: False, config=DESCRIPTOR_GATES, fps=10.0):
    tracker = Tracker(config, fps=fps)
    finished = []
    for f in range(frames):
        if f % detect_every:
            finished += tracker.step(f).finished
            continue
        present = [w for w in range(len(walkers)) if not drop(f, w)]
        boxes = np.array([walker_box(*walkers[w][:2], f) for w in present]).reshape(-1, 4)
        feats = describe_crops([colour_crop(walkers[w][2], f * 10 + w) for w in present])
        step = tracker.step(f, boxes, np.ones(len(present)), feats)
        finished += step.finished
    return finished + tracker.finish_all()


def majority_ids(tracks, walkers, frames):
    """For each walker, the set of track ids whose boxes sit on it."""
    owners = {w: set() for w in range(len(walkers))}
    for track in tracks:
        for f, box, _ in track.observations:
            dists = [np.abs(box - walker_box(*walkers[w][:2], f)).sum() for w in range(len(walkers))]
            owners[int(np.argmin(dists))].add(track.track_id)
    return owners


def test_kalman_learns_constant_velocity():
    kf = KalmanBoxFilter(np.array([0.0, 0.0, 20.0, 50.0]))
    for f in range(1, 30):
        kf.predict()
        kf.update(np.array([3.0 * f, 1.0 * f, 20.0, 50.0]))
    kf.predict()
    np.testing.assert_allclose(kf.box, [90.0, 30.0, 20.0, 50.0], atol=1.0)


def test_kalman_noise_is_per_second_not_per_frame():
    # The same walk (30 px/s, observed every 0.4 s) filmed at 10 fps (4 predictions between updates) and at
    # 30 fps (12): the predicted box, its spread and the speed in px/s agree.
    results = {}
    for fps, steps in ((10.0, 4), (30.0, 12)):
        kf = KalmanBoxFilter(np.array([0.0, 0.0, 30.0, 80.0]), fps)
        for n in range(1, 8):
            for _ in range(steps):
                kf.predict()
            kf.update(np.array([12.0 * n, 0.0, 30.0, 80.0]))
        for _ in range(steps):
            kf.predict()
        results[fps] = (kf.box, np.sqrt(np.diag(kf.cov)[:4]), kf.mean[4] * fps)
    (box10, std10, speed10), (box30, std30, speed30) = results[10.0], results[30.0]
    np.testing.assert_allclose(box30, box10, atol=0.05)
    np.testing.assert_allclose(std30, std10, rtol=0.01)  # per-frame noise would give 12/4 x the variance
    assert abs(speed10 - 30.0) < 1.0 and abs(speed30 - speed10) < 0.05


def test_one_track_per_walker_with_detection_stride():
    walkers = [
        ((0, 50), (4, 0), (0, 0, 200)),
        ((600, 250), (-4, 0), (200, 0, 0)),
        ((300, 400), (0, -3), (0, 200, 0)),
    ]
    tracks = run_tracker(walkers, 60, detect_every=3)
    owners = majority_ids(tracks, walkers, 60)
    assert all(len(ids) == 1 for ids in owners.values()), owners
    assert len({next(iter(ids)) for ids in owners.values()}) == 3


def test_crossing_walkers_keep_their_ids():
    # Two differently dressed people cross at frame 40; the overlap is resolved by appearance and motion.
    walkers = [((100, 100), (5, 0), (0, 0, 220)), ((500, 105), (-5, 0), (220, 120, 0))]
    tracks = run_tracker(walkers, 80)
    owners = majority_ids(tracks, walkers, 80)
    assert all(len(ids) == 1 for ids in owners.values()), owners
    assert owners[0] != owners[1]


def test_occluded_walker_is_refound():
    # Walker 0 is not detected for 15 frames (occlusion) and must come back with the same id.
    walkers = [((100, 100), (3, 0), (30, 30, 200)), ((100, 300), (3, 0), (200, 200, 30))]
    tracks = run_tracker(walkers, 70, drop=lambda f, w: w == 0 and 30 <= f < 45)
    owners = majority_ids(tracks, walkers, 70)
    assert len(owners[0]) == 1 and len(owners[1]) == 1, owners
    (track,) = [t for t in tracks if t.track_id in owners[0]]
    rows = track_rows(track)
    assert [r[0] for r in rows] == list(range(rows[0][0], 70))  # the gap is filled by interpolation
    np.testing.assert_allclose(rows[37 - rows[0][0]][1], walker_box((100, 100), (3, 0), 37), atol=1e-6)


def test_short_false_alarm_never_confirmed():
    walkers = [((0, 50), (4, 0), (0, 0, 200))]
    tracker = Tracker(TrackerConfig(n_init=3), fps=10.0)
    for f in range(10):
        boxes = [walker_box(*walkers[0][:2], f)]
        if f == 4:  # one spurious box far away
            boxes.append(np.array([500.0, 400.0, 30.0, 80.0]))
        tracker.step(f, np.array(boxes), np.ones(len(boxes)), None)
    finished = tracker.finish_all()
    assert len(finished) == 1 and len(finished[0].observations) == 10


def test_times_are_seconds_whatever_the_frame_rate():
    # The same scene filmed at 10 and at 30 fps: walker 0 is hidden for 4 s, less than max_age_s (6 s).
    # At 30 fps that is 120 frames, twice what a frame-count setting tuned at 10 fps (60 frames) would wait.
    outcomes = {}
    for fps in (10.0, 30.0):
        k = fps / 10.0
        walkers = [((100, 100), (3 / k, 0), (30, 30, 200)), ((100, 300), (3 / k, 0), (200, 200, 30))]
        frames = int(90 * k)
        tracks = run_tracker(walkers, frames, detect_every=int(k), fps=fps,
                             drop=lambda f, w, k=k: w == 0 and 30 * k <= f < 70 * k)
        outcomes[fps] = majority_ids(tracks, walkers, frames)
    assert all(len(ids) == 1 for owners in outcomes.values() for ids in owners.values()), outcomes
    # ... and a track unseen for longer than max_age_s ends after the same time at either rate.
    for fps in (10.0, 30.0):
        tracker = Tracker(TrackerConfig(n_init=1, max_age_s=2.0), fps=fps)
        tracker.step(0, np.array([[100.0, 100, 30, 80]]), np.ones(1), None)
        ended = [f for f in range(1, int(4 * fps)) if tracker.step(f, np.zeros((0, 4))).finished]
        assert ended == [int(2 * fps) + 1], (fps, ended)


def test_covisible_negatives_cap_a_gate_at_this_footages_percentile():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.2, 0.8, 300)
    negatives = CovisibleNegatives(min_count=50, capacity=200)
    negatives.add(values[:49])
    assert negatives.cap(0.9, 50.0) == 0.9  # too few to judge this footage: the model's gate
    negatives.add(values[49:])
    assert len(negatives) == 200  # the most recent 200
    assert negatives.cap(0.9, 50.0) == pytest.approx(np.percentile(values[-200:], 50.0))
    assert negatives.cap(0.1, 50.0) == 0.1  # never raised above the model's


def test_tracker_collects_distances_to_other_people_and_gates_with_them():
    # Two walkers far apart and a third whose box touches the first's: negatives are the running feature of
    # each matched track against the crops of the detections whose boxes do not touch its own.
    walkers = [((100, 100), (4, 0), (0, 0, 200)), ((100, 400), (4, 0), (200, 0, 0)),
               ((120, 120), (4, 0), (0, 200, 0))]
    negatives = CovisibleNegatives(min_count=10**6)  # collect only: the gates stay the model's
    tracker = Tracker(TrackerConfig(n_init=1), fps=10.0, negatives=negatives)
    running, expected = {}, []
    for f in range(6):
        boxes = np.array([walker_box(*w[:2], f) for w in walkers])
        feats = describe_crops([colour_crop(w[2], f * 10 + i) for i, w in enumerate(walkers)])
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        if f:
            for a, b in ((0, 1), (1, 0), (1, 2), (2, 1)):  # 0 and 2 touch: never a pair
                expected.append(1.0 - running[a] @ unit[b] / np.linalg.norm(running[a]))
        for i in range(3):
            if i == 0 and i in running:
                continue  # walker 2 is in front of walker 0: an occluded crop does not update its look
            mixed = unit[i] if i not in running else 0.8 * running[i] + 0.2 * unit[i]
            running[i] = mixed / np.linalg.norm(mixed)
        tracker.step(f, boxes, np.ones(3), feats)
    np.testing.assert_allclose(sorted(negatives.distances()), sorted(expected), atol=1e-6)  # float32 features
    # Once this footage says different people are 0.05 apart, a look 0.5 away vetoes an overlapping box.
    red, blue = describe_crops([colour_crop((0, 0, 220), 1), colour_crop((220, 0, 0), 2)])
    for calibrated in (False, True):
        negatives = CovisibleNegatives(min_count=10)
        if calibrated:
            negatives.add(np.full(20, 0.05))
        tracker = Tracker(TrackerConfig(n_init=1), fps=10.0, negatives=negatives)
        tracker.step(0, np.array([[100.0, 100, 30, 80]]), np.ones(1), red[None])
        tracker.step(1, np.array([[102.0, 100, 30, 80]]), np.ones(1), blue[None])
        assert len(tracker.tracks) == (2 if calibrated else 1)
