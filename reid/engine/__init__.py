"""Training engine: the trainer, optimizers and schedules, checkpoints with exact resume, feature extraction,
DistributedDataParallel plumbing, metrics logging and seeding."""

from reid.engine.distributed import DistContext, init_distributed
from reid.engine.evaluate import evaluate_model, seen_identity_split
from reid.engine.launch import compose_config, evaluate_checkpoint, train
from reid.engine.metrics_log import MetricsLog, read_metrics
from reid.engine.optim import WarmupLRSchedule, build_loss_optimizer, build_optimizer
from reid.engine.resume import ResumeConfigError, config_differences, load_checkpoint, save_checkpoint
from reid.engine.seeding import capture_rng_state, restore_rng_state, seed_everything
from reid.engine.trainer import Trainer
from reid.extraction import extract_features

__all__ = [
    "DistContext",
    "MetricsLog",
    "ResumeConfigError",
    "Trainer",
    "WarmupLRSchedule",
    "build_loss_optimizer",
    "build_optimizer",
    "capture_rng_state",
    "compose_config",
    "config_differences",
    "evaluate_checkpoint",
    "evaluate_model",
    "extract_features",
    "init_distributed",
    "load_checkpoint",
    "read_metrics",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "train",
    "seen_identity_split",
]
