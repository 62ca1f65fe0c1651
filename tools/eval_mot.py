#!/usr/bin/env python
"""Score MOTChallenge tracking results against a ground-truth file: IDF1/IDP/IDR and MOTA.

    python tools/eval_mot.py --gt gt.txt runs/demo/tracks.txt runs/demo/identities.txt
    python tools/eval_mot.py --gt gt.txt --combine runs/cam1/identities.txt runs/cam2/identities.txt

``--combine`` scores several runs into one gallery as one result: their identities.txt share the gallery's
identity numbers, and each run keeps the video's frame numbers (``demo_video.py --start-frame``), so the runs
over parts of one video line up with its ground truth. It also reports, per person, how many identities they
got and how many identities mix people (pairs matched in at least --min-frames frames).

Ground-truth rows whose 7th column ("consider" flag) is 0 are ignored, as in the MOTChallenge 2D benchmarks.
Identity measures: Ristani et al. 2016 (global bipartite matching of trajectories, IoU >= --iou counts);
CLEAR-MOT: Bernardin & Stiefelhagen 2008.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from reid.video.mot_io import MotFormatError, MotTable, read_mot_file
from reid.video.mot_metrics import evaluate_tracking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="MOTChallenge result files to score")
    parser.add_argument("--gt", required=True, help="ground-truth file (MOTChallenge gt.txt)")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU at which a box counts as a match")
    parser.add_argument("--json", action="store_true", help="print one JSON object per result file")
    parser.add_argument("--combine", action="store_true",
                        help="score the result files together, as runs into one gallery")
    parser.add_argument("--min-frames", type=int, default=3,
                        help="with --combine: frames a person-identity pair needs to count (default 3)")
    args = parser.parse_args(argv)
    try:
        gt = read_mot_file(args.gt)
        gt = gt.select(gt.scores > 0)
        if args.combine:
            return _combined(gt, [read_mot_file(path) for path in args.results], args)
        for path in args.results:
            scores = evaluate_tracking(gt, read_mot_file(path), args.iou)
            if args.json:
                print(json.dumps({"file": path, **scores}))
            else:
                print(
                    f"{path}: IDF1 {scores['idf1']:.3f} IDP {scores['idp']:.3f} IDR {scores['idr']:.3f} "
                    f"MOTA {scores['mota']:.3f} recall {scores['recall']:.3f} precision "
                    f"{scores['precision']:.3f} switches {scores['num_switches']} "
                    f"ids {scores['num_pred_ids']} (gt {scores['num_gt_ids']})"
                )
    except (FileNotFoundError, MotFormatError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _combined(gt: MotTable, runs: list[MotTable], args: argparse.Namespace) -> int:
    for k, run in enumerate(runs):
        for earlier, before in zip(runs[:k], args.results[:k], strict=True):
            shared = np.intersect1d(run.frames, earlier.frames)
            if shared.size:
                raise ValueError(f"{args.results[k]} and {before} both have frame {int(shared[0]) + 1}: "
                                 "combined runs must cover different frames (demo_video.py --start-frame)")
    pred = MotTable(*(np.concatenate([getattr(r, name) for r in runs]) for name in
                      ("frames", "ids", "boxes", "scores")))
    scores = evaluate_tracking(gt, pred, args.iou, purity_min_frames=args.min_frames)
    if args.json:
        scores.pop("people_per_identity")
        print(json.dumps({"files": args.results, **scores}))
        return 0
    print(f"{len(runs)} runs combined: IDF1 {scores['idf1']:.3f} MOTA {scores['mota']:.3f} "
          f"ids {scores['num_pred_ids']} (gt {scores['num_gt_ids']})")
    print(f"people with one identity {scores['people_with_one_identity']}, with several "
          f"{scores['people_with_several']}, never found {scores['people_never_found']}; identities mixing "
          f"people {scores['identities_mixing_people']}")
    for person, identities in scores["identities_per_person"].items():
        print(f"  person {person}: identities {identities}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
