"""Loading model weights safely and rebuilding a retrieval model from a training checkpoint.

Training-only heads (the ID ``classifier.`` and the ``adversary.``) are not part of the retrieval model:
they are dropped from exported weights and ignored when loading for retrieval, so a checkpoint trained on
any number of identities, with or without the adversary, yields the same embedding network. Every other key
must match exactly; a mismatch (another backbone, GDFL on/off, other widths) raises ``CheckpointError``
listing the offending keys and shapes.

Checkpoints are read with ``torch.load(weights_only=True)``: a file holding arbitrary pickled objects is
refused.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reid.models.reid_model import ReIDModel, build_model

logger = logging.getLogger(__name__)

TRAINING_ONLY_PREFIXES = ("classifier.", "adversary.")
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _is_training_only(key: str) -> bool:
    return key.startswith(TRAINING_ONLY_PREFIXES)


def retrieval_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the classifier and adversary (what retrieval needs)."""
    return {k: v for k, v in _unwrap(model).state_dict().items() if not _is_training_only(k)}


def _listed(items: list[str]) -> str:
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def load_model_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict_retrieval: bool = True
) -> None:
    """Load ``state_dict`` into ``model`` with a readable error on any mismatch.

    ``strict_retrieval=True``: classifier/adversary keys are ignored on both sides (retrieval, fine-tuning on
    other identities); all other keys must match. ``strict_retrieval=False``: every key must match (training
    resume); a classifier shape mismatch is reported as a different number of classes.
    """
    target = _unwrap(model)
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = target.state_dict()
    if strict_retrieval:
        state = {k: v for k, v in state.items() if not _is_training_only(k)}
        own = {k: v for k, v in own.items() if not _is_training_only(k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if "classifier.weight" in mismatched:
        raise CheckpointError(
            f"num_classes differs: checkpoint classifier has {state['classifier.weight'].shape[0]} classes, "
            f"model has {own['classifier.weight'].shape[0]}; "
            "load with strict_retrieval=True to drop the heads"
        )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
        if mismatched:
            shapes = [
                f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched
            ]
            parts.append(f"shape mismatches ({len(mismatched)}): {_listed(shapes)}")
        raise CheckpointError(
            "checkpoint does not fit the model (another architecture?): " + "; ".join(parts)
        )
    target.load_state_dict(state, strict=not strict_retrieval)


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` a checkpoint dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy or save?")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch.save's zip archive, or its legacy pickle
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint ({size} bytes that are not the zip archive "
            "torch.save writes): a truncated download, a text file, or the wrong file?"
        )
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} with torch.load(weights_only=True): it is corrupt or holds "
            f"arbitrary Python objects, which are refused for safety ({reason})"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    for key in ("model", "config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no '{key}' entry (found keys {sorted(ckpt)})")
    stored = ckpt.get(CHECKSUM_KEY)
    if stored is not None and stored != weights_checksum(ckpt["model"]):
        raise CheckpointError(
            f"checkpoint {path}: its weights do not match the sha256 stored with them - the file is damaged "
            "(disk or copy error); use another copy"
        )
    return ckpt


CHECKSUM_KEY = "model_sha256"


def weights_checksum(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the weights, stored beside them by every writer (:func:`with_checksum`) and checked by
    :func:`read_checkpoint`: a zip archive survives bytes damaged inside a tensor, the checksum does not.
    Files written before it existed carry none and are read unchecked."""
    return weights_fingerprint(state_dict, length=64)


def with_checksum(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with :data:`CHECKSUM_KEY` set for its ``model`` weights (unchanged without weights)."""
    if not isinstance(state.get("model"), Mapping):
        return state
    return {**state, CHECKSUM_KEY: weights_checksum(state["model"])}


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor], length: int = 10) -> str:
    """Content hash of the weights: identical retrieval weights give the same gallery model name."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous().reshape(-1)
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def load_retrieval_model(
    checkpoint_path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[ReIDModel, dict[str, Any]]:
    """Rebuild the model of a training checkpoint for feature extraction (eval mode, heads ignored).

    Returns ``(model, info)``; info: ``input_size`` (h, w), ``mean``, ``std``, ``feature_dim``, ``config``,
    ``model_name`` (e.g. ``resnet50-gdfl-<weights hash>``), ``num_classes``, ``epoch``,
    ``appearance_thresholds`` (the video gates calibrated for this model, a dict, or None),
    ``weights_sha256`` (the stored checksum of the weights, None for files written before it existed).
    """
    ckpt = read_checkpoint(checkpoint_path)
    config = ckpt["config"]
    if not isinstance(config, Mapping) or "model" not in config:
        raise CheckpointError(
            f"checkpoint {checkpoint_path}: 'config' must be the resolved config with 'model'"
        )
    model_cfg = copy.deepcopy(dict(config["model"]))
    model_cfg["pretrained"] = "none"
    # The ID head is ignored, so its size is irrelevant; keep the trained one when known.
    num_classes = int(ckpt.get("num_classes") or 1)
    model = build_model(model_cfg, num_classes)
    load_model_weights(model, ckpt["model"], strict_retrieval=True)
    test_cfg = config.get("test", {}) or {}
    model.set_retrieval_feat(test_cfg.get("feat", "after_bn"))
    model.to(device).eval()
    data_cfg = config.get("data") or {}
    absent = [f"data.{k}" for k in ("height", "width", "pixel_mean", "pixel_std") if k not in data_cfg]
    if absent:
        raise CheckpointError(
            f"checkpoint {checkpoint_path}: config lacks {absent} (needed for preprocessing)"
        )
    info = {
        "input_size": (int(data_cfg["height"]), int(data_cfg["width"])),
        "mean": [float(v) for v in data_cfg["pixel_mean"]],
        "std": [float(v) for v in data_cfg["pixel_std"]],
        "feature_dim": model.feature_dim,
        "config": config,
        "model_name": f"{model.describe()}-{weights_fingerprint(retrieval_state_dict(model))}",
        "num_classes": num_classes,
        "epoch": ckpt.get("epoch"),
        "appearance_thresholds": ckpt.get("appearance_thresholds"),
        "weights_sha256": ckpt.get(CHECKSUM_KEY),
    }
    logger.info("loaded retrieval model %s from %s", info["model_name"], checkpoint_path)
    return model, info
