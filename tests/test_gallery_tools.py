"""tools/calibrate_threshold.py and tools/search_gallery.py end to end, on files written in tmp_path."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.gallery import GalleryStore, calibrate_threshold
from reid.gallery.calibration import labelled_pair_distances
from reid.video.separability import image_set_thresholds
from reid.video.tracking import TrackerConfig

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_feature_file(path: Path, rng: np.random.Generator, dim: int = 12) -> dict[str, np.ndarray]:
    """A tools/test_reid.py style .npz: 10 people, query on camera 0, gallery on cameras 1-2."""
    people = rng.normal(size=(10, dim))
    qp, gp = np.repeat(np.arange(10), 2), np.repeat(np.arange(10), 4)
    arrays = {
        "query_features": (people[qp] + 0.4 * rng.normal(size=(20, dim))).astype(np.float32),
        "query_pids": qp,
        "query_camids": np.zeros(20, dtype=np.int64),
        "query_paths": np.array([f"q{i}.jpg" for i in range(20)]),
        "gallery_features": (people[gp] + 0.4 * rng.normal(size=(40, dim))).astype(np.float32),
        "gallery_pids": gp,
        "gallery_camids": 1 + np.arange(40) % 2,
        "gallery_paths": np.array([f"g{i}.jpg" for i in range(40)]),
    }
    np.savez(path, **arrays)
    return arrays


def test_calibrate_threshold_tool_reports_and_stores_into_a_gallery(tmp_path, capsys):
    tool = load_tool("calibrate_threshold")
    arrays = write_feature_file(tmp_path / "feats.npz", np.random.default_rng(0))
    GalleryStore.open(tmp_path / "gallery", model_name="net", feature_dim=12).close()
    out = tmp_path / "calib"
    argv = ["--features", str(tmp_path / "feats.npz"), "--target", "fpr=0.05", "--output", str(out)]
    assert tool.main([*argv, "--gallery", str(tmp_path / "gallery"), "--store", "--model-name", "net"]) == 0

    pos, neg = labelled_pair_distances(
        arrays["query_features"], arrays["query_pids"], arrays["query_camids"],
        arrays["gallery_features"], arrays["gallery_pids"], arrays["gallery_camids"], metric="cosine",
    )  # fmt: skip
    expected = calibrate_threshold(pos, neg, target=("fpr", 0.05))
    saved = json.loads((out / "threshold.json").read_text())
    assert saved["threshold"] == pytest.approx(expected.threshold) and saved["fpr"] <= 0.05
    assert saved["num_positive"] == 10 * 2 * 4 and saved["metric"] == "cosine"
    assert (out / "distance_histogram.png").stat().st_size > 1000
    assert GalleryStore.read_meta(tmp_path / "gallery").match_threshold == pytest.approx(expected.threshold)
    assert "threshold" in capsys.readouterr().out

    # Another model's gallery is refused before anything is written (it used to write --output first).
    elsewhere = ["--features", str(tmp_path / "feats.npz"), "--output", str(tmp_path / "never")]
    with pytest.raises(ValueError, match=r"built with net \(dim 12\), not other \(dim 12\); nothing was"):
        tool.main([*elsewhere, "--gallery", str(tmp_path / "gallery"), "--store", "--model-name", "other"])
    assert not (tmp_path / "never").exists()
    with pytest.raises(SystemExit):
        tool.main([*argv, "--target", "median"])
    with pytest.raises(SystemExit):  # --store without saying which model wrote the features
        tool.main([*argv, "--gallery", str(tmp_path / "gallery"), "--store"])


def test_search_results_are_described_and_drawn(tmp_path):
    from reid.gallery import CropEntry
    from reid.gallery.visualize import plot_search_results

    tool = load_tool("search_gallery")
    rng = np.random.default_rng(1)
    people = rng.normal(size=(3, 8))
    with GalleryStore.open(tmp_path / "g", model_name="m", feature_dim=8, match_threshold=0.1) as store:
        video = store.register_video("walk.avi", camera_id=2, fps=25.0, num_frames=None, width=64, height=64)
        for t in range(3):
            image = np.full((40, 20, 3), 80 * t, np.uint8)
            crops = [
                CropEntry(image, 50 * t + k, 2.0 * t + k / 25, (0, 0, 20, 40), 0.9, 0.5, people[t])
                for k in range(2)
            ]
            store.add_track(video, 2, t, crops, people[t])
        hits = store.search(people[1], topk=3)
    text = tool.describe(hits)
    assert text.splitlines()[0].startswith(f"#1   identity {hits[0].identity_id}")
    assert "walk.avi  cam 2  t=00:02.0 frame 50" in text and hits[0].evidence[0]["crop_path"] in text
    assert tool.describe([]) == "the gallery has no entries yet"
    plot_search_results(np.zeros((60, 30, 3), np.uint8), hits, tmp_path / "out" / "search.png")
    image = cv2.imread(str(tmp_path / "out" / "search.png"))
    assert image is not None and image.shape[0] > image.shape[1] / 3  # one row per identity


def test_calibrate_threshold_from_a_dataset_folder_with_the_default_embedder(tmp_path):
    from reid.data import build_dataset, generate_synthetic_dataset
    from reid.video.embedder import build_embedder

    root = generate_synthetic_dataset(tmp_path / "synthetic", num_train_ids=4, num_test_ids=8, num_cameras=2,
                                      images_per_id_per_camera=2, seed=3)  # fmt: skip
    out = tmp_path / "calib"
    argv = ["--dataset-root", str(root), "--max-images", "40", "--output", str(out)]
    assert load_tool("calibrate_threshold").main(argv) == 0

    # The same distances computed here directly: the default embedder on the same seeded subset.
    dataset, embedder, rng = build_dataset("market1501", root), build_embedder(), np.random.default_rng(0)
    sets = []
    for records in (dataset.query, dataset.gallery):
        chosen = sorted(rng.choice(len(records), size=min(len(records), 40), replace=False))
        crops = [cv2.imread(records[i].path) for i in chosen]
        sets += [embedder(crops), np.array([records[i].pid for i in chosen]),
                 np.array([records[i].camid for i in chosen])]  # fmt: skip
    pos, neg = labelled_pair_distances(*sets, metric="cosine")
    saved = json.loads((out / "threshold.json").read_text())
    assert saved["threshold"] == pytest.approx(calibrate_threshold(pos, neg).threshold, rel=1e-5)
    assert saved["num_positive"] == len(pos) > 0
    gates = json.loads((out / "appearance_thresholds.json").read_text())
    expected = image_set_thresholds(np.concatenate(sets[0::3]), np.concatenate(sets[1::3]),
                                    np.concatenate(sets[2::3]), momentum=TrackerConfig().feature_momentum)
    assert gates["gallery"] == pytest.approx(expected.gallery, rel=1e-5)
    assert gates["model_name"] == embedder.model_name


def test_calibrated_thresholds_are_written_into_the_checkpoint_and_used(tmp_path):
    import shutil

    from reid.data import generate_synthetic_dataset
    from reid.shipped import SHIPPED_CHECKPOINT
    from reid.video.embedder import build_embedder

    root = generate_synthetic_dataset(tmp_path / "synthetic", num_train_ids=4, num_test_ids=8, num_cameras=2,
                                      images_per_id_per_camera=2, seed=3)  # fmt: skip
    model = shutil.copy(SHIPPED_CHECKPOINT, tmp_path / "model.pt")
    before = build_embedder(model)
    argv = ["--dataset-root", str(root), "--checkpoint", str(model), "--write-thresholds",
            "--output", str(tmp_path / "calib")]  # fmt: skip
    assert load_tool("calibrate_threshold").main(argv) == 0
    after = build_embedder(model)
    written = json.loads((tmp_path / "calib" / "appearance_thresholds.json").read_text())
    assert after.appearance.gallery == pytest.approx(written["gallery"])
    assert after.appearance != before.appearance
    assert after.model_name == before.model_name  # the weights, hence the gallery's model name, are kept
    with pytest.raises(SystemExit):  # nothing to write into
        load_tool("calibrate_threshold").parse_args(
            ["--dataset-root", str(root), "--embedder", "handcrafted", "--write-thresholds"]
        )
