"""tools/ablate.py: rows x seeds, one table with mean/std checked against a hand computation, skipping of
finished runs, resumption of an unfinished one, and a clear error for an unknown row."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_tool():
    spec = importlib.util.spec_from_file_location("ablate_tool", REPO / "tools" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ablate = _load_tool()


def _argv(tmp: Path, rows: list[str]) -> list[str]:
    return [
        "--base", str(REPO / "configs" / "synthetic.yml"), "--rows", *rows, "--seeds", "0", "1",
        "--output", str(tmp / "abl"),
        f"data.root={tmp / 'data'}", "data.synthetic.num_train_ids=6", "data.synthetic.num_test_ids=4",
        "data.synthetic.num_cameras=2", "data.synthetic.images_per_id_per_camera=2", "data.height=32",
        "data.width=16", "data.ids_per_batch=3", "data.num_instances=2", "model.adversary.hidden=[16]",
        "solver.epochs=1", "solver.max_iters_per_epoch=1", "test.batch_size=64",
    ]  # fmt: skip


def _hand_mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@pytest.fixture(scope="module")
def finished_ablation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablate")
    assert ablate.main(_argv(tmp, ["A", "C"])) == 0
    return tmp


def test_table_holds_mean_and_sample_std_per_row(finished_ablation):
    out = finished_ablation / "abl"
    table = {row["row"]: row for row in json.loads((out / "summary.json").read_text())["table"]}
    assert sorted(table) == ["A", "C"]
    for row in ("A", "C"):
        runs = [json.loads((out / row / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
        for metric in ("rank1", "mAP", "mINP", "seen_ids_rank1", "seen_ids_mAP"):
            mean, std = _hand_mean_std([100 * r[metric] for r in runs])
            assert table[row][f"{metric}_mean"] == pytest.approx(mean)
            assert table[row][f"{metric}_std"] == pytest.approx(std)
        assert table[row]["seeds"] == 2
        gap = table[row]["seen_ids_rank1_mean"] - table[row]["rank1_mean"]
        assert table[row]["gap_rank1"] == pytest.approx(gap)
    with (out / "summary.csv").open() as handle:
        csv_rows = {r["row"]: r for r in csv.DictReader(handle)}
    assert float(csv_rows["C"]["mAP_mean"]) == pytest.approx(table["C"]["mAP_mean"])
    markdown = (out / "summary.md").read_text()
    assert "| A | 2 |" in markdown and "| C | 2 |" in markdown and "±" in markdown
    c_config = (out / "C" / "seed1" / "config.yaml").read_text()
    assert "seed: 1" in c_config and "lambda_max: 0.1" in c_config  # row C composed over the base


def test_rerun_skips_finished_runs_and_finishes_interrupted_ones(finished_ablation):
    out = finished_ablation / "abl"
    finished = out / "A" / "seed0" / "results.json"
    stamp = finished.stat().st_mtime_ns
    interrupted = out / "C" / "seed1" / "results.json"
    expected = json.loads(interrupted.read_text())
    interrupted.unlink()  # last.pt stays: the run is resumed (after its last epoch: just evaluated)
    assert ablate.main(_argv(finished_ablation, ["A", "C"])) == 0
    assert finished.stat().st_mtime_ns == stamp
    assert json.loads(interrupted.read_text())["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)


def test_unknown_row_is_a_clear_error(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert ablate.main(_argv(tmp_path, ["A", "Z9"])) == 2
    assert "Z9" in caplog.text and "B0" in caplog.text  # lists the known rows
