"""tools/demo_video.py end to end on the shipped clip, and its handling of bad input."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.gallery import GalleryStore
from reid.video.embedder import build_embedder
from reid.video.mot_io import read_mot_file
from reid.video.reader import VideoReader, VideoSourceError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tools" / "demo_video.py"
DEFAULT_EMBEDDER = build_embedder()


def demo(*args):
    return subprocess.run(
        [sys.executable, str(DEMO), *map(str, args), "--quiet"], capture_output=True, text=True, timeout=300
    )


def write_clip(path, frames, size=(160, 120), fourcc="MJPG", fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def test_demo_on_shipped_clip_writes_everything_and_appends_to_gallery(tmp_path, load_tool):
    gallery, out1, out2 = tmp_path / "gallery", tmp_path / "run1", tmp_path / "run2"
    first = demo("--gallery", gallery, "--output", out1, "--max-frames", 30, "--detect-every", 2,
                 "--camera-id", 1)
    assert first.returncode == 0, first.stderr
    summary = json.loads((out1 / "summary.json").read_text())
    assert summary["frames_read"] == 30 and summary["fps_end_to_end"] > 0
    assert summary["identities_created"] >= 1 and summary["gallery_tracks"] >= 1
    assert summary["settings"]["detector"] == "ssdlite" and summary["settings"]["detect_every"] == 2
    assert summary["settings"]["tiles"] == [3, 3]
    tracks, identities = read_mot_file(out1 / "tracks.txt"), read_mot_file(out1 / "identities.txt")
    assert len(tracks) > 0 and tracks.frames.max() < 30
    assert set(identities.ids.tolist()) <= set(range(1, summary["gallery"]["identities"] + 1))
    sheet = cv2.imread(str(out1 / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= summary["identities_in_run"] * 128
    with VideoReader(out1 / summary["outputs"]["annotated_video"]) as reader:
        assert reader.info.num_frames == 30 and (reader.info.width, reader.info.height) == (768, 576)

    # The next 30 frames as a second camera go into the same gallery: people still in view are recognised.
    # (In-process from here on: the command line itself was exercised above; a new interpreter costs seconds.)
    argv = [str(ROOT / "assets" / "vtest_clip.avi"), "--gallery", str(gallery), "--output", str(out2),
            "--start-frame", "30", "--max-frames", "30", "--detect-every", "2", "--camera-id", "2",
            "--no-video", "--quiet"]  # fmt: skip
    second = load_tool("demo_video").main(argv)
    assert second == 0
    again = json.loads((out2 / "summary.json").read_text())
    assert again["identities_matched"] >= 1
    later = read_mot_file(out2 / "tracks.txt")
    assert later.frames.min() >= 30 and later.frames.max() < 60  # the video's own frame numbers
    assert summary["settings"]["embedder"] == DEFAULT_EMBEDDER.model_name  # the shipped model by default
    with GalleryStore.open(
        gallery,
        model_name=DEFAULT_EMBEDDER.model_name,
        feature_dim=DEFAULT_EMBEDDER.feature_dim,
        create=False,
    ) as store:
        assert store.num_tracks == summary["gallery_tracks"] + again["gallery_tracks"]
        crops = sorted((gallery / "crops").rglob("*.jpg"))
        assert len(crops) == store.num_entries > 0
        names = " ".join(p.name for p in crops)
        assert "_c1s1_" in names and "_c2s2_" in names  # Market-1501 style: c<camera>s<video>

    # The README's last step: search with a camera-2 crop of a person seen by both cameras; their identity
    # ranks first and its evidence includes camera 1.
    both = {int(p.name.split("_")[0]) for p in crops if "_c1s1_" in p.name} & {
        int(p.name.split("_")[0]) for p in crops if "_c2s2_" in p.name}
    assert both
    query = next(p for p in crops if "_c2s2_" in p.name and int(p.name.split("_")[0]) in both)
    search = load_tool("search_gallery").main(
        [str(query), "--gallery", str(gallery), "--topk", "3", "--output", str(tmp_path / "search")]
    )
    assert search == 0
    hits = json.loads((tmp_path / "search" / "search.json").read_text())["hits"]
    assert hits[0]["identity_id"] == int(query.name.split("_")[0])
    assert any("_c1s1_" in e["crop_path"] for e in hits[0]["evidence"])
    assert cv2.imread(str(tmp_path / "search" / "search.png")) is not None


def test_video_without_people(tmp_path):
    clip = write_clip(tmp_path / "empty.avi", [np.full((120, 160, 3), 90, np.uint8)] * 12, fps=25.0)
    result = demo(clip, "--gallery", tmp_path / "g", "--output", tmp_path / "out",
                  "--embedder", "handcrafted")  # no person, no crop: the embedder never runs
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames_read"] == 12 and summary["tracks"] == 0 and summary["identities_in_run"] == 0
    # The default stride is 0.4 s of video: 10 frames at 25 fps, so frames 0 and 10 are detected.
    assert summary["settings"]["detect_every"] == 10 and summary["detection_frames"] == 2
    assert (tmp_path / "out" / "tracks.txt").read_text() == ""
    assert cv2.imread(str(tmp_path / "out" / "contact_sheet.png")) is not None


def test_odd_frame_size_is_read(tmp_path):
    clip = write_clip(
        tmp_path / "odd.avi", [np.full((77, 101, 3), i, np.uint8) for i in range(5)], size=(101, 77)
    )
    with VideoReader(clip) as reader:
        frames = list(reader)
        size = (reader.info.height, reader.info.width)
    # The encoder may round an odd size down to even; the reader reports and keeps whatever it decodes.
    assert len(frames) == 5 and size[0] in (76, 77) and size[1] in (100, 101)
    assert all(frame.shape == (*size, 3) for _, frame in frames)


@pytest.mark.parametrize("case", ["missing", "not_a_video", "zero_frames", "bad_detections", "detect_every",
                                  "tiles", "camera_id", "tiny_for_hog"])
def test_bad_input_fails_clearly_and_leaves_no_gallery(tmp_path, case):
    video = tmp_path / "clip.avi"
    extra = []
    if case == "not_a_video":
        video.write_text("this is not a video\n")
    elif case == "zero_frames":
        write_clip(video, [])
    elif case == "bad_detections":
        write_clip(video, [np.zeros((120, 160, 3), np.uint8)] * 3)
        det = tmp_path / "det.txt"
        det.write_text("1,-1,1,2,3,4,0.9\n2,-1,1,2,3\n")
        extra = ["--detections", det]
    elif case == "tiny_for_hog":  # HOG reads out of bounds on frames smaller than its window: refused first
        write_clip(video, [np.zeros((64, 64, 3), np.uint8)] * 3, size=(64, 64))
        extra = ["--detector", "hog"]
    elif case in ("detect_every", "tiles", "camera_id"):  # refused before anything is opened or created
        write_clip(video, [np.zeros((120, 160, 3), np.uint8)] * 3)
        extra = {"detect_every": ["--detect-every", 0], "tiles": ["--tiles", "0x3"],
                 "camera_id": ["--camera-id", -1]}[case]
    result = demo(video, "--gallery", tmp_path / "g", "--output", tmp_path / "out", *extra)
    assert result.returncode == 2
    expected = {
        "missing": "not found",
        "not_a_video": "clip.avi",
        "zero_frames": "clip.avi",
        "bad_detections": "det.txt:2",
        "detect_every": "--detect-every must be at least 1, got 0",
        "tiles": "RxC with R, C >= 1",
        "camera_id": "--camera-id must be at least 0, got -1",
        "tiny_for_hog": "smaller than the HOG window of 64x128",
    }[case]
    assert expected in result.stderr
    assert not (tmp_path / "g").exists() and not (tmp_path / "out" / "summary.json").exists()


def test_reader_rejects_missing_and_undecodable(tmp_path):
    with pytest.raises(FileNotFoundError):
        VideoReader(tmp_path / "nope.mp4")
    (tmp_path / "x.mp4").write_bytes(b"\0" * 100)
    with pytest.raises(VideoSourceError, match="x.mp4"):
        VideoReader(tmp_path / "x.mp4")


def test_reader_starts_at_a_frame_and_keeps_the_source_numbering(tmp_path):
    frames = [np.full((120, 160, 3), 20 * k, np.uint8) for k in range(8)]
    clip = write_clip(tmp_path / "ramp.avi", frames)
    with VideoReader(clip, start_frame=3, max_frames=4) as reader:
        read = list(reader)
    assert [index for index, _ in read] == [3, 4, 5, 6]
    assert [round(float(frame.mean()) / 20) for _, frame in read] == [3, 4, 5, 6]  # the frames themselves
    with VideoReader(clip, start_frame=7) as reader:
        assert [index for index, _ in reader] == [7]
    with pytest.raises(VideoSourceError, match="ends after 8 frames; cannot start at frame 9"):
        VideoReader(clip, start_frame=9)


def test_a_live_source_stores_each_track_as_it_ends(tmp_path):
    # A stream cannot be read twice: no stitching, and every track reaches the gallery while reading goes on.
    from dataclasses import replace

    from reid.video.detection import build_detector
    from reid.video.pipeline import VideoToGallery, pipeline_config_for

    reader = VideoReader(ROOT / "assets" / "vtest_clip.avi", max_frames=80)
    reader.info = replace(reader.info, is_file=False)
    stored_while_reading = []
    with GalleryStore.open(tmp_path / "g", model_name=DEFAULT_EMBEDDER.model_name,
                           feature_dim=DEFAULT_EMBEDDER.feature_dim) as store, reader:
        config = pipeline_config_for(DEFAULT_EMBEDDER)
        config = replace(config, tracker=replace(config.tracker, max_age_s=1.0))  # ends within the clip
        pipeline = VideoToGallery(build_detector("ssdlite"), DEFAULT_EMBEDDER, store, camera_id=1,
                                  config=config)

        def on_frame(index, frame, live):
            stored_while_reading.append(store.num_tracks)

        result = pipeline.run(reader, on_frame=on_frame, progress=False)
        assert result.frames_read == 80 and len(result.gallery_tracks) >= 2
        assert max(stored_while_reading) >= 1  # a track was in the gallery before the stream stopped
        assert store.num_tracks == len(result.gallery_tracks)
