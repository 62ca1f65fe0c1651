"""Image preprocessing for training (augmentation) and evaluation, built with albumentations.

Train: resize -> horizontal flip -> zero-pad and random crop back (small translations) -> optional colour
jitter -> random erasing -> normalise -> CHW tensor. Random erasing follows Zhong et al., "Random Erasing Data
Augmentation", AAAI 2020: probability p, erased area 2%-40% of the image, aspect ratio 0.3-3.3, filled with
random pixel values; it runs on the uint8 image so the random fill has the same range as real pixels.
Test: resize -> normalise -> CHW tensor.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

ERASING_AREA = (0.02, 0.4)
ERASING_ASPECT = (0.3, 3.3)


class ImageTransform:
    """Callable turning an RGB uint8 H x W x 3 array into a normalised float32 3 x h x w tensor."""

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        is_rgb = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
        if not is_rgb or image.dtype != np.uint8:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"expected an RGB uint8 H x W x 3 array, got shape {shape}, dtype {dtype}")
        normalised = self.pipeline(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))

    def reseed(self, seed: int | Sequence[int]) -> None:
        """Restart the random stream (per worker, or per batch for exact reproducibility).

        One shared generator pair is cheaper to create than albumentations' per-transform seeding.
        """
        generator = np.random.default_rng(seed)
        self.pipeline.set_random_state(generator, random.Random(int(generator.integers(2**63))))


def build_transforms(cfg: Mapping[str, Any], is_train: bool, seed: int | None = None) -> ImageTransform:
    """Build the train (augmenting) or test (deterministic) transform from ``cfg["data"]``."""
    data = cfg["data"]
    height, width = int(data["height"]), int(data["width"])
    steps: list[Any] = [A.Resize(height=height, width=width, interpolation=cv2.INTER_LINEAR)]
    if is_train:
        aug = data["aug"]
        pad = int(aug["pad"])
        steps.append(A.HorizontalFlip(p=float(aug["flip_p"])))
        if pad > 0:
            steps += [
                A.PadIfNeeded(
                    min_height=height + 2 * pad,
                    min_width=width + 2 * pad,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                ),
                A.RandomCrop(height=height, width=width),
            ]
        if aug["color_jitter"]:
            steps.append(A.ColorJitter(brightness=0.2, contrast=0.15, saturation=0.1, hue=0.0, p=0.5))
        if aug["random_erasing_p"] > 0:
            erasing_p = float(aug["random_erasing_p"])
            steps.append(A.Erasing(scale=ERASING_AREA, ratio=ERASING_ASPECT, fill="random", p=erasing_p))
    mean, std = tuple(data["pixel_mean"]), tuple(data["pixel_std"])
    steps.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
    return ImageTransform(A.Compose(steps, seed=seed))
