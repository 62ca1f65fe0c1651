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
from typing import TYPE_CHECKING, Protocol

import numpy as np

from reid.shipped import DEFAULT_MODEL, SHIPPED_CHECKPOINT
from reid.video import descriptor
from reid.video.separability import AppearanceThresholds

if TYPE_CHECKING:
    from reid.extraction import FeatureExtractor

logger = logging.getLogger(__name__)

HANDCRAFTED = "handcrafted"


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
    """A trained re-ID model on BGR crops, through :class:`reid.extraction.FeatureExtractor` (the
    evaluation preprocessing; ONNX Runtime for an ``.onnx`` file and for the shipped model on a CPU).

    ``appearance`` is None when the model carries no calibrated thresholds (write them with
    ``tools/calibrate_threshold.py --write-thresholds``, into the ``.pt``; then re-export an ONNX copy)."""

    metric = "cosine"

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.extractor = extractor
        self.model_name = extractor.model_name
        self.feature_dim = extractor.feature_dim
        stored = extractor.appearance_thresholds
        self.appearance = (
            None if stored is None else AppearanceThresholds.from_mapping(stored, extractor.source)
        )

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        return self.extractor(list(crops), color="bgr")


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
        help=f"re-ID model {purpose}: a .pt checkpoint or an exported .onnx (default: '{DEFAULT_MODEL}', the "
        f"shipped model {SHIPPED_CHECKPOINT.stem}, run by ONNX Runtime on a CPU)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")


def embedder_choice(args: argparse.Namespace) -> str | os.PathLike:
    """What :func:`build_embedder` should build for the arguments of :func:`add_embedder_arguments`."""
    return HANDCRAFTED if args.embedder == HANDCRAFTED else args.checkpoint


def embedder_path(model: str | os.PathLike) -> Path:
    """The training checkpoint behind ``model`` (``"default"``: the shipped model's ``.pt``), e.g. to write
    calibrated thresholds into."""
    return SHIPPED_CHECKPOINT if str(model) == DEFAULT_MODEL else Path(model)


def build_embedder(model: str | os.PathLike = DEFAULT_MODEL, *, device: str = "cpu") -> Embedder:
    """``"default"``: the shipped model; ``"handcrafted"``: the descriptor; otherwise a ``.pt`` checkpoint or
    an exported ``.onnx`` model."""
    if str(model) == HANDCRAFTED:
        logger.info("handcrafted appearance descriptor %s", descriptor.DESCRIPTOR_NAME)
        return HandcraftedEmbedder()
    from reid.extraction import FeatureExtractor  # torch is imported only when a model is used

    try:
        extractor = FeatureExtractor(model, device=device, normalize=False)
    except FileNotFoundError as err:
        if str(model) != DEFAULT_MODEL:
            raise
        raise FileNotFoundError(f"{err}; pass --checkpoint FILE or --checkpoint {HANDCRAFTED}") from None
    logger.info("re-ID model %s (%s, %s)", extractor.model_name, extractor.runtime, extractor.source)
    return ModelEmbedder(extractor)
