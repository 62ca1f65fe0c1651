"""Per-track evidence for the gallery: the best crops seen so far and the track-level feature built from them.

Observations are the gallery's own ``CropEntry`` records, so the best ones go to ``add_track`` as they are.

Only the ``capacity`` highest-quality observations are kept (crops are copied, so frames can be released).
The track feature is the quality-weighted mean of their features, L2-normalised: good crops dominate, and
averaging over several views smooths out pose and occlusion, as the gallery compares whole tracks.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from reid.gallery import CropEntry


@dataclass
class TrackEvidence:
    capacity: int = 8
    _heap: list[tuple[float, int, CropEntry]] = field(default_factory=list)
    _counter: itertools.count = field(default_factory=itertools.count)

    def offer(self, observation: CropEntry) -> None:
        """Keep the observation if it is among the ``capacity`` best so far (ties: the earlier one stays)."""
        item = (observation.quality, -next(self._counter), observation)
        if len(self._heap) < self.capacity:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def __len__(self) -> int:
        return len(self._heap)

    def best(self, count: int | None = None) -> list[CropEntry]:
        """Kept observations, best first."""
        ranked = [obs for _, _, obs in sorted(self._heap, key=lambda item: item[:2], reverse=True)]
        return ranked if count is None else ranked[:count]

    def track_feature(self) -> np.ndarray:
        """Quality-weighted mean of the kept features, L2-normalised (plain mean if all qualities are 0)."""
        kept = self.best()
        if not kept:
            raise ValueError("a track without observations has no feature")
        features = np.stack([obs.feature for obs in kept]).astype(np.float64)
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        weights = np.array([obs.quality for obs in kept], dtype=np.float64)
        if weights.sum() <= 0:
            weights = np.ones_like(weights)
        mean = (weights[:, None] * features).sum(axis=0) / weights.sum()
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
