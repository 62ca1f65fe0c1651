#!/usr/bin/env python
"""Adapt the re-ID model to your cameras without labels: fine-tune it on the footage's own tracklets.

    # 1+2. track the footage into gallery g (cameras 1, 2, ... in the order given) and adapt to it
    python tools/adapt.py cam1.mp4 cam2.mp4 --gallery g --out runs/adapt/site
    # or adapt to tracks made earlier by tools/demo_video.py (tracks.txt of its --output)
    python tools/adapt.py cam1.mp4 --tracks runs/cam1/tracks.txt --out runs/adapt/site
    # 3. rebuild the gallery with the new model (a gallery of the old model refuses it)
    python tools/demo_video.py cam1.mp4 --camera-id 1 --gallery g_adapted \\
        --checkpoint runs/adapt/site/model.pt

What it learns from (see reid/engine/adapt.py): each long, clean track is one pseudo-identity; tracks seen at
the same time by the same camera are certainly different people, and every training batch is made of such
co-visible tracks. The batch-hard triplet loss pulls a track's crops together and pushes co-visible tracks
apart; a distillation term keeps features near the starting model's, and the best state on held-out tracks
wins (early stopping). Give several videos (each with its tracks) to adapt to several cameras at once.

Writes into --out: model.pt (loads wherever a checkpoint does; its model name differs from the source's),
model_card.md, adapt.json (settings, tracklets used, losses, held-out separation before/after), and with
--gallery the pipeline's outputs per camera under pipeline/cam<N>/ (tracks.txt, identities.txt, summary.json,
contact_sheet.png), so the tracks a model was adapted to stay beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

from reid.data.tracklet_crops import covisible_pairs, cut_crops, mine_tracklets
from reid.engine.adapt import AdaptSettings, adapt_model
from reid.gallery import GalleryError
from reid.models.checkpoint import CheckpointError, load_retrieval_model, retrieval_state_dict, with_checksum
from reid.shipped import DEFAULT_MODEL, SHIPPED_CHECKPOINT
from reid.utils.io import atomic_torch_save, atomic_write_json, atomic_write_text, file_sha256, staged_folder
from reid.video.detection import DetectorUnavailableError
from reid.video.mot_io import MotFormatError, read_mot_file
from reid.video.reader import VideoReader, VideoSourceError, frames_in

PIPELINE_DIR = "pipeline"
OUTPUT_NAMES = frozenset({"model.pt", "model_card.md", "adapt.json", PIPELINE_DIR})
logger = logging.getLogger("adapt")

CROP_INTERVAL_S = 0.2
"""Default time between two crops kept from a track, so that --min-crops means the same length of clean track
(1.6 s for 8 crops) at any frame rate; 2 frames at 10 fps, the setting adapt was measured with."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("footage", nargs="+", help="video file(s), one camera each")
    parser.add_argument(
        "--tracks", nargs="+", help="one MOTChallenge tracks.txt per video, from an earlier demo_video.py run"
    )
    parser.add_argument(
        "--gallery",
        type=Path,
        help="instead of --tracks: run the video pipeline (tools/demo_video.py, with the --from model) on "
        "each video into this gallery first, and adapt to the tracks it makes",
    )
    parser.add_argument(
        "--camera-ids",
        nargs="+",
        type=int,
        help="with --gallery: camera number per video (default 1, 2, ...)",
    )
    parser.add_argument(
        "--detections", nargs="+", help="with --gallery: one MOTChallenge det.txt per video (skips detection)"
    )
    parser.add_argument(
        "--from",
        dest="source",
        default=DEFAULT_MODEL,
        help=f"model to start from: a .pt checkpoint (default: the shipped {SHIPPED_CHECKPOINT.name})",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for model.pt, model_card.md, adapt.json"
    )
    parser.add_argument("--min-crops", type=int, default=8, help="clear crops a track needs to be used")
    parser.add_argument("--every", type=int, default=None,
                        help="keep every K-th frame of a track (default: every 0.2 s of video, i.e. 2 frames "
                        "at 10 fps, 5 at 25 fps)")
    parser.add_argument("--min-height", type=float, default=64.0, help="smallest crop height, pixels")
    defaults = AdaptSettings()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--distill-weight", type=float, default=defaults.distill_weight)
    parser.add_argument(
        "--tracklet-id-weight",
        type=float,
        default=defaults.tracklet_id_weight,
        help="weight of TAUDL's per-camera tracklet classification loss (default 0: off; it treats a "
        "camera's tracklets as different people, which fragments of one person break)",
    )
    parser.add_argument(
        "--held-out",
        type=float,
        default=defaults.held_out_fraction,
        help="fraction of tracks held out for early stopping",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.tracks is not None and args.gallery is not None:
        parser.error("--tracks (tracks made earlier) or --gallery (run the pipeline to make them), not both")
    if args.tracks is None and args.gallery is None:
        parser.error("give --tracks (tracks made earlier) or --gallery (run the pipeline to make them)")
    if args.tracks is None:
        args.camera_ids = args.camera_ids or list(range(1, len(args.footage) + 1))
        if min(args.camera_ids) < 0 or len(set(args.camera_ids)) != len(args.camera_ids):
            parser.error(f"--camera-ids must be distinct and >= 0, got {args.camera_ids}")
    elif args.camera_ids or args.detections:
        parser.error("--camera-ids and --detections go with --gallery (with --tracks the pipeline has run)")
    for name in ("tracks", "camera_ids", "detections"):
        given = getattr(args, name)
        if given is not None and len(given) != len(args.footage):
            option = "--" + name.replace("_", "-")
            parser.error(
                f"{option} needs one value per video: {len(args.footage)} videos, {len(given)} given"
            )
    if args.steps < 1 or args.lr <= 0 or not 0 <= args.held_out < 1 or args.tracklet_id_weight < 0:
        parser.error("--steps must be >= 1, --lr > 0, --held-out in [0, 1) and --tracklet-id-weight >= 0")
    return args


def model_card(adapt: dict) -> str:
    result = adapt["result"]
    lines = [
        f"# {adapt['model_name']}: adapted to {len(adapt['footage'])} camera(s) without labels",
        "",
        f"- **Source model.** `{adapt['source']}` ({adapt['source_model_name']}).",
        "- **Footage.** "
        + "; ".join(
            f"`{f['video']}` (sha256 {f['video_sha256'][:12]}..., tracks `{f['tracks']}`)"
            for f in adapt["footage"]
        )
        + ".",
        f"- **Tracks used.** {adapt['tracklets']} tracklets ({adapt['crops']} crops), "
        f"{adapt['covisible_pairs']} co-visible pairs; {result['held_out_tracklets']} held out.",
        f"- **Training.** {result['steps_run']} steps, best held-out state at step {result['best_step']}; "
        f"settings in adapt.json.",
        f"- **Figures.** Held-out separation (ROC AUC, same track vs co-visible tracks): "
        f"{result['held_out_auc_before']:.3f} before, {result['held_out_auc_best']:.3f} after. Triplet loss "
        f"on the mined tracklets: {result['triplet_before']:.3f} before, "
        f"{result['triplet_after']:.3f} after.",
        "- **Video gates.** Inherited from the source model (calibrated on its held-out identities); "
        "re-calibrate with `tools/calibrate_threshold.py --write-thresholds` where labelled people are "
        "at hand.",
        "- **Terms.** Those of the source model's training data apply to this model too.",
        "",
    ]
    return "\n".join(lines)


def adapt_to_tracks(
    args: argparse.Namespace, model, info: dict, source: Path, tracks_files: list[Path], recorded: list[str]
) -> tuple[dict, dict]:
    """Mine the tracklets of every video, fine-tune ``model`` on them; return the checkpoint to write and
    adapt.json's content (without the model name, known once the checkpoint is written)."""
    tracklets, images, footage = [], {}, []
    for camera, (video, tracks) in enumerate(zip(args.footage, tracks_files, strict=True)):
        with VideoReader(video) as reader:
            every = args.every or frames_in(CROP_INTERVAL_S, reader.info.fps)
        mined = mine_tracklets(
            read_mot_file(tracks),
            camera=camera,
            first_label=len(tracklets),
            min_crops=args.min_crops,
            every=every,
            min_height=args.min_height,
        )
        images.update(cut_crops(video, [c for t in mined for c in t.crops]))
        tracklets += mined
        footage.append(
            {
                "video": str(video),
                "video_sha256": file_sha256(Path(video)),
                "tracks": recorded[camera],
                "every": every,
                "tracklets": len(mined),
            }
        )
        if args.gallery is not None:
            footage[-1].update(gallery=str(args.gallery), camera_id=args.camera_ids[camera])
        logger.info("%s: %d usable tracklets", video, len(mined))
    if len(tracklets) < 2:
        raise ValueError(
            f"only {len(tracklets)} track(s) are long and clean enough (--min-crops "
            f"{args.min_crops}); adapt needs several people seen at the same time"
        )
    settings = AdaptSettings(
        steps=args.steps,
        lr=args.lr,
        distill_weight=args.distill_weight,
        tracklet_id_weight=args.tracklet_id_weight,
        held_out_fraction=args.held_out,
        seed=args.seed,
    )
    result = adapt_model(model, tracklets, images, info, settings)
    state = {k: v.float() for k, v in retrieval_state_dict(model).items()}
    payload = with_checksum(
        {
            "model": state,
            "config": info["config"],
            "num_classes": info["num_classes"],
            "epoch": info["epoch"],
            "appearance_thresholds": info["appearance_thresholds"],
        }
    )
    return payload, {
        "source": str(source),
        "source_model_name": info["model_name"],
        "footage": footage,
        "tracklets": len(tracklets),
        "crops": sum(len(t.crops) for t in tracklets),
        "covisible_pairs": len(covisible_pairs(tracklets)),
        "settings": vars(settings),
        "mining": {"min_crops": args.min_crops, "every": args.every or f"{CROP_INTERVAL_S} s of video",
                   "min_height": args.min_height},
        "result": result.as_dict(),
    }


def track_footage(args: argparse.Namespace, folder: Path) -> list[Path]:
    """Run the video pipeline of tools/demo_video.py on each video, with the source model as embedder, into
    ``args.gallery``; outputs go to ``folder/cam<N>``. Returns the tracks.txt files, one per video."""
    spec = importlib.util.spec_from_file_location("demo_video", Path(__file__).with_name("demo_video.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    tracks = []
    for index, (video, camera) in enumerate(zip(args.footage, args.camera_ids, strict=True)):
        output = folder / f"cam{camera}"
        argv = [video, "--gallery", str(args.gallery), "--output", str(output), "--camera-id", str(camera),
                "--checkpoint", args.source, "--no-video"]  # fmt: skip
        if args.detections:
            argv += ["--detections", args.detections[index]]
        summary = demo.run(demo.parse_args(argv))
        logger.info(
            "%s: camera %d, %d tracks into gallery %s", video, camera, summary["tracks"], args.gallery
        )
        tracks.append(output / "tracks.txt")
    return tracks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = SHIPPED_CHECKPOINT if args.source == DEFAULT_MODEL else Path(args.source)
    try:
        if source.suffix.lower() == ".onnx":
            raise ValueError(f"--from {source}: an ONNX export cannot be trained; give its .pt checkpoint")
        model, info = load_retrieval_model(source)
        with staged_folder(args.out, OUTPUT_NAMES) as staging:
            if args.tracks is not None:
                tracks_files, recorded = [Path(t) for t in args.tracks], list(args.tracks)
            else:
                tracks_files = track_footage(args, staging / PIPELINE_DIR)
                recorded = [str(args.out / f.relative_to(staging)) for f in tracks_files]
            payload, adapt = adapt_to_tracks(args, model, info, source, tracks_files, recorded)
            atomic_torch_save(payload, staging / "model.pt")
            _, adapted = load_retrieval_model(staging / "model.pt")  # proves it loads; gives its name
            adapt = {"model_name": adapted["model_name"], **adapt}
            atomic_write_json(staging / "adapt.json", adapt)
            atomic_write_text(staging / "model_card.md", model_card(adapt))
    except (
        OSError, ValueError, CheckpointError, MotFormatError, VideoSourceError, GalleryError,
        DetectorUnavailableError,
    ) as err:  # fmt: skip
        print(f"adapt: error: {err}", file=sys.stderr)
        return 2
    summary = {
        k: adapt["result"][k]
        for k in ("held_out_auc_before", "held_out_auc_best", "triplet_before", "triplet_after", "best_step")
    }
    print(json.dumps({"model": str(args.out / "model.pt"), "model_name": adapt["model_name"], **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
