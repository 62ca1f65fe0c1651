#!/usr/bin/env python
"""How well the appearance embedder separates people of a video with ground truth: ROC AUC and EER.

    python tools/eval_descriptor.py vtest.avi --gt gt.txt [--embedder handcrafted] [--stride 5] [--min-gap 50]

Crops are cut at the ground-truth boxes of every --stride-th frame (boxes more than --max-occlusion covered
by a box in front are skipped: they show two people). Same-person pairs at least --min-gap frames apart
are positives, all different-person pairs negatives (see reid.video.separability). Also prints the
appearance thresholds that this video's ground truth would give (derive_appearance_thresholds), to compare
with the embedder's own: this is scoring, so never copy them into the product (the embedder's thresholds
come from held-out identities of its training data: tools/calibrate_threshold.py --write-thresholds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
from tqdm import tqdm

from reid.video.embedder import add_embedder_arguments, build_embedder, embedder_choice
from reid.video.mot_io import MotFormatError, read_mot_file
from reid.video.pipeline import crop_boxes
from reid.video.quality import occlusion_fractions
from reid.video.reader import VideoReader, VideoSourceError
from reid.video.separability import derive_appearance_thresholds, separability
from reid.video.tracking import TrackerConfig

logger = logging.getLogger("eval_descriptor")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("video")
    parser.add_argument("--gt", required=True, help="MOTChallenge ground truth of the video")
    add_embedder_arguments(parser, purpose="to embed the crops with")
    parser.add_argument("--stride", type=int, default=5, help="use every N-th frame")
    parser.add_argument("--min-gap", type=int, default=50, help="frames between a same-person pair")
    parser.add_argument("--max-occlusion", type=float, default=0.3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.stride < 1:
        parser.error("--stride must be >= 1")
    try:
        gt = read_mot_file(args.gt)
        gt = gt.select(gt.scores > 0)
        rows_of_frame = gt.by_frame()
        embedder = build_embedder(embedder_choice(args), device=args.device)
        features, ids, frames = [], [], []
        with VideoReader(args.video) as reader:
            for index, frame in tqdm(reader, desc="frames", unit="frame"):
                rows = rows_of_frame.get(index)
                if index % args.stride or rows is None:
                    continue
                rows = rows[occlusion_fractions(gt.boxes[rows]) <= args.max_occlusion]
                crops, keep = crop_boxes(frame, gt.boxes[rows])
                if crops:
                    features.append(embedder(crops))
                    ids.extend(gt.ids[rows[keep]])
                    frames.extend([index] * len(crops))
        if not features:
            raise ValueError(f"no ground-truth box of {args.gt} falls on a frame of {args.video}")
        features, ids, frames = np.concatenate(features), np.asarray(ids), np.asarray(frames)
        report = separability(features, ids, frames, min_gap=args.min_gap)
        thresholds = derive_appearance_thresholds(features, ids, frames,
                                                  momentum=TrackerConfig().feature_momentum)
    except (FileNotFoundError, MotFormatError, VideoSourceError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    gates = embedder.appearance
    own = None if gates is None else {k: round(v, 3) for k, v in vars(gates).items()}
    print(json.dumps({"embedder": embedder.model_name, "crops": len(ids), **vars(report),
                      "thresholds_from_this_video": {k: round(v, 3) for k, v in vars(thresholds).items()},
                      "thresholds_of_the_embedder": own}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
