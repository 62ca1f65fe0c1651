#!/usr/bin/env python
"""Score MOTChallenge tracking results against a ground-truth file: IDF1/IDP/IDR and MOTA.

    python tools/eval_mot.py --gt gt.txt runs/demo/tracks.txt runs/demo/identities.txt

Ground-truth rows whose 7th column ("consider" flag) is 0 are ignored, as in the MOTChallenge 2D benchmarks.
Identity measures: Ristani et al. 2016 (global bipartite matching of trajectories, IoU >= --iou counts);
CLEAR-MOT: Bernardin & Stiefelhagen 2008.
"""

from __future__ import annotations

import argparse
import json
import sys

from reid.video.mot_io import MotFormatError, read_mot_file
from reid.video.mot_metrics import evaluate_tracking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="MOTChallenge result files to score")
    parser.add_argument("--gt", required=True, help="ground-truth file (MOTChallenge gt.txt)")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU at which a box counts as a match")
    parser.add_argument("--json", action="store_true", help="print one JSON object per result file")
    args = parser.parse_args(argv)
    try:
        gt = read_mot_file(args.gt)
        gt = gt.select(gt.scores > 0)
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
    except (FileNotFoundError, MotFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
