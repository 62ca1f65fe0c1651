"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest
import torch

from reid.models import build_model
from reid.models.checkpoint import with_checksum
from reid.utils.io import atomic_torch_save


@pytest.fixture
def small_checkpoint(tmp_path_factory):
    """``make(gdfl=False, seed=0) -> path``: an untrained ResNet-18 re-ID checkpoint at 64 x 32 input, its
    BNNeck statistics randomised so that the feature is not a plain rescaling of the pooled trunk."""

    def make(gdfl: bool = False, seed: int = 0):
        config = {
            "data": {"height": 64, "width": 32, "pixel_mean": [0.5, 0.4, 0.3], "pixel_std": [0.25, 0.2, 0.3]},
            "model": {
                "backbone": "resnet18",
                "pretrained": "none",
                "gdfl": {"enabled": gdfl, "taps": ["layer3", "layer4"]},
            },
        }
        torch.manual_seed(seed)
        model = build_model(config["model"], 3)
        with torch.no_grad():
            model.bnneck.running_mean.uniform_(-0.5, 0.5)
            model.bnneck.running_var.uniform_(0.5, 2.0)
        path = tmp_path_factory.mktemp("ckpt") / ("gdfl.pt" if gdfl else "plain.pt")
        payload = {"model": model.state_dict(), "config": config, "num_classes": 3, "epoch": 1}
        atomic_torch_save(with_checksum(payload), path)
        return path

    return make


@pytest.fixture
def load_tool():
    """``load_tool(name) -> module``: a script of tools/ imported as a module, to call its ``main(argv)``."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"tool_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
