"""tools/ship_model.py: a checkpoint becomes a float16 retrieval file that extracts the same features."""

import sys
from pathlib import Path

import torch

from reid.config.defaults import get_defaults
from reid.models import build_model, load_retrieval_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import ship_model  # noqa: E402


def test_shipped_file_is_half_size_and_ranks_like_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = get_defaults()
    cfg["model"].update(backbone="mobilenetv2", pretrained="none")
    cfg["data"].update(height=64, width=32)
    model = build_model(cfg["model"], 7)
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "config": cfg, "num_classes": 7, "epoch": 3}, ckpt)
    out = tmp_path / "shipped.pt"
    assert ship_model.main([str(ckpt), "--out", str(out)]) == 0
    assert out.stat().st_size < 0.6 * ckpt.stat().st_size
    original, _ = load_retrieval_model(ckpt)
    shipped, info = load_retrieval_model(out)
    assert info["epoch"] == 3 and info["feature_dim"] == 1280
    images = torch.randn(6, 3, 64, 32)
    with torch.no_grad():
        a = torch.nn.functional.normalize(original(images), dim=1)
        b = torch.nn.functional.normalize(shipped(images), dim=1)
    assert (a - b).abs().max() < 5e-3
    assert torch.equal((a @ a.T).argsort(dim=1)[:, -1], (b @ b.T).argsort(dim=1)[:, -1])
    assert ship_model.main([str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
