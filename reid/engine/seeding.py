"""Seeding and RNG-state capture, so a run is reproducible from its seed and a resumed run continues the
exact random streams of the interrupted one.

RNG states are stored as tensors and plain lists (never numpy arrays or tuples of objects) so that a
checkpoint holding them still loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device).

    ``deterministic`` turns on the cheap determinism switches (cuDNN deterministic kernels, no autotuner on
    CPU runs); ``torch.use_deterministic_algorithms`` is left off because several CUDA kernels re-ID training
    needs (e.g. index_add in the losses) have no deterministic variant and would raise.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def capture_rng_state() -> dict[str, Any]:
    """Snapshot every global RNG in a ``weights_only``-loadable form."""
    version, mt_state, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt_state), "gauss_next": gauss_next},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; a CUDA state is restored only when CUDA is present."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "Checkpoint holds %d CUDA RNG states but %d devices are visible; CUDA RNG not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )
