"""Retrieval features of images: :func:`extract_features` for a dataset's records with a live model (the
trainer's evaluation, ``tools/test_reid.py``), :class:`FeatureExtractor` for anyone's images with a saved
model (a checkpoint, an exported ``.onnx``, or the shipped default), used by the video pipeline and
``tools/extract_features.py``.

Both preprocess with the test transform of the training pipeline (resize to the model's input size with
bilinear interpolation, normalise with the model's mean and std), so a feature extracted here equals the one
the trainer evaluated. Flip averaging is optional: the feature of an image becomes the mean of the features of
the image and of its left-right mirror (test-time augmentation, computed after preprocessing, before any
L2 normalisation). It usually adds a little mAP at twice the cost; a gallery and its queries must be
extracted the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from reid.data import ImageRecord
from reid.data.image_io import CorruptImageError, read_image
from reid.data.transforms import ImageTransform, build_transforms
from reid.evaluation.distance import l2_normalize
from reid.shipped import DEFAULT_MODEL, SHIPPED_CHECKPOINT, SHIPPED_ONNX

logger = logging.getLogger(__name__)


class _RecordImages(Dataset):
    """Preprocessed image tensors of ``records`` in order."""

    def __init__(self, records: Sequence[ImageRecord], transform):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            image = read_image(self.records[index].path)
        except CorruptImageError as exc:
            raise CorruptImageError(exc.path, f"{exc.reason} (data.skip_corrupt=true leaves unreadable "
                                    "images out of evaluation too, checking every file first)") from exc
        return self.transform(image)


def test_transform(input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """The evaluation preprocessing of a model with ``input_size`` (height, width), ``mean`` and ``std``."""
    height, width = (int(v) for v in input_size)
    preprocessing = {
        "data": {"height": height, "width": width, "pixel_mean": list(mean), "pixel_std": list(std)}
    }
    return build_transforms(preprocessing, is_train=False)


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
    transform = test_transform(input_size, mean, std)
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


COLOR_ORDERS = ("rgb", "bgr")

# A single image as FeatureExtractor takes it (PIL images are accepted too, without importing PIL here).
ImageInput = str | os.PathLike | np.ndarray | torch.Tensor | Any


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_model(model: str | os.PathLike, device: str = "cpu") -> Path:
    """The file behind ``model``: ``"default"`` is the shipped model, as ONNX on a CPU when ONNX Runtime is
    installed (3-4x the crops/s of PyTorch there, ``tools/benchmark_inference.py``), else the checkpoint."""
    if str(model) != DEFAULT_MODEL:
        return Path(model)
    candidates = [SHIPPED_CHECKPOINT]
    if str(device) == "cpu" and onnxruntime_available():
        candidates.insert(0, SHIPPED_ONNX)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"the shipped re-ID model {SHIPPED_CHECKPOINT} is missing (a partial checkout?)")


def _auto_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class FeatureExtractor:
    """Re-ID features of any images with a saved model: ``extractor(images) -> N x D float32``.

    ``model``: ``"default"`` (the shipped model), a training checkpoint (``.pt``) or an exported ``.onnx``
    (run by ONNX Runtime). ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
    ``normalize``: L2-normalise the features (the default; cosine similarity is then a dot product).
    ``flip``: average each image's features with those of its mirror image (see the module docstring).

    ``images`` may be an image file, a folder (its images, sorted by name, not recursive), an H x W x 3 uint8
    array, an N x H x W x 3 uint8 array, a PIL image, a 3 x H x W or N x 3 x H x W tensor (uint8, or float in
    [0, 1] as torchvision gives; quantised to 8 bits like a saved image), or a list of any of these. Arrays
    and tensors are taken as RGB unless ``color="bgr"`` (what ``cv2.imread`` returns); files and PIL images
    carry their own channel order.
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str = "auto",
        batch_size: int = 32,
        flip: bool = False,
        normalize: bool = True,
    ) -> None:
        device = _auto_device(device)
        path = resolve_model(model, device)
        if path.suffix.lower() == ".onnx":
            from reid.models.onnx_model import OnnxRetrievalModel

            onnx_model = OnnxRetrievalModel(path, device=device)
            forward, info, self.runtime = onnx_model, onnx_model.info, "onnxruntime"
        else:
            from reid.models.checkpoint import load_retrieval_model

            module, info = load_retrieval_model(path, device=device)
            forward, self.runtime = _torch_forward(module, device), "torch"
        self._setup(forward, info, source=str(path), batch_size=batch_size, flip=flip, normalize=normalize)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        model_name: str,
        device: str = "cpu",
        batch_size: int = 32,
        flip: bool = False,
        normalize: bool = True,
    ) -> FeatureExtractor:
        """An extractor for a model in memory (e.g. untrained, for a baseline) with its preprocessing."""
        extractor = cls.__new__(cls)
        info = {
            "input_size": tuple(int(v) for v in input_size),
            "mean": list(mean),
            "std": list(std),
            "feature_dim": int(module.feature_dim),
            "model_name": model_name,
            "appearance_thresholds": None,
        }
        extractor.runtime = "torch"
        extractor._setup(
            _torch_forward(module.to(device).eval(), device),
            info,
            source=model_name,
            batch_size=batch_size,
            flip=flip,
            normalize=normalize,
        )
        return extractor

    def _setup(
        self, forward, info: dict[str, Any], *, source: str, batch_size: int, flip: bool, normalize: bool
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._forward = forward
        self.source = source
        self.model_name: str = str(info["model_name"])
        self.feature_dim: int = int(info["feature_dim"])
        self.input_size: tuple[int, int] = tuple(int(v) for v in info["input_size"])
        self.appearance_thresholds: dict[str, float] | None = info.get("appearance_thresholds")
        self.batch_size, self.flip, self.normalize = int(batch_size), bool(flip), bool(normalize)
        self.transform = test_transform(self.input_size, info["mean"], info["std"])

    def __repr__(self) -> str:
        return (
            f"FeatureExtractor({self.model_name}, {self.runtime}, input {self.input_size}, "
            f"flip={self.flip}, normalize={self.normalize})"
        )

    def __call__(self, images: ImageInput | Sequence[ImageInput], *, color: str = "rgb") -> np.ndarray:
        if color not in COLOR_ORDERS:
            raise ValueError(f"color must be one of {COLOR_ORDERS}, got {color!r}")
        items = collect_images(images)
        if not items:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        chunks = []
        starts = range(0, len(items), self.batch_size)
        show = len(starts) > 4 and any(isinstance(item, Path) for item in items)
        for start in tqdm(starts, desc="features", unit="batch", disable=not show, leave=False):
            batch = [self.transform(to_rgb(item, color)) for item in items[start : start + self.batch_size]]
            chunks.append(self._features(torch.stack(batch).numpy()))
        return np.concatenate(chunks)

    def _features(self, batch: np.ndarray) -> np.ndarray:
        features = self._forward(batch)
        if self.flip:
            features = (features + self._forward(np.ascontiguousarray(batch[..., ::-1]))) / 2
        features = np.asarray(features, dtype=np.float32)
        if self.normalize:
            features = l2_normalize(features)
        return features


def _torch_forward(module: nn.Module, device: str):
    """numpy N x 3 x H x W -> numpy N x D with a torch module in eval mode."""
    module.eval()

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(batch)).to(device)).float().cpu().numpy()

    return forward


def collect_images(images: ImageInput | Sequence[ImageInput]) -> list[Path | np.ndarray | torch.Tensor]:
    """Flatten ``images`` (see :class:`FeatureExtractor`) into single images: paths, arrays and tensors."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            from reid.data.datasets.base import DatasetLayoutError, describe_folder, list_images

            found = list_images(path)
            if not found:
                raise DatasetLayoutError(f"folder '{path}' holds no images ({describe_folder(path)})")
            return list(found)
        if not path.exists():
            raise FileNotFoundError(f"Image file not found: '{path}'")
        return [path]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    if _is_pil_image(images):
        return [np.asarray(images.convert("RGB"))]
    if isinstance(images, (list, tuple)):
        return [single for item in images for single in collect_images(item)]
    raise TypeError(
        f"cannot read images from a {type(images).__name__}: expected a path, a folder, a numpy array, "
        "a PIL image, a tensor, or a list of these"
    )


def _is_pil_image(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "convert")


def to_rgb(item: Path | np.ndarray | torch.Tensor, color: str) -> np.ndarray:
    """One image as the H x W x 3 uint8 RGB array the test transform takes."""
    if isinstance(item, Path):
        return read_image(item)  # files know their channel order
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3:
            raise ValueError(f"expected an image tensor of shape 3 x H x W, got {tuple(item.shape)}")
        if item.dtype != torch.uint8:
            item = (item.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        item = item.permute(1, 2, 0).cpu().numpy()
    is_image = isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[2] == 3
    if not is_image or item.dtype != np.uint8:
        shape, dtype = getattr(item, "shape", None), getattr(item, "dtype", type(item).__name__)
        raise ValueError(f"expected an H x W x 3 uint8 image array, got shape {shape}, dtype {dtype}")
    return np.ascontiguousarray(item[..., ::-1] if color == "bgr" else item)
