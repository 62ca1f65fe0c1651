"""tools/test_reid.py end to end: feature-file mode, checkpoint mode, and its error messages."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.data.synthetic import generate_synthetic_dataset
from reid.evaluation import compute_distance_matrix, evaluate_rank
from reid.evaluation.features_file import FeatureFileError, FeatureSet, load_features, save_features
from reid.models import build_model
from reid.utils.io import atomic_torch_save

TOOL = Path(__file__).resolve().parents[1] / "tools" / "test_reid.py"
REPORT_FILES = ["cmc.png", "ranked_list.png", "results.json", "results.md"]


def load_tool():
    spec = importlib.util.spec_from_file_location("test_reid_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_feature_file(path, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((15, 8))
    g_pids = np.repeat(np.arange(15), 4)
    g_camids = np.arange(60) % 4
    q_pids = np.arange(15)
    features = FeatureSet.from_arrays(
        centres[q_pids] + 0.8 * rng.standard_normal((15, 8)),
        q_pids,
        np.zeros(15, dtype=int),
        centres[g_pids] + 0.8 * rng.standard_normal((60, 8)),
        g_pids,
        g_camids,
    )
    save_features(path, features)
    return features


def test_feature_mode_with_rerank(tmp_path):
    features = write_feature_file(tmp_path / "feats.npz")
    out = tmp_path / "report"
    argv = ["--features", str(tmp_path / "feats.npz"), "--output", str(out), "--rerank", "--k1", "8"]
    assert load_tool().main([*argv, "--max-rank", "20", "--worst-first", "--num-queries", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == REPORT_FILES
    results = json.loads((out / "results.json").read_text())
    labels = (features.query_pids, features.gallery_pids, features.query_camids, features.gallery_camids)
    expected = evaluate_rank(
        compute_distance_matrix(features.query_features, features.gallery_features), *labels
    )
    assert results["mAP"] == pytest.approx(expected["mAP"])
    assert results["rank1"] == pytest.approx(expected["cmc"][0])
    assert results["num_valid_queries"] == 15
    assert {"rerank_mAP", "rerank_rank1", "rerank_rank5", "rerank_rank10", "rerank_mINP"} <= results.keys()
    assert results["settings"]["rerank"]["k1"] == 8 and results["settings"]["features"].endswith("feats.npz")
    assert "| + re-ranking (k1=8, k2=6" in (out / "results.md").read_text()


def test_a_report_replaced_in_place_keeps_the_feature_file_it_was_read_from(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    written = write_feature_file(out / "features.npz")
    for _ in range(2):
        argv = ["--features", str(out / "features.npz"), "--output", str(out), "--num-queries", "2"]
        assert load_tool().main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT_FILES, "features.npz"])
    kept = load_features(out / "features.npz")
    np.testing.assert_array_equal(kept.gallery_features, written.gallery_features)
    np.testing.assert_array_equal(kept.query_pids, written.query_pids)


def test_command_line_entry_point(tmp_path):
    write_feature_file(tmp_path / "feats.npz", seed=1)
    command = [
        sys.executable,
        str(TOOL),
        "--features",
        str(tmp_path / "feats.npz"),
        "--output",
        str(tmp_path / "r"),
        "--num-queries",
        "2",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "plain: mAP" in completed.stderr
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == REPORT_FILES


def test_feature_file_without_camids_is_named(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", query_features=np.zeros((2, 3)))
    argv = ["--features", str(tmp_path / "bad.npz"), "--output", str(tmp_path / "r")]
    assert load_tool().main(argv) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert "bad.npz: missing field" in err and "query_camids" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(FeatureFileError):  # --debug shows the traceback
        load_tool().main([*argv, "--debug"])


def test_checkpoint_mode_extracts_evaluates_and_saves_features(tmp_path, capsys):
    root = generate_synthetic_dataset(
        tmp_path / "data",
        num_train_ids=2,
        num_test_ids=4,
        num_cameras=2,
        images_per_id_per_camera=2,
        image_size=(64, 32),
        seed=0,
        num_distractors=2,
    )
    config = {
        "data": {
            "name": "market1501",
            "root": str(root),
            "height": 64,
            "width": 32,
            "pixel_mean": [0.5, 0.5, 0.5],
            "pixel_std": [0.25, 0.25, 0.25],
        },
        "model": {"backbone": "resnet18", "pretrained": "none"},
    }
    torch.manual_seed(0)
    model = build_model(config["model"], 2)
    checkpoint = tmp_path / "model.pt"
    atomic_torch_save(
        {"model": model.state_dict(), "config": config, "num_classes": 2, "epoch": 1}, checkpoint
    )
    out = tmp_path / "report"
    argv = ["--checkpoint", str(checkpoint), "--output", str(out), "--device", "cpu", "--num-queries", "2"]
    assert load_tool().main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT_FILES, "features.npz"])
    saved = load_features(out / "features.npz")
    assert all(Path(p).is_file() for p in (*saved.query_paths, *saved.gallery_paths))
    labels = (saved.query_pids, saved.gallery_pids, saved.query_camids, saved.gallery_camids)
    expected = evaluate_rank(compute_distance_matrix(saved.query_features, saved.gallery_features), *labels)
    results = json.loads((out / "results.json").read_text())
    assert results["mAP"] == pytest.approx(expected["mAP"])
    assert results["settings"]["checkpoint"] == str(checkpoint)

    # One corrupt query image: named, with the key that skips it; with data.skip_corrupt it is left out.
    bad = Path(saved.query_paths[1])
    bad.write_bytes(b"not a jpeg")
    argv = ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "r2"), "--device", "cpu",
            "--num-queries", "2"]  # fmt: skip
    assert load_tool().main(argv) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "data.skip_corrupt=true" in err and len(err.strip().splitlines()) == 1
    skipping = tmp_path / "skip.yml"
    skipping.write_text(json.dumps({"data": {**config["data"], "skip_corrupt": True}}))  # JSON is YAML
    assert load_tool().main([*argv, "--config", str(skipping)]) == 0
    kept = load_features(tmp_path / "r2" / "features.npz")
    assert list(kept.query_paths) == [p for p in saved.query_paths if p != str(bad)]


def test_checkpoint_mode_uses_the_configured_feature_and_custom_reader_options(tmp_path):
    from reid.data.datasets import build_dataset
    from reid.extraction import extract_features

    root = generate_synthetic_dataset(tmp_path / "data", num_train_ids=2, num_test_ids=4, num_cameras=2,
                                      images_per_id_per_camera=2, image_size=(64, 32), seed=0)  # fmt: skip
    custom = tmp_path / "custom"  # query/gallery folders per identity, no camera ids in the names
    for split, source in (("query", "query"), ("gallery", "bounding_box_test")):
        for image in sorted((root / source).glob("*.jpg")):
            target = custom / split / image.name.split("_")[0] / f"img{image.stem.split('_', 1)[1]}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image.read_bytes())
    config = {
        "data": {"name": "custom", "root": str(custom), "height": 64, "width": 32,
                 "pixel_mean": [0.5] * 3, "pixel_std": [0.25] * 3,
                 "custom": {"camera_regex": "c(\\d+)", "camera_mode": "per_split"}},
        "model": {"backbone": "resnet18", "pretrained": "none"},
        "test": {"feat": "before_bn"},
    }  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config["model"], 2)
    with torch.no_grad():  # a BNNeck far from identity, so before_bn and after_bn features differ
        model.bnneck.running_mean.uniform_(-1, 1)
    checkpoint = tmp_path / "model.pt"
    payload = {"model": model.state_dict(), "config": config, "num_classes": 2, "epoch": 1}
    atomic_torch_save(payload, checkpoint)
    out = tmp_path / "report"
    assert load_tool().main(["--checkpoint", str(checkpoint), "--output", str(out), "--device", "cpu"]) == 0
    saved = load_features(out / "features.npz")
    dataset = build_dataset("custom", custom, camera_mode="per_split")
    want = extract_features(model.eval(), dataset.query, input_size=(64, 32), mean=[0.5] * 3, std=[0.25] * 3,
                            feat="before_bn", device="cpu")  # fmt: skip
    np.testing.assert_allclose(saved.query_features, want, rtol=1e-4, atol=1e-5)


def test_checkpoint_mode_errors(tmp_path, capsys):
    tool = load_tool()
    assert tool.main(["--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "r")]) == 2
    assert "--checkpoint: file not found" in capsys.readouterr().err
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert tool.main(["--checkpoint", str(tmp_path / "text.pt"), "--output", str(tmp_path / "r")]) == 2
    assert "text.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--output", str(tmp_path / "r")])  # neither --features nor --checkpoint
