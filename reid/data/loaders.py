"""DataLoaders for training (P x K batches, DDP-aware) and for feature extraction (sequential).

Reproducibility: the epoch's batches come from ``PKSampler`` (a function of seed and epoch), and each
batch's augmentation is seeded from (seed, batch indices) inside ``ReIDImageDataset``; worker processes are
additionally seeded (python, numpy, torch, the transform) from torch's per-worker seed for anything else
random. Call ``loader.batch_sampler.set_epoch(epoch)`` before every training epoch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from reid.data.datasets import ImageRecord
from reid.data.sampler import PKSampler
from reid.data.torch_dataset import ReIDImageDataset, collate_samples
from reid.data.transforms import build_transforms

logger = logging.getLogger(__name__)


def build_train_loader(
    cfg: Mapping[str, Any],
    records: Sequence[ImageRecord],
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int | None = None,
) -> DataLoader:
    """P x K training loader over ``records``; ``seed`` defaults to ``cfg["seed"]``.

    With ``data.skip_corrupt`` the unreadable files are excluded up front; they are listed in
    ``loader.dataset.skipped``.
    """
    data = cfg["data"]
    seed = int(cfg["seed"] if seed is None else seed)
    dataset = ReIDImageDataset(
        records,
        build_transforms(cfg, is_train=True, seed=seed),
        skip_corrupt=bool(data["skip_corrupt"]),
        augment_seed=seed,
    )
    sampler = PKSampler(
        [record.pid for record in dataset.records],
        int(data["ids_per_batch"]),
        int(data["num_instances"]),
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))
    return _make_loader(dataset, cfg, batch_sampler=sampler, generator=generator, persistent=True)


def _make_loader(
    dataset: ReIDImageDataset, cfg: Mapping[str, Any], *, persistent: bool, **kwargs: Any
) -> DataLoader:
    num_workers = int(cfg["data"]["num_workers"])
    if num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
    return DataLoader(
        dataset,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=bool(cfg["data"]["pin_memory"]) and torch.cuda.is_available(),
        persistent_workers=persistent and num_workers > 0,
        worker_init_fn=seed_worker,
        **kwargs,
    )


def seed_worker(worker_id: int) -> None:
    """Seed a DataLoader worker from torch's per-worker seed and stop OpenCV from spawning thread pools.

    The loader's workers already run in parallel; OpenCV threads inside each would oversubscribe the CPUs.
    """
    cv2.setNumThreads(0)
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "reseed"):
        transform.reseed(worker_seed)
