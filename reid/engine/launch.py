"""Entry points shared by ``tools/train_reid.py`` and ``tools/ablate.py``: compose configs, train a run
folder, evaluate a checkpoint.

Several config files compose left to right (later files override earlier ones), which is how a dataset config
is combined with an ablation row: ``--config configs/market1501/baseline.yml --config
configs/ablation/D.yml``.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from reid.config import load_config, save_config
from reid.engine.distributed import DistContext, barrier, cleanup, init_distributed
from reid.engine.evaluate import evaluate_unseen_and_seen
from reid.engine.trainer import Trainer, load_dataset, run_log_file
from reid.models import load_retrieval_model
from reid.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


def compose_config(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Resolve one or more config files (later ones win) plus ``KEY=VALUE`` overrides."""
    if not paths:
        return load_config(None, overrides)
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Config file not found: {path}")
    if len(paths) == 1:
        return load_config(paths[0], overrides)
    with tempfile.TemporaryDirectory() as tmp:
        composed = Path(tmp) / "composed.yml"
        composed.write_text(
            yaml.safe_dump({"_base_": [str(Path(p).resolve()) for p in paths]}), encoding="utf-8"
        )
        return load_config(composed, overrides)


def train(
    cfg: dict[str, Any],
    run_dir: str | Path,
    *,
    resume: str | Path | None = None,
    force_resume: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` in this process (joining the torchrun process group if any)."""
    ctx = init_distributed()
    try:
        return Trainer(cfg, run_dir, dist_ctx=ctx, resume=resume, force_resume=force_resume).fit()
    finally:
        cleanup(ctx)


def evaluate_checkpoint(cfg: dict[str, Any], checkpoint: str | Path, run_dir: str | Path) -> dict[str, Any]:
    """Evaluate a checkpoint on ``cfg``'s dataset; preprocessing comes from the checkpoint's own config.

    Writes ``run_dir/results.json`` (test figures, train-identity figures when the train split is non-empty).
    """
    ctx = init_distributed()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    try:
        if ctx.is_main:
            with run_log_file(run_dir, True):
                results = _evaluate_on_main(cfg, checkpoint, run_dir, ctx)
        barrier(ctx)
    finally:
        cleanup(ctx)
    return results


def _evaluate_on_main(cfg: dict[str, Any], checkpoint: str | Path, run_dir: Path, ctx: DistContext) -> dict:
    start = time.perf_counter()
    model, info = load_retrieval_model(checkpoint, device=ctx.device)
    eval_cfg = copy.deepcopy(cfg)
    eval_cfg["data"]["height"], eval_cfg["data"]["width"] = info["input_size"]
    eval_cfg["data"]["pixel_mean"], eval_cfg["data"]["pixel_std"] = info["mean"], info["std"]
    save_config(eval_cfg, run_dir / "config.yaml")
    dataset = load_dataset(eval_cfg)
    logger.info("Evaluating %s on %s\n%s", info["model_name"], dataset.name, dataset.summary())
    results = evaluate_unseen_and_seen(
        model, dataset.query, dataset.gallery, dataset.train, eval_cfg, device=ctx.device
    )
    results.update(
        checkpoint=str(checkpoint), model_name=info["model_name"], elapsed_s=time.perf_counter() - start
    )
    atomic_write_json(run_dir / "results.json", results)
    logger.info("Results: %s", results)
    return results
