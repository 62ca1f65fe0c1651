"""reid.FeatureExtractor on every input kind against a reference written here; tools/extract_features.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import reid
from reid.data import ImageRecord
from reid.evaluation.features_file import load_features
from reid.extraction import FeatureExtractor, extract_features
from reid.models import load_retrieval_model

TOOL = Path(__file__).resolve().parents[1] / "tools" / "extract_features.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("extract_features_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rgb_images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (50 + 7 * i, 20 + 3 * i, 3), dtype=np.uint8) for i in range(count)]


def reference_features(checkpoint, images: list[np.ndarray], flip: bool = False) -> np.ndarray:
    """Obviously-correct path: cv2 resize, normalise by hand, one image at a time through the torch model."""
    model, info = load_retrieval_model(checkpoint)
    height, width = info["input_size"]
    mean, std = np.asarray(info["mean"], np.float32), np.asarray(info["std"], np.float32)
    rows = []
    for image in images:
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        tensor = torch.from_numpy(((resized / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1))[
            None
        ]
        with torch.no_grad():
            feature = model(tensor)[0]
            if flip:
                feature = (feature + model(torch.flip(tensor, dims=[3]))[0]) / 2
        rows.append(feature.numpy())
    return np.stack(rows)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_images(folder: Path, images: list[np.ndarray], names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, name in zip(images, names, strict=True):
        path = folder / name
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # PNG: lossless
        paths.append(path)
    return paths


def test_every_input_kind_gives_the_reference_features(tmp_path, small_checkpoint):
    checkpoint = small_checkpoint()
    images = rgb_images(5)
    expected = unit(reference_features(checkpoint, images))
    extractor = reid.FeatureExtractor(checkpoint, device="cpu", batch_size=2)  # batches of 2: a partial batch
    assert extractor.runtime == "torch" and extractor.input_size == (64, 32)
    paths = write_images(tmp_path / "folder", images, [f"img{i}.png" for i in range(5)])
    float_tensors = [torch.from_numpy(image).permute(2, 0, 1).float() / 255 for image in images]
    kinds = {
        "rgb arrays": extractor(images),
        "bgr arrays": extractor([image[..., ::-1] for image in images], color="bgr"),
        "paths": extractor([str(p) for p in paths]),
        "folder": extractor(tmp_path / "folder"),
        "PIL": extractor([Image.fromarray(image) for image in images]),
        "uint8 tensors": extractor([torch.from_numpy(image).permute(2, 0, 1) for image in images]),
        "float tensors": extractor(float_tensors),
        "one image": np.concatenate([extractor(image) for image in images]),
    }
    for kind, features in kinds.items():
        assert features.dtype == np.float32 and features.shape == (5, extractor.feature_dim), kind
        np.testing.assert_allclose(features, expected, atol=2e-5, err_msg=kind)
    same_size = [cv2.resize(image, (32, 64)) for image in images]
    np.testing.assert_allclose(extractor(np.stack(same_size)), extractor(same_size), atol=1e-6)


def test_raw_flip_and_the_evaluation_path_agree(tmp_path, small_checkpoint):
    checkpoint = small_checkpoint(gdfl=True)
    images = rgb_images(4, seed=1)
    paths = write_images(tmp_path, images, [f"{i}.png" for i in range(4)])
    raw = FeatureExtractor(checkpoint, device="cpu", normalize=False)(images)
    np.testing.assert_allclose(raw, reference_features(checkpoint, images), atol=2e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    flipped = FeatureExtractor(checkpoint, device="cpu", normalize=False, flip=True)(images)
    np.testing.assert_allclose(flipped, reference_features(checkpoint, images, flip=True), atol=2e-5)
    assert np.abs(flipped - raw).max() > 1e-3  # the mirror image really is used
    model, info = load_retrieval_model(checkpoint)
    records = [ImageRecord(str(p), 0, 0) for p in paths]
    evaluated = extract_features(
        model, records, input_size=info["input_size"], mean=info["mean"], std=info["std"]
    )
    np.testing.assert_allclose(evaluated, raw, atol=1e-5)  # one preprocessing for evaluation and for users


def test_bad_inputs_are_named(tmp_path, small_checkpoint):
    extractor = FeatureExtractor(small_checkpoint(), device="cpu")
    assert extractor([]).shape == (0, extractor.feature_dim)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        extractor(tmp_path / "missing.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        extractor(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"H x W x 3 uint8.*float64"):
        extractor(np.zeros((20, 10, 3)))
    with pytest.raises(ValueError, match=r"3 x H x W, got \(1, 20, 10\)"):
        extractor(torch.zeros(1, 20, 10))
    with pytest.raises(ValueError, match="color must be one of"):
        extractor(rgb_images(1), color="BGR")
    with pytest.raises(TypeError, match="cannot read images from a int"):
        extractor(3)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        FeatureExtractor(tmp_path / "nope.pt")


def test_extract_features_tool_parses_known_names_and_marks_unknown_ones(tmp_path, small_checkpoint, capsys):
    checkpoint = small_checkpoint()
    images = rgb_images(4, seed=2)
    write_images(tmp_path / "q", images[:2], ["0007_c1s1_000100_00.png", "0009_c2s1_000200_00.png"])
    write_images(tmp_path / "g", images[2:], ["0007_c3s1_000300_00.png", "0009_c1s2_000400_00.png"])
    for name in ("0007_c1s1_000100_00.png", "0009_c2s1_000200_00.png"):  # Market names end in .jpg
        (tmp_path / "q" / name).rename(tmp_path / "q" / name.replace(".png", ".jpg"))
    for name in ("0007_c3s1_000300_00.png", "0009_c1s2_000400_00.png"):
        (tmp_path / "g" / name).rename(tmp_path / "g" / name.replace(".png", ".jpg"))
    out = tmp_path / "feats.npz"
    argv = ["--model", str(checkpoint), "--query", str(tmp_path / "q"), "--gallery", str(tmp_path / "g")]
    assert load_tool().main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    saved = load_features(out)
    assert saved.query_pids.tolist() == [7, 9] and saved.query_camids.tolist() == [0, 1]
    assert saved.gallery_pids.tolist() == [7, 9] and saved.gallery_camids.tolist() == [2, 0]
    expected = FeatureExtractor(checkpoint, device="cpu")(list(saved.gallery_paths))
    np.testing.assert_allclose(saved.gallery_features, expected, atol=1e-6)
    test_reid = importlib.util.spec_from_file_location("t", TOOL.parent / "test_reid.py")
    module = importlib.util.module_from_spec(test_reid)
    test_reid.loader.exec_module(module)
    assert module.main(["--features", str(out), "--output", str(tmp_path / "report")]) == 0

    write_images(tmp_path / "holiday", rgb_images(2), ["beach.png", "hike.png"])
    argv = [
        "--model",
        str(checkpoint),
        "--query",
        str(tmp_path / "holiday"),
        "--gallery",
        str(tmp_path / "g"),
    ]
    assert load_tool().main([*argv, "--out", str(tmp_path / "f2.npz"), "--device", "cpu"]) == 0
    assert "query names follow no known dataset convention" in capsys.readouterr().err
    assert load_features(tmp_path / "f2.npz").query_pids.tolist() == [-1, -1]
    assert load_tool().main([*argv[:3], str(tmp_path / "nothing"), "--gallery", "x", "--out", "o.npz"]) == 2
    assert "--query" in capsys.readouterr().err and not Path("o.npz").exists()
