"""Handcrafted descriptor, crop quality and per-track evidence."""

import cv2
import numpy as np
import pytest

from reid.evaluation.distance import pairwise_distances
from reid.gallery import CropEntry
from reid.video.crop_bank import TrackEvidence
from reid.video.descriptor import FEATURE_DIM, describe_crops, foreground_weights
from reid.video.embedder import HandcraftedEmbedder, ModelEmbedder, build_embedder
from reid.video.quality import crop_quality, occlusion_fractions
from reid.video.separability import (
    GALLERY_PERCENTILE,
    REACTIVATION_PERCENTILE,
    VETO_PERCENTILE,
    AppearanceThresholds,
    derive_appearance_thresholds,
    image_set_thresholds,
    labelled_pair_distances,
    roc_auc,
    running_feature_negatives,
    separability,
    tracklet_features,
)


def person(top, bottom, seed=0, size=(96, 40)):
    rng = np.random.default_rng(seed)
    crop = np.empty((*size, 3), np.uint8)
    crop[: size[0] // 2] = top
    crop[size[0] // 2 :] = bottom
    noise = rng.integers(-8, 8, crop.shape)
    return np.clip(crop.astype(int) + noise, 0, 255).astype(np.uint8)


def test_descriptor_properties():
    red_blue = person((0, 0, 200), (200, 0, 0))
    feats = describe_crops(
        [
            red_blue,
            red_blue.copy(),
            person((0, 0, 200), (200, 0, 0), seed=5, size=(120, 50)),
            person((200, 0, 0), (0, 0, 200)),
        ]
    )
    assert feats.shape == (4, FEATURE_DIM) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    d = pairwise_distances(feats, feats, "cosine")
    assert d[0, 1] == pytest.approx(0.0, abs=1e-6)  # same crop -> distance 0
    assert d[0, 2] < 0.1 < d[0, 3]  # same clothes at another size vs. swapped colours (stripes matter)
    assert (feats >= 0).all()  # square-rooted histograms


def test_descriptor_rejects_bad_crops_and_handles_empty():
    assert describe_crops([]).shape == (0, FEATURE_DIM)
    with pytest.raises(ValueError, match="crop 1"):
        describe_crops([person(1, 2), np.zeros((1, 5, 3), np.uint8)])


def test_embedders():
    emb = build_embedder("handcrafted")
    assert isinstance(emb, HandcraftedEmbedder) and emb.feature_dim == FEATURE_DIM
    assert emb([person(10, 20)]).shape == (1, FEATURE_DIM)
    shipped = build_embedder()  # the trained model in assets/, with its calibrated video gates
    assert isinstance(shipped, ModelEmbedder) and shipped.appearance is not None
    features = shipped([person(10, 20), person(200, 20)])
    assert features.shape == (2, shipped.feature_dim) and np.isfinite(features).all()
    with pytest.raises(Exception, match="nope"):
        build_embedder("/nonexistent/nope.pt")


def test_quality_prefers_sharp_big_unoccluded_inside():
    sharp = person((0, 0, 200), (200, 200, 200), size=(100, 40))
    sharp[::4] = 0  # stripes: strong edges
    blurred = cv2.GaussianBlur(sharp, (15, 15), 5)
    boxes = np.array([[100, 100, 40, 100], [300, 100, 40, 100], [500, 100, 20, 50], [0, 100, 40, 100]], float)
    crops = [sharp, blurred, cv2.resize(sharp, (20, 50)), sharp]
    q = crop_quality(crops, boxes, np.ones(4), (480, 640, 3))
    assert q[0] > q[1]  # sharpness
    assert q[0] > q[2]  # size
    assert q[0] > q[3]  # truncated by the left border
    # A box as wide as it is tall (two people side by side) counts half of the same crop in a person's shape.
    wide = crop_quality([sharp, sharp], np.array([[100, 100, 40, 100], [300, 100, 100, 100]], float),
                        np.ones(2), (480, 640, 3))
    assert wide[1] == pytest.approx(0.5 * wide[0])
    assert ((q >= 0) & (q <= 1)).all()
    # The box behind (higher bottom edge is further away) is occluded by the one in front, not vice versa.
    occ = occlusion_fractions(np.array([[0, 0, 10, 20], [5, 5, 10, 20]], float))
    assert occ[0] == pytest.approx(0.375) and occ[1] == 0.0


def test_evidence_keeps_best_and_weights_feature():
    bank = TrackEvidence(capacity=3)
    for i, q in enumerate([0.1, 0.9, 0.5, 0.7, 0.2]):
        feature = np.eye(4, dtype=np.float32)[i % 4]
        bank.offer(CropEntry(np.zeros((2, 2, 3), np.uint8), i, i / 10, (0, 0, 1, 1), 1.0, q, feature))
    assert [o.quality for o in bank.best()] == [0.9, 0.7, 0.5]
    expected = 0.9 * np.eye(4)[1] + 0.7 * np.eye(4)[3] + 0.5 * np.eye(4)[2]
    np.testing.assert_allclose(bank.track_feature(), expected / np.linalg.norm(expected), rtol=1e-5)


def on_background(figure, background_bgr, width=64):
    """``figure`` (H x w crop) pasted in the middle of a ``width``-wide crop of a plain background."""
    height, inner = figure.shape[:2]
    crop = np.empty((height, width, 3), np.uint8)
    crop[:] = background_bgr
    left = (width - inner) // 2
    crop[:, left : left + inner] = figure
    return crop


def test_foreground_weights_favour_the_person_over_the_border_colour():
    crop = on_background(person((0, 0, 200), (200, 0, 0), size=(128, 24)), (40, 160, 40))
    weights = foreground_weights(crop[None])[0]
    assert weights.shape == crop.shape[:2] and ((weights >= 0) & (weights <= 1)).all()
    assert weights[:, 28:36].mean() > 0.9  # the person's colours never occur at the borders
    assert weights[:, :8].max() < 0.5 and weights[:, 56:].max() < 0.5  # more likely background


def test_same_person_on_other_background_is_closer_than_other_person_on_same_background():
    figure = person((60, 60, 60), (140, 90, 40), size=(128, 24))
    other = person((40, 40, 40), (60, 60, 60), size=(128, 24), seed=1)
    grass, pavement = (40, 150, 60), (150, 150, 150)
    feats = describe_crops([on_background(figure, grass), on_background(figure, pavement),
                            on_background(other, grass)])
    d = pairwise_distances(feats, feats, "cosine")
    assert d[0, 1] < d[0, 2]


def test_roc_auc_and_pairs_against_brute_force():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 20, 40).astype(float), rng.integers(5, 30, 60).astype(float)  # with ties
    brute = np.mean([(p < n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(pos, neg) == pytest.approx(brute)
    assert roc_auc(np.zeros(3), np.ones(4)) == 1.0
    with pytest.raises(ValueError, match="positive and negative"):
        roc_auc(np.zeros(0), np.ones(4))

    feats = rng.normal(size=(30, 5))
    ids, frames = rng.integers(0, 4, 30), rng.integers(0, 100, 30)
    got_pos, got_neg = labelled_pair_distances(feats, ids, frames, min_gap=20)
    d = pairwise_distances(feats, feats, "cosine")
    want_pos = [d[i, j] for i in range(30) for j in range(i + 1, 30)
                if ids[i] == ids[j] and abs(frames[i] - frames[j]) >= 20]
    want_neg = [d[i, j] for i in range(30) for j in range(i + 1, 30) if ids[i] != ids[j]]
    np.testing.assert_allclose(np.sort(got_pos), np.sort(want_pos))
    np.testing.assert_allclose(np.sort(got_neg), np.sort(want_neg))
    with pytest.raises(ValueError, match="same crops"):
        labelled_pair_distances(feats, ids[:-1], frames, min_gap=1)


def test_separability_ranks_a_good_descriptor_above_a_useless_one():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(6), 10)
    frames = np.tile(np.arange(0, 100, 10), 6)
    centres = rng.normal(size=(6, 8))
    good = centres[ids] + 0.2 * rng.normal(size=(60, 8))
    useless = rng.normal(size=(60, 8))
    assert separability(good, ids, frames, min_gap=20).auc > 0.95
    report = separability(useless, ids, frames, min_gap=20)
    assert 0.3 < report.auc < 0.7 and 0.3 < report.eer < 0.7
    with pytest.raises(ValueError, match="same-person pairs"):
        separability(good, ids, frames, min_gap=1000)


def _people_walking(seed: int, num_people: int = 5, num_frames: int = 60, noise: float = 0.3):
    """Crops of people with overlapping visibility spans: (features, ids, frames), frame-ordered."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_people, 6))
    rows = [(f, p) for f in range(num_frames) for p in range(num_people) if 8 * p <= f < 8 * p + 30]
    frames, ids = np.array([f for f, _ in rows]), np.array([p for _, p in rows])
    return centres[ids] + noise * rng.normal(size=(len(ids), 6)), ids, frames


def test_running_feature_negatives_match_a_direct_replay():
    feats, ids, frames = _people_walking(2)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    # Reference: replay frame by frame with explicit per-person histories.
    want, history = [], {}
    for f in sorted(set(frames)):
        here = [k for k in range(len(ids)) if frames[k] == f]
        for k in here:
            for person, (seen, mean) in history.items():
                if person != ids[k] and f - seen <= 4:
                    want.append(1 - mean @ unit[k])
        for k in here:
            old = history.get(ids[k], (None, None))[1]
            mean = unit[k] if old is None else 0.7 * old + 0.3 * unit[k]
            history[ids[k]] = (f, mean / np.linalg.norm(mean))
    got = running_feature_negatives(feats, ids, frames, momentum=0.7)
    np.testing.assert_allclose(np.sort(got), np.sort(want))


def test_tracklet_features_average_each_window_of_one_person():
    feats, ids, frames = _people_walking(3)
    got, got_ids = tracklet_features(feats, ids, frames, span=10, crops=3, min_crops=4)
    want, want_ids = [], []
    for person in range(5):
        for window in range(6):
            members = [k for k in range(len(ids)) if ids[k] == person and frames[k] // 10 == window]
            if len(members) >= 4:
                picked = [members[int(i * (len(members) - 1) / 2)] for i in range(3)]
                mean = feats[picked].mean(axis=0)
                want.append(mean / np.linalg.norm(mean))
                want_ids.append(person)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got, want)


def test_derived_thresholds_are_the_stated_percentiles():
    feats, ids, frames = _people_walking(4, noise=0.3)
    got = derive_appearance_thresholds(feats, ids, frames, momentum=0.8, tracklet_span=10)
    running = running_feature_negatives(feats, ids, frames, momentum=0.8)
    tracklets, tracklet_ids = tracklet_features(feats, ids, frames, span=10)
    d = pairwise_distances(tracklets, tracklets, "cosine")
    negatives = [d[i, j] for i in range(len(d)) for j in range(i + 1, len(d))
                 if tracklet_ids[i] != tracklet_ids[j]]
    assert got.tracker_veto == pytest.approx(np.percentile(running, VETO_PERCENTILE))
    assert got.reactivation == pytest.approx(np.percentile(running, REACTIVATION_PERCENTILE))
    assert got.stitch == pytest.approx(np.percentile(negatives, VETO_PERCENTILE))
    assert got.gallery == pytest.approx(np.percentile(negatives, GALLERY_PERCENTILE))
    assert got.reactivation < got.tracker_veto and got.gallery < got.stitch
    with pytest.raises(ValueError, match="different-person pairs"):
        derive_appearance_thresholds(feats[ids == 0], ids[ids == 0], frames[ids == 0], momentum=0.8)


def test_image_set_thresholds_match_a_loop_over_person_camera_groups():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 12))
    pids = rng.integers(0, 5, size=60)
    camids = rng.integers(0, 2, size=60)
    feats = centres[pids] + 0.6 * rng.normal(size=(60, 12))
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    running, tracklets = [], []
    for pid in range(5):
        for cam in range(2):
            members = [k for k in range(60) if pids[k] == pid and camids[k] == cam]
            if not members:
                continue
            state = unit[members[0]]
            for position, k in enumerate(members):
                if position:
                    state = 0.8 * state + 0.2 * unit[k]
                    state = state / np.linalg.norm(state)
                running += [1 - state @ unit[j] for j in range(60) if pids[j] != pid]
            mean = unit[members[:3]].mean(axis=0)
            tracklets.append((pid, mean / np.linalg.norm(mean)))
    negatives = [1 - a @ b for i, (p, a) in enumerate(tracklets) for q, b in tracklets[i + 1:] if p != q]
    got = image_set_thresholds(feats, pids, camids, momentum=0.8, tracklet_crops=3)
    assert got.tracker_veto == pytest.approx(np.percentile(running, VETO_PERCENTILE))
    assert got.reactivation == pytest.approx(np.percentile(running, REACTIVATION_PERCENTILE))
    assert got.stitch == pytest.approx(np.percentile(negatives, VETO_PERCENTILE))
    assert got.gallery == pytest.approx(np.percentile(negatives, GALLERY_PERCENTILE))
    with pytest.raises(ValueError, match="two or more people"):
        image_set_thresholds(feats[pids == 0], pids[pids == 0], camids[pids == 0], momentum=0.8)


def test_stored_thresholds_are_checked_when_read_back():
    stored = {"tracker_veto": 0.3, "reactivation": 0.1, "stitch": 0.25, "gallery": 0.2}
    assert AppearanceThresholds.from_mapping(stored, "m.pt") == AppearanceThresholds(0.3, 0.1, 0.25, 0.2)
    with pytest.raises(ValueError, match="m.pt.*tracker_veto"):
        AppearanceThresholds.from_mapping({"gallery": 0.2}, "m.pt")
    with pytest.raises(ValueError, match="m.pt.*in \\[0, 2\\]"):
        AppearanceThresholds.from_mapping({**stored, "stitch": float("nan")}, "m.pt")
