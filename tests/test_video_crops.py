"""A re-ID test set cut from a video's tracks (reid/data/tracklet_crops.py, tools/build_video_crops.py)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.data.tracklet_crops import (
    TrackCrop,
    covered_fraction,
    query_gallery_split,
    segment_of,
    select_track_crops,
)
from reid.evaluation.features_file import load_features
from reid.video.mot_io import MotTable, write_mot_results


def reference_covered(boxes: np.ndarray) -> list[float]:
    out = []
    for i, (x, y, w, h) in enumerate(boxes):
        best = 0.0
        for j, (u, v, p, q) in enumerate(boxes):
            if i != j:
                iw = max(0.0, min(x + w, u + p) - max(x, u))
                ih = max(0.0, min(y + h, v + q) - max(y, v))
                best = max(best, iw * ih / (w * h))
        out.append(best)
    return out


def test_covered_fraction_matches_a_pairwise_loop():
    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(0, 50, 12), rng.uniform(0, 50, 12), rng.uniform(5, 40, (12, 2))])
    np.testing.assert_allclose(covered_fraction(boxes), reference_covered(boxes), rtol=1e-12)
    assert covered_fraction(np.zeros((0, 4))).shape == (0,)


def table(rows: list[tuple[int, int, float, float, float, float]]) -> MotTable:
    array = np.asarray(rows, dtype=np.float64)
    return MotTable(
        array[:, 0].astype(np.int64), array[:, 1].astype(np.int64), array[:, 2:6], np.ones(len(rows))
    )


def test_selection_keeps_only_clear_tall_crops_away_from_boundaries_and_applies_merge_and_drop():
    rows = []
    for frame in range(0, 100):
        rows.append((frame, 1, 10, 10, 30, 80))  # tall, alone: kept on every 4th frame off the boundary
        rows.append((frame, 2, 300, 10, 30, 40))  # too short
        rows.append((frame, 3, 500, 10, 30, 80))  # merged into 1
        rows.append((frame, 4, 600, 10, 30, 80))  # dropped
        rows.append((frame, -1, 700, 10, 30, 80))  # an unlabelled detection
    rows.append((8, 5, 15, 10, 30, 80))  # covers most of track 1 at frame 8: both are dropped there
    crops = select_track_crops(table(rows), num_frames=100, segments=2, gap=6, every=4, min_height=64,
                               max_covered=0.3, merge={3: 1}, drop={4})  # fmt: skip
    frames = sorted({c.frame for c in crops})
    assert all(f % 4 == 0 and abs(f - 50) >= 6 for f in frames)
    assert [c.box[0] for c in crops if c.frame == 8] == [500]  # tracks 1 and 5 cover each other there
    assert 48 not in frames and 52 not in frames and 44 in frames and 56 in frames
    assert {c.pid for c in crops} == {1}
    assert all(c.segment == segment_of(c.frame, 100, 2) == (c.frame >= 50) for c in crops)
    assert len([c for c in crops if c.frame == 44]) == 2  # track 1 and track 3 (merged into pid 1)
    with pytest.raises(ValueError, match="segments must be at least 2"):
        select_track_crops(table(rows), num_frames=100, segments=1)


def test_every_query_has_its_identity_in_another_segment_of_the_gallery():
    crops = [TrackCrop(f, pid, seg, (0, 0, 10, 20)) for pid, segs in ((1, (0, 1)), (2, (0, 2, 3)), (3, (1,)))
             for seg in segs for f in range(seg * 100, seg * 100 + 40, 4)]  # fmt: skip
    query, gallery = query_gallery_split(crops, queries_per_segment=3)
    assert not set(query) & set(gallery) and len(query) + len(gallery) == len(crops)
    assert {c.pid for c in query} == {1, 2}  # pid 3 is seen in one segment: a distractor only
    assert len(query) == 3 * (2 + 3)
    for q in query:
        assert any(g.pid == q.pid and g.segment != q.segment for g in gallery)
    frames = sorted(c.frame for c in query if c.pid == 1 and c.segment == 0)
    assert frames == [4, 20, 32]  # indices 1, 5, 8 of its 10 crops: centres of three equal slices


def write_clip(path: Path, num_frames: int) -> list[tuple[int, int, float, float, float, float]]:
    """Two 'people' (coloured figures) walking across a grey background, and their boxes."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    rows = []
    for frame in range(num_frames):
        image = np.full((240, 320, 3), 128, np.uint8)
        for pid, (colour, y) in {1: ((0, 0, 220), 20), 2: ((220, 0, 0), 120)}.items():
            x = 10 + 5 * frame if pid == 1 else 280 - 5 * frame
            cv2.rectangle(image, (x, y), (x + 30, y + 90), colour, -1)
            rows.append((frame, pid, float(x), float(y), 31.0, 91.0))
        writer.write(image)
    writer.release()
    return rows


def test_tool_writes_a_market_style_test_set_that_extract_features_reads(
    tmp_path, small_checkpoint, capsys, load_tool
):
    video, tracks = tmp_path / "clip.avi", tmp_path / "tracks.txt"
    write_mot_results(tracks, [(f, i, x, y, w, h, 1.0) for f, i, x, y, w, h in write_clip(video, 48)])
    out = tmp_path / "crops"
    tool = load_tool("build_video_crops")
    argv = [
        str(video),
        "--tracks",
        str(tracks),
        "--out",
        str(out),
        "--segments",
        "2",
        "--gap",
        "2",
        "--every",
        "2",
    ]
    assert tool.main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identities"] == manifest["query_identities"] == 2 and manifest["query"] == 2 * 2 * 3
    names = sorted(p.name for p in (out / "query").iterdir())
    assert len(names) == manifest["query"] and names[0].startswith("0001_c1s1_")
    assert len(list((out / "bounding_box_test").iterdir())) == manifest["gallery"]
    crop = cv2.imread(str(out / "query" / names[0]))
    assert crop.shape[:2] == (91, 31) and crop[45, 15, 2] > 150 and crop[45, 15, 0] < 80  # pid 1 is red
    assert cv2.imread(str(out / "contact_sheet.png")) is not None
    capsys.readouterr()
    feats = tmp_path / "feats.npz"
    extract = load_tool("extract_features")
    assert extract.main(["--model", str(small_checkpoint()), "--query", str(out / "query"),
                         "--gallery", str(out / "bounding_box_test"), "--out", str(feats)]) == 0  # fmt: skip
    loaded = load_features(feats)
    assert set(loaded.query_pids.tolist()) == {1, 2} and set(loaded.query_camids.tolist()) <= {0, 1, 2}
    for paths, camids in (
        (loaded.query_paths, loaded.query_camids),
        (loaded.gallery_paths, loaded.gallery_camids),
    ):
        for path, camid in zip(paths, camids, strict=True):
            frame = int(Path(path).name.split("_")[2]) - 1
            assert camid == segment_of(frame, 48, 2)  # the 'camera' is the crop's time segment (0-based)

    # Bad input: one line naming the file, and the earlier output is left whole.
    bad = tmp_path / "bad.txt"
    bad.write_text("1,1,10,10,-5,20,1\n")
    assert tool.main([str(video), "--tracks", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("build_video_crops: error:") and "bad.txt:1" in err and len(err.splitlines()) == 1
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert tool.main([str(video), "--tracks", str(tracks), "--out", str(out), "--merge", "1-2"]) == 2
    assert "--merge expects ID=ID" in capsys.readouterr().err
