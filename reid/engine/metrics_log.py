"""Per-epoch metrics: ``metrics.jsonl`` (one JSON object per line, easy to load with pandas or ``json``) and,
when the ``tensorboard`` package is installed, the same scalars in a TensorBoard event file.

Lines are appended and flushed one at a time; a resumed run first rewrites the file (atomically) without the
records of epochs it is about to redo, so the log never holds the same epoch twice.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from pathlib import Path
from typing import Any

from reid.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


def _json_safe(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (an empty list when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no} is not valid JSON: {exc}") from exc
    return records


class MetricsLog:
    """Writer for ``run_dir/metrics.jsonl`` (+ TensorBoard); a disabled instance (non-main ranks) does
    nothing."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.debug("tensorboard not installed; metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs > ``epoch`` (they are about to be recomputed by a resumed run)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("epoch", 0)) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict[str, Any], *, step: int) -> None:
        if not self.enabled:
            return
        record = _json_safe(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
