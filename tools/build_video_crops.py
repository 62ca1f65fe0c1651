#!/usr/bin/env python
"""Cut a re-ID test set (query / gallery person crops) out of one video and its tracks, with time segments as
cameras, e.g. PETS09-S2L1 (``vtest.avi``) as an unseen domain for models trained on CUHK03.

    # 1. tracks: the public ground truth if you have it, else this project's tracker (here with the
    #    precomputed detections and the handcrafted descriptor, so no re-ID model under test shapes them)
    python tools/demo_video.py ../shared/data/vtest.avi --detections ../shared/data/vtest_det_frcnn.txt \\
        --embedder handcrafted --output runs/pets_tracks --gallery runs/pets_tracks/gallery --no-video
    # 2. crops; look at contact_sheet.png, then re-run with --merge / --drop until every row is one person
    python tools/build_video_crops.py ../shared/data/vtest.avi --tracks runs/pets_tracks/tracks.txt \\
        --out data/pets_s2l1 [--merge 12=3 40=3] [--drop 7]
    # 3. score any model on it
    python tools/extract_features.py --model runs/m/best.pt --query data/pets_s2l1/query \\
        --gallery data/pets_s2l1/bounding_box_test --out runs/pets/feats.npz
    python tools/test_reid.py --features runs/pets/feats.npz --output runs/pets/report

Writes into --out (whole, or not at all): ``query/`` and ``bounding_box_test/`` with Market-1501 style names
(``<pid>_c<segment>s1_<frame>_00.jpg``), ``contact_sheet.png`` (one row per identity, crops spread over time,
labelled with their segments), and ``manifest.json`` (source, settings, counts). See
``reid/data/tracklet_crops.py`` for what is kept and why. The crops stay on your disk: do not commit them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from reid.data.tracklet_crops import TrackCrop, cut_crops, query_gallery_split, select_track_crops
from reid.utils.io import atomic_write_json, file_sha256, staged_folder
from reid.video.mot_io import MotFormatError, read_mot_file
from reid.video.reader import VideoReader, VideoSourceError
from reid.video.visualize import contact_sheet, write_png

OUTPUT_NAMES = frozenset({"query", "bounding_box_test", "contact_sheet.png", "manifest.json"})


def parse_pairs(values: list[str]) -> dict[int, int]:
    pairs = {}
    for value in values:
        source, sep, target = value.partition("=")
        if not sep or not source.strip().lstrip("-").isdigit() or not target.strip().lstrip("-").isdigit():
            raise ValueError(
                f"--merge expects ID=ID (a track id and the id it is one person with), got {value!r}"
            )
        pairs[int(source)] = int(target)
    return pairs


def sheet_rows(crops: list[TrackCrop], images: dict[TrackCrop, np.ndarray], per_row: int):
    by_pid: dict[int, list[TrackCrop]] = defaultdict(list)
    for crop in crops:
        if crop in images:
            by_pid[crop.pid].append(crop)
    rows = []
    for pid, items in sorted(by_pid.items()):
        items.sort(key=lambda c: c.frame)
        picks = [
            items[i] for i in np.linspace(0, len(items) - 1, min(per_row, len(items))).round().astype(int)
        ]
        segments = ",".join(str(s + 1) for s in sorted({c.segment for c in items}))
        label = f"pid {pid}\nsegments {segments}\n{len(items)} crops"
        rows.append((label, [images[c] for c in picks]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("video", help="the video file the tracks belong to")
    parser.add_argument("--tracks", required=True, help="MOTChallenge file: ground truth or tracks.txt")
    parser.add_argument(
        "--out", required=True, help="folder to write (replaced whole if it holds only our files)"
    )
    parser.add_argument(
        "--segments", type=int, default=4, help="time segments = pseudo-cameras (default 4)"
    )
    parser.add_argument(
        "--gap", type=int, default=10, help="frames dropped on each side of a segment boundary"
    )
    parser.add_argument("--every", type=int, default=4, help="keep every K-th frame of a track (default 4)")
    parser.add_argument("--min-height", type=float, default=64.0, help="smallest box height kept, pixels")
    parser.add_argument(
        "--max-covered",
        type=float,
        default=0.3,
        help="drop a box when another box covers more than this fraction of it",
    )
    parser.add_argument(
        "--queries-per-segment",
        type=int,
        default=3,
        help="queries per identity and segment, spread in time (default 3)",
    )
    parser.add_argument(
        "--merge", nargs="*", default=[], metavar="ID=ID", help="track ids that are one person"
    )
    parser.add_argument(
        "--drop", nargs="*", type=int, default=[], metavar="ID", help="track ids to leave out"
    )
    args = parser.parse_args(argv)
    try:
        merge = parse_pairs(args.merge)
        table = read_mot_file(args.tracks)
        with VideoReader(args.video) as probe:
            num_frames = int(probe.info.num_frames)
        if num_frames <= 0:
            raise ValueError(f"{args.video}: the video reports no frame count; cannot cut it into segments")
        crops = select_track_crops(
            table,
            num_frames=num_frames,
            segments=args.segments,
            gap=args.gap,
            every=args.every,
            min_height=args.min_height,
            max_covered=args.max_covered,
            merge=merge,
            drop=set(args.drop),
        )
        if not crops:
            raise ValueError(
                f"{args.tracks}: no box passes the filters (ids >= 0, height >= {args.min_height}, "
                f"covered <= {args.max_covered}); check the file belongs to {args.video}"
            )
        images = cut_crops(args.video, crops)
        crops = [c for c in crops if c in images]
        query, gallery = query_gallery_split(crops, queries_per_segment=args.queries_per_segment)
        if not query:
            raise ValueError(
                "no identity is seen in two segments: nothing to query (use fewer --segments?)"
            )
        with staged_folder(args.out, OUTPUT_NAMES) as staging:
            for folder, items in (("query", query), ("bounding_box_test", gallery)):
                (staging / folder).mkdir()
                for crop in items:
                    ok, encoded = cv2.imencode(".jpg", images[crop], [cv2.IMWRITE_JPEG_QUALITY, 95])
                    if not ok:
                        raise RuntimeError(f"OpenCV could not encode the crop {crop.market_name()}")
                    (staging / folder / crop.market_name()).write_bytes(encoded.tobytes())
            write_png(
                staging / "contact_sheet.png", contact_sheet(sheet_rows(crops, images, 12), max_crops=12)
            )
            manifest = {
                "video": str(args.video),
                "video_sha256": file_sha256(Path(args.video)),
                "tracks": str(args.tracks),
                "tracks_sha256": file_sha256(Path(args.tracks)),
                "num_frames": num_frames,
                "settings": {
                    k: getattr(args, k)
                    for k in (
                        "segments",
                        "gap",
                        "every",
                        "min_height",
                        "max_covered",
                        "queries_per_segment",
                    )
                },
                "merge": {str(k): v for k, v in sorted(merge.items())},
                "drop": sorted(args.drop),
                "identities": len({c.pid for c in crops}),
                "query_identities": len({c.pid for c in query}),
                "query": len(query),
                "gallery": len(gallery),
            }
            atomic_write_json(staging / "manifest.json", manifest)
    except (FileNotFoundError, MotFormatError, VideoSourceError, ValueError) as err:
        print(f"build_video_crops: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("identities", "query_identities", "query", "gallery")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
