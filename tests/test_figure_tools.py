"""tools/plot_attention.py and tools/plot_training.py: what they draw is what the model and the log hold."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch

from reid import extraction
from reid.models import load_retrieval_model


def test_attention_figure_shows_the_models_own_maps(tmp_path, small_checkpoint, capsys, load_tool):
    checkpoint = small_checkpoint(gdfl=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (70, 30, 3), dtype=np.uint8))
    tool = load_tool("plot_attention")
    crops, maps, taps = tool.attention_maps(checkpoint, paths)
    assert taps == ["layer3", "layer4"] and len(crops) == len(maps) == 3 and crops[0].shape == (64, 32, 3)
    model, info = load_retrieval_model(checkpoint)
    transform = extraction.test_transform(info["input_size"], info["mean"], info["std"])
    image = transform(extraction.to_rgb(paths[1], "rgb"))[None]
    with torch.no_grad():
        _, reference = model(image, return_attention=True)
    for mine, theirs in zip(maps[1], reference, strict=True):
        np.testing.assert_allclose(mine, theirs[0].numpy(), rtol=1e-5, atol=1e-7)
        assert abs(mine.sum() - 1) < 1e-4  # a softmax over positions
    assert tool.main([str(checkpoint), "--images", str(tmp_path), "--out", str(tmp_path / "a.png")]) == 0
    assert cv2.imread(str(tmp_path / "a.png")) is not None
    assert (
        tool.main([str(small_checkpoint()), "--images", str(paths[0]), "--out", str(tmp_path / "b.png")]) == 2
    )
    assert "has no GDFL attention" in capsys.readouterr().err and not (tmp_path / "b.png").exists()


def test_training_curve_uses_step_records_when_the_run_has_them(tmp_path, capsys, load_tool):
    tool = load_tool("plot_training")
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {"epoch": 1, "step": 10, "partial": True, "acc_adv": 0.1},
        {"epoch": 1, "step": 20, "partial": True, "acc_adv": 0.2},
        {"epoch": 1, "step": 20, "acc_adv": 0.15, "mAP": 0.3},
        {"epoch": 2, "step": 30, "partial": True, "acc_adv": 0.05},
        {"epoch": 2, "step": 40, "acc_adv": 0.07},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert tool.curve(records, "acc_adv") == ([10, 20, 30], [0.1, 0.2, 0.05])
    assert tool.curve(records, "mAP") == ([20], [0.3])  # only epoch records hold it
    assert tool.main([str(run), "--metrics", "acc_adv", "mAP", "--out", str(tmp_path / "c.png")]) == 0
    assert cv2.imread(str(tmp_path / "c.png")) is not None
    assert tool.main([str(tmp_path / "none"), "--out", str(tmp_path / "d.png")]) == 2
    assert "metrics.jsonl: missing or empty" in capsys.readouterr().err
