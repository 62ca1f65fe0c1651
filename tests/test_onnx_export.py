"""ONNX export: ONNX Runtime ranks like PyTorch, for a plain model, the full framework (GDFL) and the shipped
model; the exported file works wherever a checkpoint does."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.evaluation.distance import l2_normalize
from reid.extraction import FeatureExtractor, resolve_model
from reid.models import load_retrieval_model
from reid.models.checkpoint import CheckpointError
from reid.models.onnx_model import METADATA_KEY, OnnxRetrievalModel, export_onnx, parity_report
from reid.shipped import SHIPPED_CHECKPOINT, SHIPPED_ONNX
from reid.video.embedder import build_embedder

pytest.importorskip("onnx")  # the exporter's dependency (extra [onnx], in [dev])

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "export_onnx.py"


def top10(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Reference ranking: cosine distance by a plain loop, stable sort."""
    rows = []
    for q in l2_normalize(query):
        distance = np.array([1.0 - float(q @ g) for g in l2_normalize(gallery)])
        rows.append(np.argsort(distance, kind="stable")[:10])
    return np.stack(rows)


def generated_images(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Normalised inputs with structure (smooth colour fields plus noise), so features are not all alike."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((count, 3, 4, 2)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bilinear")
    return (smooth.numpy() + 0.3 * rng.standard_normal((count, 3, height, width))).astype(np.float32)


@pytest.mark.parametrize("gdfl", [False, True], ids=["plain", "gdfl"])
def test_onnx_runtime_matches_pytorch_and_ranks_alike(tmp_path, small_checkpoint, gdfl):
    checkpoint = small_checkpoint(gdfl=gdfl)
    out = tmp_path / "model.onnx"
    metadata = export_onnx(checkpoint, out)
    model, info = load_retrieval_model(checkpoint)
    assert metadata["source_weights_sha256"] == info["weights_sha256"]
    onnx_model = OnnxRetrievalModel(out)
    assert onnx_model.info["model_name"] == info["model_name"]
    assert onnx_model.info["input_size"] == tuple(info["input_size"]) == (64, 32)
    images = generated_images(48, 64, 32, seed=1)
    with torch.inference_mode():
        reference = model(torch.from_numpy(images)).numpy()
    exported = np.concatenate([onnx_model(images[i : i + 7]) for i in range(0, 48, 7)])  # batches of 7 and 6
    assert exported.shape == reference.shape == (48, info["feature_dim"])
    assert np.abs(l2_normalize(exported) - l2_normalize(reference)).max() <= 1e-4
    query, gallery = slice(0, 8), slice(8, 48)
    np.testing.assert_array_equal(
        top10(exported[query], exported[gallery]), top10(reference[query], reference[gallery])
    )
    assert parity_report(checkpoint, out)["max_abs_diff_normalised"] <= 1e-4


def test_the_export_holds_no_classifier_or_adversary(tmp_path, small_checkpoint):
    import onnx

    out = tmp_path / "model.onnx"
    export_onnx(small_checkpoint(gdfl=True), out)
    proto = onnx.load(str(out))
    names = [init.name for init in proto.graph.initializer]
    assert not [name for name in names if "classifier" in name or "adversary" in name]
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == [
        "features"
    ]
    batch_axis = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param == "batch"  # dynamic, not a fixed number


def test_feature_extractor_and_video_embedder_run_the_onnx_file_like_the_checkpoint(
    tmp_path, small_checkpoint
):
    checkpoint = small_checkpoint(gdfl=True, seed=3)
    out = tmp_path / "model.onnx"
    export_onnx(checkpoint, out)
    rng = np.random.default_rng(2)
    crops = [rng.integers(0, 256, (40 + 5 * i, 18 + 2 * i, 3), dtype=np.uint8) for i in range(6)]
    from_onnx = FeatureExtractor(out, device="cpu", flip=True)
    from_torch = FeatureExtractor(checkpoint, device="cpu", flip=True)
    assert (from_onnx.runtime, from_torch.runtime) == ("onnxruntime", "torch")
    assert from_onnx.model_name == from_torch.model_name
    np.testing.assert_allclose(from_onnx(crops), from_torch(crops), atol=1e-4)
    embedder = build_embedder(out)
    assert embedder.model_name == from_torch.model_name
    np.testing.assert_allclose(
        l2_normalize(embedder(crops)),
        FeatureExtractor(checkpoint, device="cpu")(crops, color="bgr"),
        atol=1e-4,
    )


def test_shipped_onnx_is_the_shipped_checkpoint():
    assert SHIPPED_ONNX.is_file() and SHIPPED_CHECKPOINT.is_file()
    _, info = load_retrieval_model(SHIPPED_CHECKPOINT)
    onnx_model = OnnxRetrievalModel(SHIPPED_ONNX)
    assert onnx_model.info["model_name"] == info["model_name"]
    assert onnx_model.info["appearance_thresholds"] == info["appearance_thresholds"]
    stored = json.loads(onnx_model.session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert stored["source_weights_sha256"] == info["weights_sha256"]  # exported from these very weights
    parity = parity_report(SHIPPED_CHECKPOINT, SHIPPED_ONNX, num_images=8)
    assert parity["max_abs_diff_normalised"] <= 1e-4


def test_a_file_without_metadata_or_not_onnx_is_refused_in_one_line(tmp_path, small_checkpoint):
    import onnx

    out = tmp_path / "model.onnx"
    export_onnx(small_checkpoint(), out)
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(CheckpointError, match="has no 'reid' metadata.*export_onnx"):
        OnnxRetrievalModel(bare)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot be loaded by ONNX Runtime"):
        OnnxRetrievalModel(junk)


def load_tool():
    spec = importlib.util.spec_from_file_location("export_onnx_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_tool_writes_the_file_and_reports_parity(tmp_path, small_checkpoint, capsys):
    out = tmp_path / "tool.onnx"
    assert load_tool().main([str(small_checkpoint()), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "parity with PyTorch" in printed
    parity = json.loads(printed.split("parity with PyTorch: ", 1)[1])
    assert parity["max_abs_diff_normalised"] <= 1e-4
    assert load_tool().main([str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export_onnx: error:") and "none.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_without_onnxruntime_the_message_names_the_extra_and_default_falls_back_to_the_checkpoint(
    monkeypatch,
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when it is absent
    assert resolve_model("default", "cpu") == SHIPPED_CHECKPOINT
    with pytest.raises(ImportError, match=r"onnxruntime is not installed: pip install -e '\.\[onnx\]'"):
        OnnxRetrievalModel(SHIPPED_ONNX)
    monkeypatch.undo()
    assert resolve_model("default", "cpu") == SHIPPED_ONNX
