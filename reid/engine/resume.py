"""Resuming training: a training checkpoint holds everything needed to continue a run bit-for-bit, written
atomically and read back with ``torch.load(weights_only=True)`` so that a checkpoint from an untrusted source
cannot execute code. (The file format itself, checksums and retrieval loading: reid/models/checkpoint.py.)

A checkpoint is a plain dict. Keys shared with retrieval loading (reid/models/checkpoint.py): ``model`` (the
unwrapped state dict), ``config`` (the resolved config), ``num_classes``, ``epoch`` (epochs completed).
Training keys: ``optimizer``, ``loss_optimizer``, ``scheduler``, ``scaler``, ``criterion``, ``global_step``,
``best_metric``, ``best_epoch``, ``rng_states`` (one entry per rank), ``world_size``, ``format_version``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from reid.models.checkpoint import CheckpointError, read_checkpoint, with_checksum
from reid.utils.io import atomic_torch_save

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
REQUIRED_TRAINING_KEYS = ("model", "config", "num_classes", "epoch", "optimizer", "scheduler", "global_step")

# Config entries that may differ between an interrupted run and its resumption without changing the result.
RESUME_IGNORED_PREFIXES = (
    "output_dir",
    "data.root",
    "data.num_workers",
    "data.pin_memory",
    "solver.checkpoint_period",
    "test.",
)


class ResumeConfigError(ValueError):
    """The config of the run being resumed differs from the config given now."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``state`` (a crash mid-save keeps the previous file intact)."""
    state = with_checksum({"format_version": CHECKPOINT_FORMAT_VERSION, **state})
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a trainer checkpoint with ``torch.load(weights_only=True)`` and check it can resume training."""
    state = read_checkpoint(path, device=map_location)
    missing = [key for key in REQUIRED_TRAINING_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"Checkpoint {path} cannot resume training: missing keys {missing} (expected a last.pt/best.pt "
            "written by the trainer)"
        )
    return state


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        flat: dict[str, Any] = {}
        for key, value in cfg.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): cfg}


def config_differences(
    saved: dict[str, Any],
    current: dict[str, Any],
    ignored_prefixes: tuple[str, ...] = RESUME_IGNORED_PREFIXES,
) -> list[str]:
    """``key: saved -> current`` lines for every dotted key that differs (ignored keys skipped)."""
    old, new = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if any(key == p or key.startswith(p) for p in ignored_prefixes):
            continue
        before, after = old.get(key, "<absent>"), new.get(key, "<absent>")
        if before != after:
            lines.append(f"{key}: {before!r} -> {after!r}")
    return lines


def check_resume_config(
    saved: dict[str, Any], current: dict[str, Any], path: str | Path, *, force: bool
) -> None:
    """Refuse to resume under a different config (unless ``force``), listing the differing keys."""
    differences = config_differences(saved, current)
    if not differences:
        return
    listing = "\n  ".join(differences)
    if force:
        logger.warning("Resuming from %s despite config differences (forced):\n  %s", path, listing)
        return
    raise ResumeConfigError(
        f"The run in {path} was trained with a different config; differing keys:\n  {listing}\n"
        "Use the same config (and overrides), or force the resumption (--force-resume)."
    )
