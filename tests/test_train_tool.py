"""tools/train_reid.py end to end on tiny synthetic data: the run folder contract, config composition,
``--resume`` and ``--eval-only``, and clear errors for bad input."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from reid.config import load_config
from reid.data import build_dataset

REPO = Path(__file__).resolve().parent.parent


def _load_tool():
    spec = importlib.util.spec_from_file_location("train_reid_tool", REPO / "tools" / "train_reid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_reid = _load_tool()


def _tiny(data_root: Path) -> list[str]:
    return [
        f"data.root={data_root}",
        "data.synthetic.num_train_ids=6",
        "data.synthetic.num_test_ids=4",
        "data.synthetic.num_cameras=2",
        "data.synthetic.images_per_id_per_camera=2",
        "data.height=32",
        "data.width=16",
        "data.ids_per_batch=3",
        "data.num_instances=2",
        "model.gdfl.proj_dim=32",
        "model.gdfl.fuse_dim=32",
        "model.adversary.hidden=[16]",
        "solver.epochs=2",
        "solver.warmup_epochs=1",
        "solver.max_iters_per_epoch=1",
        "test.eval_period=0",
        "test.batch_size=64",
    ]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tool")
    run_dir = tmp / "run"
    argv = [
        "--config", str(REPO / "configs" / "synthetic.yml"),
        "--config", str(REPO / "configs" / "ablation" / "D.yml"),
        "--output", str(run_dir), *_tiny(tmp / "data"),
    ]  # fmt: skip
    assert train_reid.main(argv) == 0
    return tmp, run_dir


def test_run_folder_holds_the_contracted_files(finished_run):
    _, run_dir = finished_run
    for name in ("config.yaml", "train.log", "metrics.jsonl", "last.pt", "best.pt", "results.json"):
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP", "seen_ids_mAP", "seen_ids_rank1", "elapsed_s"):
        assert 0.0 <= results[key] <= (1.0 if key != "elapsed_s" else 1e6), key
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    # composed left to right: synthetic.yml, then row D, then the overrides
    assert saved["model"]["gdfl"]["enabled"] and saved["model"]["adversary"]["enabled"]
    assert saved["model"]["backbone"] == "resnet18" and saved["data"]["height"] == 32
    assert saved["output_dir"] == str(run_dir)
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert checkpoint["config"] == saved and checkpoint["epoch"] == 2 and checkpoint["num_classes"] == 6
    assert "Dataset" in (run_dir / "train.log").read_text() and "query" in (run_dir / "train.log").read_text()


def test_eval_only_never_overwrites_the_training_run(finished_run):
    tmp, run_dir = finished_run
    before = {name: (run_dir / name).read_bytes() for name in ("results.json", "config.yaml", "train.log")}
    base = ["--config", str(REPO / "configs" / "synthetic.yml"), "--eval-only", str(run_dir / "best.pt"),
            *_tiny(tmp / "data")]  # fmt: skip
    assert train_reid.main([*base, "--output", str(run_dir)]) == 2  # refused, naming the run folder
    assert train_reid.main(base) == 0  # default: its own folder beside the checkpoint
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    (eval_dir,) = run_dir.glob("eval-*")
    assert json.loads((eval_dir / "results.json").read_text())["mAP"] >= 0
    assert yaml.safe_load((eval_dir / "config.yaml").read_text())["output_dir"] == str(eval_dir)


def test_eval_only_reproduces_the_final_evaluation(finished_run):
    tmp, run_dir = finished_run
    eval_dir = tmp / "eval"
    argv = ["--config", str(REPO / "configs" / "synthetic.yml"), "--output", str(eval_dir), "--eval-only",
            str(run_dir / "last.pt"), *_tiny(tmp / "data")]  # fmt: skip
    assert train_reid.main(argv) == 0
    trained = json.loads((run_dir / "results.json").read_text())
    evaluated = json.loads((eval_dir / "results.json").read_text())
    for key in ("mAP", "rank1", "mINP", "seen_ids_mAP"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    assert "rerank_mAP" not in evaluated
    reranked_dir = tmp / "eval_rerank"
    argv = [
        *argv[:3],
        str(reranked_dir),
        *argv[4:],
        "test.rerank.enabled=true",
        "test.rerank.k1=4",
        "test.rerank.k2=2",
    ]
    assert train_reid.main(argv) == 0
    reranked = json.loads((reranked_dir / "results.json").read_text())
    assert reranked["mAP"] == evaluated["mAP"] and 0.0 <= reranked["rerank_mAP"] <= 1.0
    assert 0.0 <= reranked["rerank_rank1"] <= 1.0


def test_corrupt_training_image_is_named_or_skipped_and_counted(tmp_path, caplog):
    argv = ["--config", str(REPO / "configs" / "synthetic.yml"), "--output", str(tmp_path / "run"),
            *_tiny(tmp_path / "data"), "solver.epochs=1"]  # fmt: skip
    build_dataset("synthetic", tmp_path / "data", **load_config(None, argv[4:])["data"]["synthetic"])
    bad = sorted((tmp_path / "data" / "bounding_box_train").glob("*.jpg"))[0]
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with caplog.at_level(logging.ERROR):  # a full epoch visits every training image, the corrupt one too
        assert train_reid.main([*argv, "solver.max_iters_per_epoch=null"]) == 2
    assert bad.name in caplog.text and "data.skip_corrupt=true" in caplog.text  # and how to go on
    assert train_reid.main([*argv, "data.skip_corrupt=true"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["skipped_train_images"] == 1


def test_resume_continues_to_more_epochs_only_when_forced(finished_run, caplog):
    tmp, run_dir = finished_run
    leftover = run_dir / ".last.pt.k2j4x.tmp"  # what a save killed mid-write leaves
    leftover.write_bytes(b"\0" * 1000)
    configs = ["--config", f"{REPO}/configs/synthetic.yml", "--config", f"{REPO}/configs/ablation/D.yml"]
    base = [*configs, "--output", str(run_dir), *_tiny(tmp / "data"), "solver.epochs=3"]
    with caplog.at_level(logging.ERROR):
        assert train_reid.main([*base, "--resume"]) == 2
    assert "solver.epochs: 2 -> 3" in caplog.text
    assert train_reid.main([*base, "--resume", "--force-resume"]) == 0
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 3
    assert not leftover.exists() and (run_dir / "config.yaml").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model.gdfl.enabeld=true"], "model.gdfl.enabled"),  # typo -> suggestion
        (["--resume", "/nonexistent/last.pt"], "/nonexistent/last.pt"),
        (["data.ids_per_batch=50"], "ids_per_batch"),  # fewer identities than P
    ],
)
def test_bad_input_fails_with_a_clear_message(tmp_path, caplog, extra, message):
    argv = ["--config", str(REPO / "configs" / "synthetic.yml"), "--output", str(tmp_path / "run"),
            *_tiny(tmp_path / "data"), *extra]  # fmt: skip
    with caplog.at_level(logging.ERROR):
        assert train_reid.main(argv) == 2
    assert message in caplog.text


@pytest.mark.parametrize("base_lr", ["1e6", "1e30"])
def test_diverged_run_stops_with_one_line_and_no_checkpoint(tmp_path, caplog, base_lr):
    # 1e6 explodes the loss while it stays finite; 1e30 makes it non-finite. Both used to end differently
    # (rc 0 with results and best.pt written, or an uncaught traceback), neither in train.log.
    run = tmp_path / "run"
    argv = ["--config", str(REPO / "configs" / "synthetic.yml"), "--output", str(run),
            *_tiny(tmp_path / "data"), "solver.epochs=3", "solver.max_iters_per_epoch=4",
            "solver.warmup_epochs=0", "solver.optimizer=sgd", f"solver.base_lr={base_lr}",
            "test.eval_period=1"]  # fmt: skip
    with caplog.at_level(logging.ERROR):
        assert train_reid.main(argv) == 1
    assert "training diverged at epoch" in caplog.text and "lower solver.base_lr" in caplog.text
    assert "training diverged" in (run / "train.log").read_text()
    assert not (run / "best.pt").exists() and not (run / "results.json").exists()
