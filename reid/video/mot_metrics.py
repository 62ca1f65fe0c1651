"""Multi-object tracking scores: identity measures (IDF1, IDP, IDR) and CLEAR-MOT (MOTA, ID switches).

Identity measures follow Ristani et al., "Performance Measures and a Data Set for Multi-Target, Multi-Camera
Tracking" (ECCV-W 2016): every ground-truth trajectory is matched to at most one predicted trajectory by a
global min-cost bipartite matching, where a pair's cost counts the frames in which they do *not* overlap
(IoU >= threshold); IDTP is the number of frames the matched pairs do overlap. IDF1 = 2 IDTP / (GT + PRED).
CLEAR-MOT follows Bernardin & Stiefelhagen (2008): per frame, keep last frame's correspondences that still
overlap, assign the rest by Hungarian matching, and count misses, false positives and identity switches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment

from reid.video.boxes import iou_matrix
from reid.video.mot_io import MotTable


def _frame_pairs(gt: MotTable, pred: MotTable) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield, per frame, gt row indices, pred row indices and their IoU matrix."""
    gt_frames, pred_frames = gt.by_frame(), pred.by_frame()
    empty = np.zeros(0, dtype=np.int64)
    for frame in sorted(set(gt_frames) | set(pred_frames)):
        g = gt_frames.get(frame, empty)
        p = pred_frames.get(frame, empty)
        yield frame, g, p, iou_matrix(gt.boxes[g], pred.boxes[p])


def identity_scores(gt: MotTable, pred: MotTable, iou_threshold: float = 0.5) -> dict[str, float]:
    """IDF1, IDP, IDR and the raw IDTP/IDFP/IDFN counts."""
    gt_ids, gt_index = np.unique(gt.ids, return_inverse=True)
    pred_ids, pred_index = np.unique(pred.ids, return_inverse=True)
    overlap = np.zeros((len(gt_ids), len(pred_ids)), dtype=np.int64)
    for _, g, p, iou in _frame_pairs(gt, pred):
        rows, cols = np.nonzero(iou >= iou_threshold)
        np.add.at(overlap, (gt_index[g[rows]], pred_index[p[cols]]), 1)
    idtp = 0
    if overlap.size:
        rows, cols = linear_sum_assignment(-overlap)
        idtp = int(overlap[rows, cols].sum())
    num_gt, num_pred = len(gt), len(pred)
    idfn, idfp = num_gt - idtp, num_pred - idtp
    return {
        "idf1": 2 * idtp / max(num_gt + num_pred, 1),
        "idp": idtp / max(num_pred, 1),
        "idr": idtp / max(num_gt, 1),
        "idtp": idtp,
        "idfp": idfp,
        "idfn": idfn,
    }


def clear_mot_scores(gt: MotTable, pred: MotTable, iou_threshold: float = 0.5) -> dict[str, float]:
    """MOTA, MOTP (mean IoU of matches), recall, precision and the miss / false-positive / switch counts."""
    scores, _ = _clear_mot(gt, pred, iou_threshold)
    return scores


def identity_purity(gt: MotTable, pred: MotTable, iou_threshold: float = 0.5, *,
                    min_frames: int = 3) -> dict[str, object]:
    """How many predicted identities each person got, and how many predicted identities mix people.

    Counted on the frame-by-frame CLEAR-MOT correspondences; a pair counts when matched in at least
    ``min_frames`` frames, so that a one-frame mix-up at a crossing is not an identity. Over several runs into
    one gallery (one global identity space) this is the cross-camera view: a person seen by two cameras
    should still get one identity.
    """
    _, pair_frames = _clear_mot(gt, pred, iou_threshold)
    return _purity(gt, pair_frames, min_frames)


