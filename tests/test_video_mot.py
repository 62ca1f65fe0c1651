"""MOTChallenge parsing and the identity / CLEAR-MOT scores, checked on hand-made cases."""

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from reid.video.boxes import iou_matrix, nms
from reid.video.mot_io import MotFormatError, MotTable, format_mot_rows, read_mot_file, write_mot_results
from reid.video.mot_metrics import clear_mot_scores, identity_purity, identity_scores


def load_eval_mot():
    """tools/eval_mot.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "eval_mot", Path(__file__).resolve().parents[1] / "tools" / "eval_mot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(rows):
    a = np.asarray(rows, dtype=np.float64)
    return MotTable(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2:6], np.ones(len(a)))


def reference_idf1(gt, pred, thr=0.5):
    """Brute force over every one-to-one matching of gt ids to predicted ids (tiny cases only)."""
    g_ids, p_ids = sorted(set(gt.ids.tolist())), sorted(set(pred.ids.tolist()))

    def overlap(g, p):
        count = 0
        for f in set(gt.frames[gt.ids == g].tolist()) & set(pred.frames[pred.ids == p].tolist()):
            a = gt.boxes[(gt.ids == g) & (gt.frames == f)]
            b = pred.boxes[(pred.ids == p) & (pred.frames == f)]
            count += int(iou_matrix(a, b)[0, 0] >= thr)
        return count

    best = 0
    slots = p_ids + [None] * len(g_ids)
    for perm in itertools.permutations(slots, len(g_ids)):
        best = max(best, sum(overlap(g, p) for g, p in zip(g_ids, perm, strict=True) if p is not None))
    return 2 * best / (len(gt) + len(pred))


def test_read_write_roundtrip(tmp_path):
    rows = [(0, 3, 10.0, 20.0, 30.0, 60.0, 0.9), (4, 1, 1.5, 2.5, 3.0, 4.0, 1.0)]
    path = tmp_path / "res.txt"
    write_mot_results(path, rows)
    assert path.read_text().splitlines()[0] == "1,3,10.00,20.00,30.00,60.00,0.9000,-1,-1,-1"
    t = read_mot_file(path)
    assert t.frames.tolist() == [0, 4] and t.ids.tolist() == [3, 1]
    np.testing.assert_allclose(t.boxes[1], [1.5, 2.5, 3.0, 4.0])
    assert format_mot_rows([]) == ""


@pytest.mark.parametrize(
    "line, message",
    [
        ("1,-1,10,20,30", "at least 6"),
        ("1,-1,10,abc,30,40,0.9", "non-numeric"),
        ("0,-1,10,20,30,40,0.9", "1-based"),
        ("1,-1,10,20,-3,40,0.9", "positive"),
        ("1,-1,10,20,nan,40,0.9", "non-finite"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "det.txt"
    path.write_text("1,-1,1,2,3,4,0.5,-1,-1,-1\n\n" + line + "\n")
    with pytest.raises(MotFormatError, match=message) as info:
        read_mot_file(path)
    assert f"{path}:3" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_mot_file(tmp_path / "nope.txt")


def test_idf1_hand_case():
    # gt person 1 for frames 0-3, person 2 for frames 0-3; the tracker swaps them after frame 1.
    gt = table([(f, 1, 0, 0, 10, 20) for f in range(4)] + [(f, 2, 100, 0, 10, 20) for f in range(4)])
    pred = table(
        [(0, 7, 0, 0, 10, 20), (1, 7, 0, 0, 10, 20), (2, 7, 100, 0, 10, 20), (3, 7, 100, 0, 10, 20)]
        + [(0, 8, 100, 0, 10, 20), (1, 8, 100, 0, 10, 20), (2, 8, 0, 0, 10, 20), (3, 8, 0, 0, 10, 20)]
    )
    scores = identity_scores(gt, pred)
    # Best matching: 1<->7 (2 frames), 2<->8 (2 frames): IDTP 4 of 8 gt and 8 predicted boxes.
    assert scores["idtp"] == 4 and scores["idf1"] == pytest.approx(0.5)
    assert scores["idf1"] == pytest.approx(reference_idf1(gt, pred))
    clear = clear_mot_scores(gt, pred)
    assert clear["num_switches"] == 2 and clear["num_misses"] == 0 and clear["num_false_positives"] == 0
    assert clear["mota"] == pytest.approx(1 - 2 / 8)


def test_idf1_matches_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt_rows, pred_rows = [], []
        for f in range(6):
            ids = rng.permutation(4)  # a predicted id appears at most once per frame
            for g in range(3):
                if rng.random() < 0.8:
                    x = 40.0 * g + rng.normal(0, 1)
                    gt_rows.append((f, g, x, 0, 20, 40))
                    if rng.random() < 0.8:
                        pred_rows.append((f, int(ids[g]), x + rng.normal(0, 3), 0, 20, 40))
            if rng.random() < 0.3:
                pred_rows.append((f, 9, 300, 300, 20, 40))
        gt, pred = table(gt_rows), table(pred_rows)
        assert identity_scores(gt, pred)["idf1"] == pytest.approx(reference_idf1(gt, pred))


def test_identity_purity_counts_identities_per_person_and_mixed_identities():
    # Person 1 is identity 7 in frames 0-5 and identity 9 in frames 6-11 (e.g. a second camera); person 2 is
    # identity 8 throughout, except that identity 7 covers them for frames 9-11; person 3 is never found.
    gt = table([(f, 1, 0, 0, 10, 20) for f in range(12)] + [(f, 2, 100, 0, 10, 20) for f in range(12)]
               + [(f, 3, 300, 0, 10, 20) for f in range(3)])
    pred = table([(f, 7, 0, 0, 10, 20) for f in range(6)] + [(f, 9, 0, 0, 10, 20) for f in range(6, 12)]
                 + [(f, 8, 100, 0, 10, 20) for f in range(9)] + [(f, 7, 100, 0, 10, 20) for f in range(9, 12)]
                 + [(4, 8, 0, 0, 10, 20)])  # a one-frame duplicate: below min_frames, ignored
    purity = identity_purity(gt, pred)
    assert purity["identities_per_person"] == {1: [7, 9], 2: [7, 8], 3: []}
    assert purity["people_per_identity"] == {7: [1, 2], 8: [2], 9: [1]}
    assert (purity["people_with_one_identity"], purity["people_with_several"], purity["people_never_found"],
            purity["identities_mixing_people"]) == (0, 2, 1, 1)
    assert identity_purity(gt, pred, min_frames=4)["identities_per_person"][2] == [8]


def test_empty_tables_score_without_crashing():
    empty = table(np.zeros((0, 6)))
    gt = table([(0, 1, 0, 0, 10, 10)])
    assert empty.by_frame() == {}
    assert clear_mot_scores(gt, empty)["num_misses"] == 1
    assert identity_scores(gt, empty)["idf1"] == 0.0


def test_misses_and_false_positives():
    gt = table([(0, 1, 0, 0, 10, 10), (1, 1, 0, 0, 10, 10)])
    pred = table([(0, 5, 0, 0, 10, 10), (1, 5, 50, 50, 10, 10)])
    clear = clear_mot_scores(gt, pred)
    assert (clear["num_matches"], clear["num_misses"], clear["num_false_positives"]) == (1, 1, 1)
    assert identity_scores(gt, pred)["idf1"] == pytest.approx(2 * 1 / 4)


def test_nms_matches_brute_force():
    rng = np.random.default_rng(1)
    boxes = np.c_[rng.uniform(0, 50, (30, 2)), rng.uniform(5, 20, (30, 2))]
    scores = rng.random(30)
    keep = nms(boxes, scores, 0.3)
    # Reference: visit by descending score, keep a box unless it overlaps a kept one by more than 0.3.
    expected = []
    for i in np.argsort(-scores):
        if all(iou_matrix(boxes[i], boxes[j])[0, 0] <= 0.3 for j in expected):
            expected.append(int(i))
    assert keep.tolist() == expected


def test_eval_mot_combines_runs_over_parts_of_one_video(tmp_path, capsys):
    eval_mot = load_eval_mot()
    write_mot_results(tmp_path / "gt.txt", [(f, 1, 0, 0, 10, 20, 1) for f in range(10)])
    write_mot_results(tmp_path / "cam1.txt", [(f, 4, 0, 0, 10, 20, 1) for f in range(5)])
    write_mot_results(tmp_path / "cam2.txt", [(f, 4, 0, 0, 10, 20, 1) for f in range(5, 10)])
    gt, cam1, cam2 = (str(tmp_path / name) for name in ("gt.txt", "cam1.txt", "cam2.txt"))
    args = ["--gt", gt, "--combine", cam1, cam2]
    assert eval_mot.main(args) == 0
    out = capsys.readouterr().out
    assert "IDF1 1.000" in out and "people with one identity 1" in out and "person 1: identities [4]" in out
    # The same gallery identity split into two: the person got two identities.
    write_mot_results(tmp_path / "cam2.txt", [(f, 5, 0, 0, 10, 20, 1) for f in range(5, 10)])
    assert eval_mot.main([*args, "--json"]) == 0
    combined = json.loads(capsys.readouterr().out)
    assert combined["people_with_several"] == 1 and combined["identities_per_person"] == {"1": [4, 5]}
    assert combined["idf1"] == pytest.approx(0.5)
    # Runs that share frames cannot be one identity space over one video.
    assert eval_mot.main(["--gt", str(tmp_path / "gt.txt"), "--combine", str(tmp_path / "cam1.txt"),
                          str(tmp_path / "cam1.txt")]) == 2
    assert "both have frame 1" in capsys.readouterr().err


def test_eval_mot_ignores_ground_truth_rows_marked_not_to_consider(tmp_path, capsys):
    """Gt rows whose 7th column is 0 (outside the scored area) count neither as misses nor as people."""
    eval_mot = load_eval_mot()
    write_mot_results(tmp_path / "gt.txt", [(f, 1, 0, 0, 10, 20, 1) for f in range(10)]
                      + [(f, 2, 50, 0, 10, 20, 0) for f in range(10)])
    write_mot_results(tmp_path / "pred.txt", [(f, 7, 0, 0, 10, 20, 1) for f in range(10)])
    assert eval_mot.main(["--gt", str(tmp_path / "gt.txt"), "--json", str(tmp_path / "pred.txt")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["idf1"] == pytest.approx(1.0) and scores["mota"] == pytest.approx(1.0)
    assert scores["num_gt_ids"] == 1
