"""Crops -> appearance features, in batches: a trained re-ID checkpoint, or the handcrafted descriptor.

Both expose ``model_name`` and ``feature_dim`` (what a gallery records to refuse mixing feature spaces) and
``metric`` (the distance the features were designed for).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from reid.video import descriptor

logger = logging.getLogger(__name__)


class Embedder(Protocol):
    model_name: str
    feature_dim: int
    metric: str

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


class HandcraftedEmbedder:
    """Colour + gradient stripe histograms (see :mod:`reid.video.descriptor`); cosine distance."""

    model_name = descriptor.DESCRIPTOR_NAME
    feature_dim = descriptor.FEATURE_DIM
    metric = "cosine"

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return descriptor.describe_crops(crops)


class CheckpointEmbedder:
    """A model trained with ``tools/train_reid.py``; crops are resized, normalised and run in batches."""

    metric = "cosine"

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "cpu", batch_size: int = 32) -> None:
        import torch

        from reid.models import load_retrieval_model

        self._torch = torch
        self.model, info = load_retrieval_model(checkpoint, device=device)
        self.device = device
        self.batch_size = int(batch_size)
        self.input_size = tuple(info["input_size"])  # (h, w)
        self.mean = np.asarray(info["mean"], dtype=np.float32).reshape(1, 1, 3)
        self.std = np.asarray(info["std"], dtype=np.float32).reshape(1, 1, 3)
        self.feature_dim = int(info["feature_dim"])
        self.model_name = str(info["model_name"])

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


def build_embedder(checkpoint: str | os.PathLike | None = None, *, device: str = "cpu") -> Embedder:
    """The checkpoint's model when one is given, else the handcrafted descriptor."""
    if checkpoint is None:
        logger.info("no --checkpoint: handcrafted appearance descriptor %s", descriptor.DESCRIPTOR_NAME)
        return HandcraftedEmbedder()
    return CheckpointEmbedder(checkpoint, device=device)
