"""The training loop: strong-baseline re-ID training with the framework's optional parts (method.md 3.5-4).

One :class:`Trainer` owns a run folder::

    config.yaml    the resolved config          train.log      log of rank 0
    metrics.jsonl  a record per epoch (and      last.pt        every solver.checkpoint_period epochs
                   per solver.log_period steps)
    best.pt        best test mAP so far         results.json   final evaluation

Per step: the adversary's training progress ``p = global_step / total_steps`` goes to
``model.set_training_progress(p)`` (the DANN ramp of lambda_p), the forward runs under autocast on CUDA
(bf16, or fp16 with a GradScaler), the criterion runs in float32, gradients are clipped (solver.grad_clip)
and the learning rate follows :class:`reid.engine.optim.WarmupLRSchedule` per iteration.

``results.json`` reports the **final** model (the last epoch), which is the honest figure; ``best.pt``
is selected on the test split, as the usual re-ID code bases do; its mAP is reported as ``best_mAP``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from reid.config import save_config
from reid.data import ReIDDataset, build_dataset
from reid.data.datasets.registry import NAME_PARSING_READERS
from reid.data.loaders import build_train_loader
from reid.data.torch_dataset import drop_unreadable
from reid.engine.distributed import (
    DistContext,
    all_gather_objects,
    all_ranks_agree,
    average_gradients,
    barrier,
    broadcast_parameters,
    parameter_checksum,
    unwrap_model,
)
from reid.engine.evaluate import evaluate_unseen_and_seen
from reid.engine.metrics_log import MetricsLog
from reid.engine.optim import (
    WarmupLRSchedule,
    build_loss_optimizer,
    build_optimizer,
)
from reid.engine.resume import check_resume_config, load_checkpoint, save_checkpoint
from reid.engine.seeding import capture_rng_state, restore_rng_state, seed_everything
from reid.losses import build_criterion
from reid.models import build_model
from reid.models.checkpoint import load_model_weights
from reid.utils.io import atomic_write_json, remove_leftover_temporaries

logger = logging.getLogger(__name__)

# A loss this many times the first step's marks a diverged run (the learning rate is far too high): a healthy
# run's loss falls from its first value, and 4e13 from a start near 10 is not a schedule's bump.
DIVERGENCE_FACTOR = 1e3


class TrainingDivergedError(FloatingPointError):
    """The loss became non-finite or exploded; raised before the step that would apply it."""


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``solver.amp`` on ``device`` (None = fp32; the CPU always trains in fp32)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"solver.amp must be one of auto, bf16, fp16, off; got {amp!r}")


def _to_float32(value: Any) -> Any:
    """Cast the model's outputs to fp32 so the losses never run in reduced precision."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def load_dataset(cfg: dict[str, Any]) -> ReIDDataset:
    """The dataset named by ``cfg.data`` (the synthetic one is generated under data.root when missing).

    ``data.synthetic``, ``data.custom`` and ``data.cuhk03`` hold the options of those readers; ``data.strict``
    goes to the readers that parse labels out of file names. With ``data.skip_corrupt`` unreadable query and
    gallery images are left out here, once, for every evaluation (training images: by the train loader,
    which counts them)."""
    data_cfg = cfg["data"]
    reader_options = ("synthetic", "custom", "cuhk03")
    kwargs = dict(data_cfg.get(data_cfg["name"]) or {}) if data_cfg["name"] in reader_options else {}
    if data_cfg["name"] in NAME_PARSING_READERS:
        kwargs["strict"] = data_cfg.get("strict", True)
    dataset = build_dataset(data_cfg["name"], data_cfg["root"], **kwargs)
    if data_cfg.get("skip_corrupt", False):
        dataset.query = drop_unreadable(dataset.query)[0]
        dataset.gallery = drop_unreadable(dataset.gallery)[0]
    return dataset


