"""Retrieval features for a list of images, as used by evaluation, galleries and ``tools/test_reid.py``.

Preprocessing is the test transform of the training pipeline (resize to the model's input size, normalise),
so a feature extracted here equals the one the trainer evaluated. Flip averaging (mean of the features of the
image and its mirror) is optional; it usually adds a little mAP at twice the cost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from reid.data import ImageRecord
from reid.data.image_io import read_image
from reid.data.transforms import build_transforms

logger = logging.getLogger(__name__)


class _RecordImages(Dataset):
    """Preprocessed image tensors of ``records`` in order."""

    def __init__(self, records: Sequence[ImageRecord], transform):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(read_image(self.records[index].path))


@torch.no_grad()
def extract_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    *,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 128,
    flip: bool = False,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    feat: str = "after_bn",
) -> np.ndarray:
    """N x D float32 features of ``records`` from ``model`` in eval mode (training mode restored after).

    ``feat`` picks the feature after the BNNeck (``after_bn``, the BoT default) or before it (``before_bn``);
    ``input_size`` is (height, width).
    """
    device = torch.device(device)
    height, width = (int(v) for v in input_size)
    preprocessing = {
        "data": {"height": height, "width": width, "pixel_mean": list(mean), "pixel_std": list(std)}
    }
    transform = build_transforms(preprocessing, is_train=False)
    loader = DataLoader(
        _RecordImages(records, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # private: evaluating must not shift the training RNG streams
    )
    was_training = model.training
    previous_feat = getattr(model, "retrieval_feat", None)
    if hasattr(model, "set_retrieval_feat"):
        model.set_retrieval_feat(feat)
    elif feat != "after_bn":
        raise ValueError(f"{type(model).__name__} cannot return feat={feat!r} (no set_retrieval_feat)")
    model.eval()
    chunks = []
    try:
        for images in tqdm(loader, desc="features", leave=False, disable=len(loader) < 2, dynamic_ncols=True):
            images = images.to(device, non_blocking=True)
            features = model(images).float()
            if flip:
                features = (features + model(torch.flip(images, dims=[3])).float()) / 2
            chunks.append(features.cpu())
    finally:
        model.train(was_training)
        if previous_feat is not None:
            model.set_retrieval_feat(previous_feat)
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)
