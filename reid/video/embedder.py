"""Crops -> appearance features, in batches: a trained re-ID model (by default the shipped one), or the
handcrafted descriptor.

Every embedder exposes ``model_name`` and ``feature_dim`` (what a gallery records to refuse mixing feature
spaces), ``metric`` (the distance the features were designed for) and ``appearance`` (the tracking, stitching
and gallery thresholds calibrated for its feature space; see :mod:`reid.video.separability`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from reid.video import descriptor
from reid.video.separability import AppearanceThresholds

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
HANDCRAFTED = "handcrafted"
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[2] / "assets" / "models" / "cuhk03_mobilenetv2.pt"
"""The shipped re-ID model (MobileNetV2 trained on CUHK03; model card beside it)."""


class Embedder(Protocol):
    model_name: str
    feature_dim: int
    metric: str
    appearance: AppearanceThresholds | None

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


class HandcraftedEmbedder:
    """Colour + gradient stripe histograms (see :mod:`reid.video.descriptor`); cosine distance."""

    model_name = descriptor.DESCRIPTOR_NAME
    feature_dim = descriptor.FEATURE_DIM
    metric = "cosine"
    appearance = descriptor.APPEARANCE_THRESHOLDS

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return descriptor.describe_crops(crops)


class ModelEmbedder:
    """A torch re-ID model on BGR crops: resized to its input size, normalised, run in batches."""

    metric = "cosine"

    def __init__(self, model, *, input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 model_name: str, appearance: AppearanceThresholds | None = None, device: str = "cpu",
                 batch_size: int = 32) -> None:
        import torch

        self._torch = torch
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = int(batch_size)
        self.input_size = tuple(input_size)  # (h, w)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)
        self.feature_dim = int(model.feature_dim)
        self.model_name = model_name
        self.appearance = appearance

    def _preprocess(self, crop: np.ndarray) -> np.ndarray:
        height, width = self.input_size
        resized = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        return ((rgb.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1)

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        outputs = []
        with self._torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                batch = np.stack([self._preprocess(c) for c in crops[start : start + self.batch_size]])
                tensor = self._torch.from_numpy(batch).to(self.device)
                outputs.append(self.model(tensor).float().cpu().numpy())
        return np.concatenate(outputs).astype(np.float32)


class CheckpointEmbedder(ModelEmbedder):
    """A model trained with ``tools/train_reid.py``. ``appearance`` is None when the file carries no
    calibrated thresholds (write them with ``tools/calibrate_threshold.py --write-thresholds``)."""

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "cpu", batch_size: int = 32) -> None:
        from reid.models import load_retrieval_model

        model, info = load_retrieval_model(checkpoint, device=device)
        stored = info["appearance_thresholds"]
        super().__init__(
            model,
            input_size=info["input_size"],
            mean=info["mean"],
            std=info["std"],
            model_name=str(info["model_name"]),
            appearance=None if stored is None else AppearanceThresholds.from_mapping(stored, str(checkpoint)),
            device=device,
            batch_size=batch_size,
        )


def add_embedder_arguments(parser: argparse.ArgumentParser, *, purpose: str) -> None:
    """``--embedder`` and ``--checkpoint``, the same in every tool that embeds crops."""
    parser.add_argument(
        "--embedder",
        choices=("model", HANDCRAFTED),
        default="model",
        help="'model': a trained re-ID model (default; see --checkpoint); 'handcrafted': the colour/gradient "
        "descriptor, no CNN",
    )
    parser.add_argument(
        "--checkpoint",
        default=DEFAULT_MODEL,
        help=f"re-ID checkpoint {purpose} (default: '{DEFAULT_MODEL}', the shipped model "
        f"{DEFAULT_MODEL_PATH.name})",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")


def embedder_choice(args: argparse.Namespace) -> str | os.PathLike:
    """What :func:`build_embedder` should build for the arguments of :func:`add_embedder_arguments`."""
    return HANDCRAFTED if args.embedder == HANDCRAFTED else args.checkpoint


def embedder_path(model: str | os.PathLike) -> Path:
    """The checkpoint file behind ``model`` (``"default"`` is the shipped model)."""
    return DEFAULT_MODEL_PATH if str(model) == DEFAULT_MODEL else Path(model)


def build_embedder(model: str | os.PathLike = DEFAULT_MODEL, *, device: str = "cpu") -> Embedder:
    """``"default"``: the shipped model; ``"handcrafted"``: the descriptor; otherwise a checkpoint path."""
    if str(model) == HANDCRAFTED:
        logger.info("handcrafted appearance descriptor %s", descriptor.DESCRIPTOR_NAME)
        return HandcraftedEmbedder()
    path = embedder_path(model)
    if str(model) == DEFAULT_MODEL and not path.is_file():
        raise FileNotFoundError(f"the shipped re-ID model {path} is missing (a partial checkout?); "
                                f"pass --checkpoint FILE or --checkpoint {HANDCRAFTED}")
    return CheckpointEmbedder(path, device=device)
