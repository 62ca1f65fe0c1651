"""The resolved configuration schema: every valid key, its default and (for enumerations) its allowed values.

This module is the single source of truth: ``load_config`` rejects any key that is not here, and infers the
expected type of each key from its default value. Keys whose default is ``null`` take the type listed in
``NULLABLE_TYPES``; keys restricted to a fixed set of strings are listed in ``CHOICES``.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/default",
    "data": {
        "name": "market1501",
        "root": "data/market1501",
        "synthetic": {
            "num_train_ids": 64,
            "num_test_ids": 64,
            "num_cameras": 4,
            "images_per_id_per_camera": 3,
            "seed": 0,
        },
        # reader options of data.name=custom (see reid/data/datasets/custom.py)
        "custom": {"camera_regex": r"c(\d+)", "camera_mode": "auto"},
        # reader options of data.name=cuhk03 (see reid/data/datasets/cuhk03.py)
        # test_boxes: query/gallery box type when it differs from training's (labeled -> detected)
        "cuhk03": {"boxes": "labeled", "num_val_ids": 100, "test_boxes": None},
        "height": 256,
        "width": 128,
        "pixel_mean": [0.485, 0.456, 0.406],
        "pixel_std": [0.229, 0.224, 0.225],
        "ids_per_batch": 16,
        "num_instances": 4,
        "num_workers": 4,
        "pin_memory": True,
        "skip_corrupt": False,
        # stop at the first file named against the dataset's convention (false: skip and count them)
        "strict": True,
        "aug": {"flip_p": 0.5, "pad": 10, "random_erasing_p": 0.5, "color_jitter": False},
    },
    "model": {
        "backbone": "resnet50",
        "last_stride": 1,
        "pretrained": "imagenet",
        # leading stages (stem, layer1, ...) kept at their pretrained weights and BN statistics
        "frozen_stages": 0,
        "gdfl": {
            "enabled": False,
            "taps": ["layer2", "layer3", "layer4"],
            "attention": {"enabled": True, "compat": "additive", "shared": True},
            "include_global": False,
            # "global": the fusion starts as the identity on g (needs include_global), so training starts from
            # the baseline's feature instead of a random projection of an ImageNet trunk
            "fuse_init": "default",
            "proj_dim": None,
            "fuse_dim": None,
        },
        "adversary": {
            "enabled": False,
            "attach": "gdfl",
            "lambda_max": 0.1,
            "gamma": 10.0,
            "mode": "grl",
            "hidden": [1024, 1024],
            "dropout": 0.5,
        },
    },
    "loss": {
        "id": {"weight": 1.0, "label_smoothing": 0.1},
        "triplet": {"weight": 1.0, "margin": 0.3, "soft_margin": False},
        "center": {"weight": 0.0, "lr": 0.5},
        "multi_similarity": {"weight": 0.0, "alpha": 2.0, "beta": 50.0, "base": 0.5, "epsilon": 0.1},
        "circle": {"weight": 0.0, "margin": 0.25, "gamma": 64.0},
        "adversary": {"weight": 1.0},
    },
    "solver": {
        "optimizer": "adam",
        "base_lr": 3.5e-4,
        "weight_decay": 5.0e-4,
        "momentum": 0.9,
        "epochs": 120,
        "warmup_epochs": 10,
        "warmup_factor": 0.1,
        "scheduler": "step",
        "milestones": [40, 70],
        "gamma": 0.1,
        "grad_clip": 5.0,
        "amp": "auto",
        "channels_last": True,
        "max_iters_per_epoch": None,
        "checkpoint_period": 1,
        # every N steps also log the mean of the last N steps' losses/accuracies to metrics.jsonl
        # (records with "partial": true), for curves inside an epoch; 0 = per epoch only
        "log_period": 0,
    },
    "test": {
        "eval_period": 10,
        "batch_size": 128,
        "flip": False,
        "metric": "euclidean",
        "feat": "after_bn",
        "rerank": {"enabled": False, "k1": 20, "k2": 6, "lambda_value": 0.3},
    },
}

# Keys whose default is null: the type a non-null value must have.
NULLABLE_TYPES: dict[str, type] = {
    "data.cuhk03.test_boxes": str,
    "model.gdfl.proj_dim": int,
    "model.gdfl.fuse_dim": int,
    "solver.max_iters_per_epoch": int,
}

# Keys restricted to a fixed set of strings.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("market1501", "dukemtmc", "msmt17", "cuhk03", "custom", "synthetic"),
    "data.cuhk03.boxes": ("labeled", "detected", "both"),
    "data.custom.camera_mode": ("auto", "per_split"),
    "model.backbone": ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2"),
    "model.gdfl.attention.compat": ("additive", "dot"),
    "model.gdfl.fuse_init": ("default", "global"),
    "model.adversary.attach": ("gdfl", "embedding", "global", "taps"),
    "model.adversary.mode": ("grl", "confusion"),
    "solver.optimizer": ("adam", "sgd"),
    "solver.scheduler": ("step", "cosine"),
    "solver.amp": ("auto", "bf16", "fp16", "off"),
    "test.metric": ("euclidean", "cosine"),
    "test.feat": ("after_bn", "before_bn"),
}


def get_defaults() -> dict[str, Any]:
    """A fresh deep copy of the defaults, safe to mutate."""
    return copy.deepcopy(DEFAULTS)