@contextlib.contextmanager
def run_log_file(run_dir: Path, enabled: bool):
    """Mirror every log record of the run into ``run_dir/train.log`` (rank 0 only)."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


class Trainer:
    """Trains one config into one run folder; :meth:`fit` returns the final results dict.

    ``resume`` is a checkpoint path (typically ``run_dir/last.pt``); training continues after its epoch with
    the optimizer, schedule, scaler and RNG states restored, so on CPU the result equals an uninterrupted run.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        run_dir: str | Path,
        *,
        dist_ctx: DistContext | None = None,
        resume: str | Path | None = None,
        force_resume: bool = False,
        dataset: ReIDDataset | None = None,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ctx = dist_ctx or DistContext(
            device=torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.device = self.ctx.device
        self.resume_path = Path(resume) if resume is not None else None
        self.force_resume = force_resume
        self.solver = cfg["solver"]
        seed_everything(int(cfg["seed"]) + self.ctx.rank)

        if dataset is None:
            # Rank 0 first: a synthetic dataset is generated on first use and must not be written twice.
            if self.ctx.is_main:
                dataset = load_dataset(cfg)
            barrier(self.ctx)
            if dataset is None:
                dataset = load_dataset(cfg)
        self.dataset = dataset
        self.num_classes = self.dataset.num_train_pids
        self.train_loader = build_train_loader(
            cfg, self.dataset.train, rank=self.ctx.rank, world_size=self.ctx.world_size, seed=int(cfg["seed"])
        )
        self.iters_per_epoch = len(self.train_loader)
        cap = self.solver["max_iters_per_epoch"]
        if cap is not None:
            self.iters_per_epoch = min(self.iters_per_epoch, int(cap))
        if self.iters_per_epoch < 1:
            raise ValueError(
                "The training loader yields no batch; check data.ids_per_batch and the train split"
            )
        self.epochs = int(self.solver["epochs"])
        self.total_steps = self.epochs * self.iters_per_epoch

        self.model = build_model(cfg["model"], self.num_classes).to(self.device)
        self.channels_last = bool(self.solver["channels_last"])
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = build_criterion(cfg["loss"], self.num_classes, self.model.feature_dim).to(
            self.device
        )
        # Seeds differ per rank (augmentation), so loss parameters (centres) start from rank 0's values.
        broadcast_parameters(self.criterion.parameters(), self.ctx)
        self.optimizer = build_optimizer(self.model, self.solver)
        self.loss_optimizer = build_loss_optimizer(self.criterion, cfg["loss"])
        self.scheduler = WarmupLRSchedule(self.optimizer, self.solver, self.iters_per_epoch)
        self.amp_dtype = resolve_amp_dtype(str(self.solver["amp"]), self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self._first_loss: torch.Tensor | None = None
        if self.resume_path is not None:
            self._restore(self.resume_path)

        self.train_model: nn.Module = self.model
        if self.ctx.is_distributed:
            # The model knows which of its trainable parts the configured losses leave without a gradient.
            weights = {name: float(term["weight"]) for name, term in cfg["loss"].items()}
            find_unused = bool(self.model.modules_without_gradient(weights))
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=find_unused
            )
        self.metrics = MetricsLog(self.run_dir, enabled=self.ctx.is_main)

    # ---- checkpoints
    def _checkpoint_state(self) -> dict[str, Any]:
        rng_states = all_gather_objects(capture_rng_state(), self.ctx)
        return {
            "model": unwrap_model(self.model).state_dict(),
            "config": self.cfg,
            "num_classes": self.num_classes,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "loss_optimizer": self.loss_optimizer.state_dict() if self.loss_optimizer is not None else None,
            "criterion": self.criterion.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "rng_states": rng_states,
            "world_size": self.ctx.world_size,
        }

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")  # RNG states must stay CPU tensors
        check_resume_config(state["config"], self.cfg, path, force=self.force_resume)
        load_model_weights(self.model, state["model"], strict_retrieval=False)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.loss_optimizer is not None and state.get("loss_optimizer") is not None:
            self.loss_optimizer.load_state_dict(state["loss_optimizer"])
        self.criterion.load_state_dict(state["criterion"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        rng_states = state["rng_states"]
        if int(state.get("world_size", 1)) == self.ctx.world_size:
            restore_rng_state(rng_states[self.ctx.rank])
        else:
            logger.warning(
                "Checkpoint was written by %s ranks, now %d: RNG streams reseeded, resumption not bit-exact",
                state.get("world_size"),
                self.ctx.world_size,
            )
            seed_everything(int(self.cfg["seed"]) + self.ctx.rank + 1000 * self.epoch)

    def _save(self, name: str) -> None:
        state = self._checkpoint_state()  # collective: every rank takes part
        if self.ctx.is_main:
            save_checkpoint(state, self.run_dir / name)

    # ---- training
    def _train_epoch(self) -> dict[str, float]:
        self.train_model.train()
        self.criterion.train()
        self.train_loader.batch_sampler.set_epoch(self.epoch)
        sums: dict[str, float] = defaultdict(float)
        num_images = 0
        start = time.perf_counter()
        progress = tqdm(
            total=self.iters_per_epoch,
            desc=f"epoch {self.epoch + 1}/{self.epochs}",
            disable=not self.ctx.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        log_period = int(self.solver["log_period"])
        window: dict[str, float] = defaultdict(float)
        for batch_index, batch in enumerate(self.train_loader):
            if batch_index >= self.iters_per_epoch:
                break
            logs = self.train_step(batch["images"], batch["pids"])
            num_images += batch["images"].shape[0]
            for key, value in logs.items():
                sums[key] += float(value)
                window[key] += float(value)
            if log_period > 0 and (batch_index + 1) % log_period == 0:
                if self.ctx.is_main:
                    means = {key: value / log_period for key, value in window.items()}
                    partial = {"epoch": self.epoch + 1, "step": self.global_step, "partial": True, **means}
                    self.metrics.log(partial, step=self.global_step)
                window.clear()
            progress.update(1)
            progress.set_postfix(loss=f"{sums['loss_total'] / (batch_index + 1):.3f}", lr=f"{self._lr():.2e}")
        progress.close()
        elapsed = time.perf_counter() - start
        steps = max(self.iters_per_epoch, 1)
        record = {key: value / steps for key, value in sums.items()}
        record.update(
            lr=self._lr(), epoch_time_s=elapsed, images_per_s=num_images * self.ctx.world_size / elapsed
        )
        return record

    def train_step(self, images: torch.Tensor, pids: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch (also used by tools/benchmark_train.py); returns the loss logs."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pids = pids.to(self.device, non_blocking=True)
        unwrap_model(self.train_model).set_training_progress(self.global_step / self.total_steps)
        autocast_dtype = self.amp_dtype or torch.float32
        with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=self.amp_dtype is not None):
            outputs = self.train_model(images)
        loss, logs = self.criterion(_to_float32(outputs), pids)
        self._check_divergence(loss)
        self._optimize(loss)
        self.global_step += 1
        return logs

    def _check_divergence(self, loss: torch.Tensor) -> None:
        """Stop before a step on a diverged loss: not finite, or ``DIVERGENCE_FACTOR`` times the first
        step's loss of this process (a healthy run only goes down from there). Every rank stops together."""
        value = loss.detach().float()
        first = self._first_loss if self._first_loss is not None else value
        healthy = torch.isfinite(value) & (value <= DIVERGENCE_FACTOR * first.abs())
        if all_ranks_agree(healthy, self.ctx):
            if self._first_loss is None:
                self._first_loss = value
            return
        shown = float(value)
        why = "is not finite" if not math.isfinite(shown) else (
            f"is {shown / float(first):.3g} times the first step's {float(first):.3g}")
        raise TrainingDivergedError(
            f"training diverged at epoch {self.epoch + 1}, step {self.global_step + 1}: the loss {shown:.4g} "
            f"{why} (on this or another rank); lower solver.base_lr (now {self.solver['base_lr']:g}) or add "
            "warm-up (solver.warmup_epochs). No checkpoint was written from the diverged state."
        )

    def _optimize(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.loss_optimizer is not None:
            self.loss_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        clip = float(self.solver["grad_clip"])
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        if self.loss_optimizer is not None:
            centres = [p for g in self.loss_optimizer.param_groups for p in g["params"]]
            average_gradients(centres, self.ctx)
            self.scaler.step(self.loss_optimizer)  # CenterLoss already undoes its weight on the centres

        self.scaler.update()
        self.scheduler.step()

    def _lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # ---- evaluation
    def evaluate(self) -> dict[str, float]:
        """Test-split figures (unseen identities) plus train-identity figures (over-fitting), on rank 0."""
        readable = self.train_loader.dataset.records  # without files data.skip_corrupt left out
        return evaluate_unseen_and_seen(
            unwrap_model(self.model), self.dataset.query, self.dataset.gallery, readable, self.cfg,
            device=self.device,
        )

    def _should_evaluate(self) -> bool:
        period = int(self.cfg["test"]["eval_period"])
        return self.epoch == self.epochs or (period > 0 and self.epoch % period == 0)

    def _check_ranks_in_sync(self) -> bool:
        """All-gather per-tensor parameter checksums; DDP replicas that drifted apart are a bug, so raise."""
        checksums = all_gather_objects(parameter_checksum(self.model), self.ctx)
        drifted = [rank for rank, c in enumerate(checksums) if not torch.equal(c, checksums[0])]
        if drifted:
            raise RuntimeError(f"DDP replicas diverged: parameters of rank(s) {drifted} differ from rank 0")
        return True

    # ---- fit
    def fit(self) -> dict[str, Any]:
        """Train up to ``solver.epochs``; returns (and on rank 0 writes) ``results.json``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with run_log_file(self.run_dir, self.ctx.is_main):
            if self.ctx.is_main:
                remove_leftover_temporaries(self.run_dir)  # e.g. a .last.pt.*.tmp of a killed save
                save_config(self.cfg, self.run_dir / "config.yaml")
                self.metrics.truncate_after(self.epoch)
                logger.info("Dataset %s\n%s", self.dataset.name, self.dataset.summary())
                if self.resume_path is not None:
                    logger.info(
                        "Resumed from %s after epoch %d (step %d)",
                        self.resume_path,
                        self.epoch,
                        self.global_step,
                    )
                logger.info(
                    "Training %s for %d epochs x %d iterations on %s (world size %d, amp %s)",
                    self.run_dir,
                    self.epochs,
                    self.iters_per_epoch,
                    self.device,
                    self.ctx.world_size,
                    self.amp_dtype,
                )
            start = time.perf_counter()
            first_epoch = self.epoch
            final: dict[str, Any] = {}
            while self.epoch < self.epochs:
                try:
                    record = self._train_epoch()
                except TrainingDivergedError as exc:
                    logger.error("%s", exc)  # into train.log too, before the tool reports it
                    raise
                self.epoch += 1
                record = {"epoch": self.epoch, "step": self.global_step, **record}
                improved = False
                if self._should_evaluate():
                    if self.ctx.is_main:
                        final = self.evaluate()
                        record.update(final)
                        improved = final["mAP"] > self.best_metric
                        if improved:
                            self.best_metric, self.best_epoch = final["mAP"], self.epoch
                    barrier(self.ctx)
                    improved = all_gather_objects(improved, self.ctx)[0]
                if self.ctx.is_main:
                    elapsed = time.perf_counter() - start
                    remaining = elapsed / (self.epoch - first_epoch) * (self.epochs - self.epoch)
                    logger.info("epoch %d/%d: %s (elapsed %s, ETA %s)", self.epoch, self.epochs,
                                _format_record(record), _clock(elapsed), _clock(remaining))
                    self.metrics.log(record, step=self.global_step)
                period = int(self.solver["checkpoint_period"])
                # best.pt first: last.pt already records the new best, so a crash in between must not
                # leave a resumable last.pt whose best.pt is stale.
                if improved:
                    self._save("best.pt")
                if self.epoch == self.epochs or (period > 0 and self.epoch % period == 0):
                    self._save("last.pt")
                barrier(self.ctx)
            if not final and self.ctx.is_main:  # resumed after the last epoch: evaluate what was trained
                final = self.evaluate()
            results = {
                **final,
                "best_mAP": self.best_metric,
                "best_epoch": self.best_epoch,
                "epochs": self.epochs,
                "elapsed_s": time.perf_counter() - start,
                "skipped_train_images": self.train_loader.dataset.num_skipped,
            }
            if self.ctx.is_distributed:
                results.update(world_size=self.ctx.world_size, ranks_in_sync=self._check_ranks_in_sync())
            if self.ctx.is_main:
                atomic_write_json(self.run_dir / "results.json", results)
                logger.info("Final: %s", _format_record(results))
            self.metrics.close()
            barrier(self.ctx)
        return results


def _clock(seconds: float) -> str:
    """``h:mm:ss`` for progress lines."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _format_record(record: dict[str, Any]) -> str:
    parts = []
    for key, value in record.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key}={value}")
    return " ".join(parts)
