"""Where the models shipped with the package live (plain paths: importing this loads no framework)."""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "assets" / "models"
SHIPPED_CHECKPOINT = SHIPPED_MODELS / "cuhk03_mobilenetv2.pt"
"""The shipped re-ID model (MobileNetV2 trained on CUHK03; model card beside it)."""
SHIPPED_ONNX = SHIPPED_MODELS / "cuhk03_mobilenetv2.onnx"
"""The same model exported with ``tools/export_onnx.py``: what ``"default"`` runs on a CPU."""
DEFAULT_MODEL = "default"
"""The name that selects the shipped model wherever a model is asked for."""
