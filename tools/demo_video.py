#!/usr/bin/env python
"""Turn camera footage into searchable gallery entries: detect people, track them, store each track.

    python tools/demo_video.py                                    # the clip shipped in assets/
    python tools/demo_video.py footage.mp4 --gallery runs/g --camera-id 2 --checkpoint runs/x/best.pt
    python tools/demo_video.py footage.mp4 --embedder handcrafted    # no CNN: colour/gradient descriptor
    python tools/demo_video.py rtsp://cam/stream --gallery runs/g --max-frames 3000
    python tools/demo_video.py vtest.avi --detections det.txt    # precomputed MOTChallenge detections

Writes into --output: summary.json, annotated.mp4 (boxes labelled with track and gallery identity),
tracks.txt and identities.txt (MOTChallenge results: frame,id,x,y,w,h,score,-1,-1,-1, frames 1-based),
contact_sheet.png (one row of crops per gallery identity of this run). The gallery (--gallery) is opened
or created and appended to; search it later with tools/search_gallery.py.

People are embedded with the shipped re-ID model (assets/models/cuhk03_mobilenetv2.pt) unless --checkpoint
or --embedder says otherwise. The appearance gates of the tracker and the stitcher, and a new gallery's match
threshold, come with the embedder (calibrated on held-out identities of its training data, never on test
footage).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

from reid.gallery import GalleryError, GalleryStore
from reid.gallery.schema import DB_FILENAME
from reid.utils.io import atomic_write_json
from reid.video.detection import DETECTOR_KINDS, DetectorUnavailableError, PrecomputedDetector, build_detector
from reid.video.embedder import add_embedder_arguments, build_embedder, embedder_choice
from reid.video.mot_io import MotFormatError, write_mot_results
from reid.video.pipeline import VideoRunResult, VideoToGallery, pipeline_config_for
from reid.video.reader import VideoReader, VideoSourceError
from reid.video.ssdlite import DEFAULT_TILES, parse_tiles
from reid.video.visualize import (
    AtomicVideoWriter,
    contact_sheet,
    draw_labelled_boxes,
    identity_rows,
    write_png,
)

logger = logging.getLogger("demo_video")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO_ROOT / "assets" / "vtest_clip.avi"
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "video",
        nargs="?",
        default=str(DEFAULT_CLIP),
        help="video file, camera index (e.g. 0) or stream URL (default: the clip in assets/)",
    )
    parser.add_argument("--gallery", default="runs/demo/gallery", help="gallery folder (created if absent)")
    parser.add_argument("--output", default="runs/demo", help="folder for summary, video, tracks, sheet")
    add_embedder_arguments(parser, purpose="from tools/train_reid.py")
    parser.add_argument("--camera-id", type=int, default=0, help="camera number recorded in the gallery")
    parser.add_argument(
        "--detector", choices=[k for k in DETECTOR_KINDS if k != "precomputed"], default="ssdlite",
        help="ssdlite: the shipped CNN (default); hog: OpenCV's HOG, no model file; onnx: your YOLO export; "
        "torchvision: a torchvision detection model (needs its weights on disk)",
    )
    parser.add_argument(
        "--tiles",
        type=_tiles,
        default=DEFAULT_TILES,
        metavar="RxC",
        help="ssdlite: run the network on R x C overlapping tiles of the frame, for people far from the "
        "camera (default 3x3; 1x1 for footage of large people, faster)",
    )
    parser.add_argument("--onnx-model", help="YOLO person detector in ONNX format (with --detector onnx)")
    parser.add_argument(
        "--detections", help="MOTChallenge det.txt with boxes for this video (skips detection)"
    )
    parser.add_argument(
        "--detect-every",
        type=int,
        default=None,
        help="run the detector on every K-th frame, track in between (default: every 0.4 s of video, "
        "i.e. 4 frames at 10 fps, 10 at 25 fps; 1 with --detections)",
    )
    parser.add_argument(
        "--resize",
        type=float,
        default=None,
        help="scale frames by S before detection (HOG default 1.33: its window wants people ~96 px tall)",
    )
    parser.add_argument("--start-frame", type=int, default=0,
                        help="skip the first N frames (frame numbers in the outputs stay the video's)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    parser.add_argument(
        "--match-threshold",
        type=float,
        default=None,
        help="gallery distance to join an identity (default: the gallery's; on a new gallery, the one "
        "calibrated for the embedder)",
    )
    parser.add_argument("--read-timeout", type=float, default=10.0, help="seconds to wait for a frame")
    parser.add_argument("--no-video", action="store_true", help="skip the annotated video")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    # Checked here, before a gallery folder or an output is created.
    for name, value, least in (("--detect-every", args.detect_every, 1), ("--max-frames", args.max_frames, 1),
                               ("--camera-id", args.camera_id, 0), ("--start-frame", args.start_frame, 0)):
        if value is not None and value < least:
            parser.error(f"{name} must be at least {least}, got {value}")
    if args.read_timeout <= 0:
        parser.error(f"--read-timeout must be positive, got {args.read_timeout}")
    return args


def _tiles(text: str) -> tuple[int, int]:
    try:
        return parse_tiles(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _identity_label(track_id: int, identity: int | None) -> tuple[str, int]:
    if identity is None:
        return f"T{track_id}", 1000 + track_id
    return f"T{track_id} ID{identity}", identity


def render_video(
    source: str, result: VideoRunResult, path: Path, *, max_frames: int | None, read_timeout: float,
    start_frame: int = 0,
) -> Path:
    """Second pass over a file: draw every track's final boxes with its gallery identity."""
    by_frame: dict[int, list] = defaultdict(list)
    for track in result.tracks:
        label, key = _identity_label(track.track_id, track.identity_id)
        for frame_index, box, _ in track.rows:
            by_frame[frame_index].append((box, label, key))
    writer = AtomicVideoWriter(path, result.info.fps, (result.info.width, result.info.height))
    try:
        with VideoReader(source, read_timeout_s=read_timeout, max_frames=max_frames,
                         start_frame=start_frame) as reader:
            for index, frame in reader:
                writer.write(draw_labelled_boxes(frame, by_frame.get(index, [])))
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def write_outputs(
    args: argparse.Namespace,
    result: VideoRunResult,
    store: GalleryStore,
    output: Path,
    live_video: Path | None,
    started: float,
) -> dict:
    track_rows, identity_rows_mot = [], []
    crops_by_identity: dict[int, list[str]] = defaultdict(list)
    tracks_by_identity: dict[int, list[int]] = defaultdict(list)
    new_identities: set[int] = set()
    for track in result.tracks:
        for frame_index, box, score in track.rows:
            track_rows.append((frame_index, track.track_id, *box, score))
            if track.identity_id is not None:
                identity_rows_mot.append((frame_index, track.identity_id, *box, score))
        if track.identity_id is not None:
            crops_by_identity[track.identity_id].extend(track.crop_paths)
            tracks_by_identity[track.identity_id].append(track.track_id)
            if track.is_new_identity:
                new_identities.add(track.identity_id)
    write_mot_results(output / "tracks.txt", track_rows)
    write_mot_results(output / "identities.txt", identity_rows_mot)
    write_png(
        output / "contact_sheet.png",
        contact_sheet(identity_rows(crops_by_identity, tracks_by_identity, new_identities)),
    )
    video_path = live_video
    if video_path is None and not args.no_video and result.info.is_file:
        video_path = render_video(
            args.video,
            result,
            output / "annotated.mp4",
            max_frames=args.max_frames,
            read_timeout=args.read_timeout,
            start_frame=args.start_frame,
        )
    seconds = time.perf_counter() - started
    matched = {t.identity_id for t in result.gallery_tracks if not t.is_new_identity}
    return {
        "video": result.info.source,
        "frames_read": result.frames_read,
        "stopped_by": result.stopped_by,
        "seconds": round(seconds, 3),
        "fps_end_to_end": round(result.frames_read / max(seconds, 1e-9), 2),
        "seconds_tracking": round(result.seconds, 3),
        "fps_tracking": round(result.frames_read / max(result.seconds, 1e-9), 2),
        "video_fps": result.info.fps,
        "frame_size": [result.info.width, result.info.height],
        "detection_frames": result.detection_frames,
        "detections": result.detections,
        "tracks": len(result.tracks),
        "gallery_tracks": len(result.gallery_tracks),
        "identities_created": len(new_identities),
        "identities_matched": len(matched - new_identities),
        "identities_in_run": len(crops_by_identity),
        "gallery": {
            "path": str(store.root),
            "video_id": result.video_id,
            "identities": store.num_identities,
            "tracks": store.num_tracks,
            "entries": store.num_entries,
            "model_name": store.model_name,
            "match_threshold": store.match_threshold,
        },
        "outputs": {
            "tracks": "tracks.txt",
            "identities": "identities.txt",
            "contact_sheet": "contact_sheet.png",
            "annotated_video": None if video_path is None else Path(video_path).name,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("quiet",)},
    }


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    output = Path(args.output)
    detect_every = args.detect_every or (1 if args.detections else None)  # None: by the video's fps
    # Cheap checks first (the source, the detections, the frame size), the re-ID model last, and all of it
    # before the gallery is created.
    reader = VideoReader(args.video, read_timeout_s=args.read_timeout, max_frames=args.max_frames,
                         start_frame=args.start_frame)
    try:
        detector = build_detector(
            args.detector, detections=args.detections, onnx_model=args.onnx_model, resize=args.resize,
            tiles=args.tiles,
        )
        check_frame_size = getattr(detector, "check_frame_size", None)
        if check_frame_size is not None:
            check_frame_size(reader.info.width, reader.info.height)
        embedder = build_embedder(embedder_choice(args), device=args.device)
    except BaseException:
        reader.close()
        raise
    config = pipeline_config_for(embedder, detect_every=detect_every)
    threshold = args.match_threshold
    new_gallery = not (Path(args.gallery) / DB_FILENAME).exists()
    if threshold is None and new_gallery and embedder.appearance is not None:
        threshold = embedder.appearance.gallery
    live_writer = None
    try:
        with GalleryStore.open(
            args.gallery,
            model_name=embedder.model_name,
            feature_dim=embedder.feature_dim,
            match_threshold=threshold,
        ) as store:
            on_frame = None
            if not reader.info.is_file and not args.no_video:
                # A live source cannot be read twice: annotate as we go, with track ids only.
                live_writer = AtomicVideoWriter(
                    output / "annotated.mp4", reader.info.fps, (reader.info.width, reader.info.height)
                )

                def on_frame(index, frame, live):
                    labelled = [(box, f"T{track_id}", 1000 + track_id) for track_id, box in live]
                    live_writer.write(draw_labelled_boxes(frame, labelled))

            pipeline = VideoToGallery(
                detector,
                embedder,
                store,
                camera_id=args.camera_id,
                config=config,
            )
            result = pipeline.run(reader, on_frame=on_frame, progress=not args.quiet)
            if isinstance(detector, PrecomputedDetector):
                detector.warn_if_unused(range(args.start_frame, args.start_frame + result.frames_read))
            live_video = live_writer.commit() if live_writer is not None else None
            live_writer = None
            summary = write_outputs(args, result, store, output, live_video, started)
            summary["settings"]["detect_every"] = result.detect_every
            summary["settings"]["detector"] = detector.name
            summary["settings"]["embedder"] = embedder.model_name
            atomic_write_json(output / "summary.json", summary)
    finally:
        reader.close()
        if live_writer is not None:
            live_writer.abort()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        summary = run(args)
    except (
        FileNotFoundError,
        VideoSourceError,
        MotFormatError,
        DetectorUnavailableError,
        GalleryError,
        ValueError,
    ) as exc:
        logger.error("%s", exc)
        return 2
    logger.info(
        "%d frames in %.1f s (%.1f fps end to end); %d tracks, %d gallery identities (%d new)",
        summary["frames_read"],
        summary["seconds"],
        summary["fps_end_to_end"],
        summary["tracks"],
        summary["identities_in_run"],
        summary["identities_created"],
    )
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "frames_read",
                    "fps_end_to_end",
                    "tracks",
                    "identities_in_run",
                    "identities_created",
                    "identities_matched",
                )
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
