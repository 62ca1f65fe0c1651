"""Tracklet-supervised adaptation on a generated clip: mining, the fine-tune step, the adapted checkpoint."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid.data.tracklet_crops import Tracklet, covisible_groups, covisible_pairs, cut_crops, mine_tracklets
from reid.engine.adapt import (
    AdaptSettings,
    PerCameraTrackletClassifier,
    _CropTensors,
    adapt_model,
    triplet_on_groups,
)
from reid.gallery.errors import GalleryMismatchError
from reid.gallery.schema import DB_FILENAME
from reid.gallery.store import GalleryStore
from reid.models import load_retrieval_model
from reid.video.mot_io import MotTable, read_mot_file, write_mot_results

# (colour of the jacket, colour of the trousers, row, first frame, last frame): four people, some co-visible
PEOPLE = {
    1: ((0, 0, 220), (40, 40, 40), 10, 0, 39),
    2: ((220, 0, 0), (200, 200, 200), 130, 0, 39),
    3: ((0, 200, 0), (30, 30, 120), 10, 40, 79),
    4: ((0, 200, 220), (90, 20, 20), 130, 20, 79),
}


def write_clip(path: Path, num_frames: int = 80) -> list[tuple[int, int, float, float, float, float, float]]:
    """People (two-colour figures with a stripe pattern) walking across a textured background, and their
    boxes as tracker output."""
    rng = np.random.default_rng(0)
    background = rng.integers(90, 160, (240, 400, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (400, 240))
    rows = []
    for frame in range(num_frames):
        image = background.copy()
        for pid, (top, bottom, y, first, last) in PEOPLE.items():
            if not first <= frame <= last:
                continue
            x = 10 + 4 * (frame - first) if pid % 2 else 360 - 4 * (frame - first)
            cv2.rectangle(image, (x, y), (x + 30, y + 45), top, -1)
            cv2.rectangle(image, (x, y + 45), (x + 30, y + 90), bottom, -1)
            for stripe in range(y + 5, y + 45, 10 * pid):
                cv2.line(image, (x, stripe), (x + 30, stripe), (255, 255, 255), 2)
            rows.append((frame, pid, float(x), float(y), 31.0, 91.0, 0.9))
        writer.write(image)
    writer.release()
    return rows


def table_of(rows) -> MotTable:
    array = np.asarray(rows, dtype=np.float64)
    return MotTable(array[:, 0].astype(np.int64), array[:, 1].astype(np.int64), array[:, 2:6], array[:, 6])


def test_mining_keeps_clean_long_tracks_and_covisible_tracks_never_share_a_label():
    boxes = []
    for pid, (_, _, y, first, last) in PEOPLE.items():
        boxes += [(f, pid, 70.0 * pid + f, float(y), 31.0, 91.0, 0.9) for f in range(first, last + 1)]
    boxes += [(f, 9, 500.0, 10.0, 31.0, 91.0, 0.9) for f in range(0, 6)]  # too short a track
    boxes += [(f, 8, 72.0 + f, 12.0, 31.0, 91.0, 0.9) for f in range(0, 40)]  # always on top of person 1
    tracklets = mine_tracklets(table_of(boxes), camera=3, first_label=10, min_crops=8, every=2)
    assert [t.track_id for t in tracklets] == [2, 3, 4]  # 1 and 8 cover each other; 9 is too short
    assert [t.label for t in tracklets] == [10, 11, 12] and {t.camera for t in tracklets} == {3}
    assert all(c.pid == t.label for t in tracklets for c in t.crops)
    assert tracklets[0].span == (0, 39) and len(tracklets[0].crops) == 20
    pairs = covisible_pairs(tracklets)
    assert pairs == {(10, 12), (11, 12)}  # 2 and 3 never overlap in time; 4 overlaps both
    for a, b in pairs:
        assert a != b
    other_camera = mine_tracklets(table_of(boxes), camera=4, first_label=20, min_crops=8)
    # the same tracks seen by another camera pair only among themselves, never across cameras
    assert covisible_pairs(tracklets + other_camera) == pairs | {(20, 22), (21, 22)}
    for seed in range(20):
        group = covisible_groups([10, 11, 12], pairs, 3, random.Random(seed))
        if group is not None:
            assert all((min(a, b), max(a, b)) in pairs for i, a in enumerate(group) for b in group[i + 1 :])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    rows = write_clip(folder / "cam.avi")
    write_mot_results(folder / "tracks.txt", rows)
    return folder


def test_fine_tuning_lowers_the_triplet_loss_on_the_mined_tracklets(clip, small_checkpoint):
    checkpoint = small_checkpoint(seed=1)
    model, info = load_retrieval_model(checkpoint)
    tracklets = mine_tracklets(table_of([tuple(r) for r in _rows(clip)]), camera=0, min_crops=8)
    assert len(tracklets) == 4
    images = cut_crops(str(clip / "cam.avi"), [c for t in tracklets for c in t.crops])
    # A margin far above the untrained features' distances keeps every triplet active, so the loss measures
    # the separation itself (with 0.3 these easy generated people already have zero loss).
    settings = AdaptSettings(steps=12, groups_per_batch=3, crops_per_tracklet=4, lr=1e-3, distill_weight=0.1,
                             held_out_fraction=0.0, eval_every=12, margin=100.0)  # fmt: skip
    result = adapt_model(model, tracklets, images, info, settings)
    assert result.steps_run == 12 and result.held_out_tracklets == 0 and result.training_tracklets == 4
    assert result.triplet_before > 100 - 50 and result.triplet_after < result.triplet_before - 1.0
    # the recorded "after" is the model's own loss on the fixed groups, recomputed here
    crops = _CropTensors(tracklets, images, info)
    pairs = covisible_pairs(tracklets)
    groups = [
        g for g in (covisible_groups([0, 1, 2, 3], pairs, 3, random.Random(1 + i)) for i in range(10)) if g
    ]
    assert triplet_on_groups(model, crops, groups, 4, 100.0, 0) == pytest.approx(result.triplet_after)


def _rows(folder: Path) -> list[tuple]:
    table = read_mot_file(folder / "tracks.txt")
    return [(int(f), int(i), *b, s) for f, i, b, s in zip(table.frames, table.ids, table.boxes, table.scores,
                                                          strict=True)]  # fmt: skip


def test_adapt_tool_runs_the_pipeline_and_writes_a_loadable_model_that_an_old_gallery_refuses(
    clip, small_checkpoint, tmp_path, capsys, load_tool
):
    checkpoint = small_checkpoint(seed=2)
    tool = load_tool("adapt")
    out, gallery = tmp_path / "adapted", tmp_path / "site_gallery"
    # --gallery: the footage is tracked into the gallery (as camera 7) with the source model, then adapted to
    argv = [str(clip / "cam.avi"), "--gallery", str(gallery), "--camera-ids", "7", "--detections",
            str(clip / "tracks.txt"), "--from", str(checkpoint), "--out", str(out), "--steps", "4", "--lr",
            "1e-3", "--held-out", "0", "--tracklet-id-weight", "1"]  # fmt: skip
    assert tool.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapt.json", "model.pt", "model_card.md", "pipeline"]
    adapted_model, adapted = load_retrieval_model(out / "model.pt")
    _, source = load_retrieval_model(checkpoint)
    report = json.loads((out / "adapt.json").read_text())
    assert report["model_name"] == adapted["model_name"] != source["model_name"]
    assert report["source_model_name"] == source["model_name"] and report["tracklets"] == 4
    assert "4 tracklets" in (out / "model_card.md").read_text()
    assert all(np.isfinite(r["tracklet_id"]) for r in report["result"]["history"])  # the TAUDL head trained
    tracks = out / "pipeline" / "cam7" / "tracks.txt"  # the tracks it was adapted to stay beside it
    assert report["footage"][0]["tracks"] == str(tracks) and report["footage"][0]["camera_id"] == 7
    assert report["footage"][0]["every"] == 2  # a crop every 0.2 s of the 10 fps clip
    assert set(read_mot_file(tracks).ids.tolist()) == set(PEOPLE)
    with sqlite3.connect(gallery / DB_FILENAME) as db:
        assert db.execute("SELECT DISTINCT camera_id FROM tracks").fetchall() == [(7,)]
    with GalleryStore.open(gallery, model_name=source["model_name"], feature_dim=source["feature_dim"]):
        pass  # the gallery was built with the source model
    with pytest.raises(GalleryMismatchError):
        GalleryStore.open(gallery, model_name=adapted["model_name"], feature_dim=adapted["feature_dim"])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # --tracks (made earlier) and --gallery (make them) exclude each other
        tool.main(argv + ["--tracks", str(tracks)])
    assert "not both" in capsys.readouterr().err
    missing = [str(clip / "cam.avi"), "--tracks", str(tmp_path / "none.txt"), "--from", str(checkpoint),
               "--out", str(tmp_path / "x")]  # fmt: skip
    assert tool.main(missing) == 2
    assert "adapt: error:" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_per_camera_tracklet_classifier_matches_a_slow_reference_and_cameras_never_compete():
    torch.manual_seed(0)
    tracklets = [Tracklet(label, camera, label, (0, 9), ()) for label, camera in
                 [(0, 0), (1, 0), (2, 1), (3, 0), (4, 1)]]  # fmt: skip
    teacher = {t.label: F.normalize(torch.randn(3, 8), dim=1) for t in tracklets}
    head = PerCameraTrackletClassifier(tracklets, teacher, scale=16.0)
    feats, labels = torch.randn(6, 8), torch.tensor([0, 1, 3, 3, 2, 4])
    expected = 0.0
    for feat, label in zip(feats, labels.tolist(), strict=True):
        own = [t.label for t in tracklets if t.camera == tracklets[label].camera]
        with torch.no_grad():
            logits = torch.stack([16.0 * F.cosine_similarity(feat, head.weight[t], dim=0) for t in own])
            expected += float(-torch.log_softmax(logits, dim=0)[own.index(label)])
    assert head.loss(feats, labels).item() == pytest.approx(expected / 6, rel=1e-5)
    # a camera-0 crop's loss does not see camera 1's tracklets
    before = head.loss(feats[:3], labels[:3]).item()
    with torch.no_grad():
        head.weight[2] = head.weight[0]
    assert head.loss(feats[:3], labels[:3]).item() == pytest.approx(before)