def _purity(gt: MotTable, pair_frames: dict[tuple[int, int], int], min_frames: int) -> dict[str, object]:
    per_person: dict[int, set[int]] = {int(g): set() for g in np.unique(gt.ids)}
    per_identity: dict[int, set[int]] = {}
    for (gid, pid), frames in pair_frames.items():
        if frames >= min_frames:
            per_person[gid].add(pid)
            per_identity.setdefault(pid, set()).add(gid)
    return {
        "identities_per_person": {gid: sorted(pids) for gid, pids in per_person.items()},
        "people_per_identity": {pid: sorted(gids) for pid, gids in per_identity.items()},
        "people_with_one_identity": sum(len(p) == 1 for p in per_person.values()),
        "people_with_several": sum(len(p) > 1 for p in per_person.values()),
        "people_never_found": sum(len(p) == 0 for p in per_person.values()),
        "identities_mixing_people": sum(len(g) > 1 for g in per_identity.values()),
    }


def _clear_mot(gt: MotTable, pred: MotTable, iou_threshold: float
               ) -> tuple[dict[str, float], dict[tuple[int, int], int]]:
    """CLEAR-MOT scores and the number of frames each (gt id, pred id) pair was matched."""
    pair_frames: dict[tuple[int, int], int] = {}
    last_match: dict[int, int] = {}  # gt id -> pred id it was last matched to
    matches = misses = false_pos = switches = 0
    iou_sum = 0.0
    for _, g, p, iou in _frame_pairs(gt, pred):
        g_ids, p_ids = gt.ids[g], pred.ids[p]
        cost = np.where(iou >= iou_threshold, 1.0 - iou, np.inf)
        pairs: list[tuple[int, int]] = []
        # Keep correspondences from earlier frames that still overlap (no switch for a consistent track).
        for gi, gid in enumerate(g_ids):
            previous = last_match.get(int(gid))
            if previous is None:
                continue
            hits = np.flatnonzero((p_ids == previous) & np.isfinite(cost[gi]))
            if hits.size:
                pj = int(hits[0])
                pairs.append((gi, pj))
                cost[gi, :] = np.inf
                cost[:, pj] = np.inf
        finite = np.isfinite(cost)
        if finite.any():
            big = np.where(finite, cost, 1e6)
            rows, cols = linear_sum_assignment(big)
            pairs += [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if finite[r, c]]
        for gi, pj in pairs:
            gid, pid = int(g_ids[gi]), int(p_ids[pj])
            if gid in last_match and last_match[gid] != pid:
                switches += 1
            last_match[gid] = pid
            pair_frames[gid, pid] = pair_frames.get((gid, pid), 0) + 1
            iou_sum += float(iou[gi, pj])
        matches += len(pairs)
        misses += len(g) - len(pairs)
        false_pos += len(p) - len(pairs)
    num_gt = len(gt)
    scores = {
        "mota": 1.0 - (misses + false_pos + switches) / max(num_gt, 1),
        "motp": iou_sum / max(matches, 1),
        "recall": matches / max(num_gt, 1),
        "precision": matches / max(matches + false_pos, 1),
        "num_matches": matches,
        "num_misses": misses,
        "num_false_positives": false_pos,
        "num_switches": switches,
    }
    return scores, pair_frames


def evaluate_tracking(gt: MotTable, pred: MotTable, iou_threshold: float = 0.5, *,
                      purity_min_frames: int | None = None) -> dict[str, object]:
    """Identity and CLEAR-MOT scores plus the number of distinct gt and predicted ids; with
    ``purity_min_frames`` also :func:`identity_purity`'s figures (from the same CLEAR-MOT pass)."""
    scores: dict[str, object] = dict(identity_scores(gt, pred, iou_threshold))
    clear, pair_frames = _clear_mot(gt, pred, iou_threshold)
    scores.update(clear)
    if purity_min_frames is not None:
        scores.update(_purity(gt, pair_frames, purity_min_frames))
    scores["num_gt_ids"] = int(np.unique(gt.ids).size)
    scores["num_pred_ids"] = int(np.unique(pred.ids).size)
    return scores
