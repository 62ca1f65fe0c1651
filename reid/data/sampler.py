"""P x K identity-balanced batch sampling for metric learning.

Triplet-style losses need every batch to hold several images of each identity it contains, so each
batch is P distinct identities x K images each. An epoch plan is a pure function of (seed, epoch):
every DDP rank builds the same plan and takes every ``world_size``-th batch, which makes rank shares
disjoint and equally long without any communication.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of ``ids_per_batch * num_instances`` dataset indices.

    Per epoch, each identity's images are shuffled and cut into chunks of K (the remainder, different each
    epoch, is left out); an identity with fewer than K images contributes one chunk holding all its images
    topped up by sampling with replacement. Batches draw P identities at a time, weighted by how many chunks
    they have left, so long identities are spread over the epoch. The epoch therefore covers roughly every
    image once. When ``num_instances >= 2``, identities with a single image are dropped (with a warning):
    they cannot supply a triplet positive. Call ``set_epoch`` before each epoch.
    """

    def __init__(
        self,
        pids: Sequence[int],
        ids_per_batch: int,
        num_instances: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if ids_per_batch < 1 or num_instances < 1:
            raise ValueError(
                "PKSampler needs ids_per_batch >= 1 and num_instances >= 1, "
                f"got {ids_per_batch} and {num_instances}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"PKSampler: rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
            )
        if len(pids) == 0:
            raise ValueError("PKSampler: the training split is empty; check data.root and the dataset layout")
        self.ids_per_batch = ids_per_batch
        self.num_instances = num_instances
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

        labels = np.asarray(pids, dtype=np.int64)
        order = np.argsort(labels, kind="stable")
        unique_pids, starts = np.unique(labels[order], return_index=True)
        groups = np.split(order, starts[1:])
        if num_instances >= 2:
            singletons = [int(pid) for pid, g in zip(unique_pids, groups, strict=True) if len(g) < 2]
            if singletons:
                logger.warning(
                    "PKSampler: dropping %d identities with a single image (they cannot form triplet "
                    "positives), e.g. pids %s",
                    len(singletons),
                    singletons[:10],
                )
            groups = [g for g in groups if len(g) >= 2]
        self.dropped_pids_count = len(unique_pids) - len(groups)
        self._groups = groups
        if len(groups) < ids_per_batch:
            raise ValueError(
                f"PKSampler: only {len(groups)} identities are usable (with >= 2 images) but ids_per_batch "
                f"(P) is {ids_per_batch}; set data.ids_per_batch <= {len(groups)}"
            )
        chunks_per_epoch = sum(max(1, len(g) // num_instances) for g in groups)
        self._batches_per_rank = chunks_per_epoch // ids_per_batch // world_size
        if self._batches_per_rank == 0:
            raise ValueError(
                f"PKSampler: an epoch holds only {chunks_per_epoch // ids_per_batch} batches of "
                f"{ids_per_batch}x{num_instances}, fewer than world_size={world_size}; use fewer processes "
                "or a smaller data.ids_per_batch"
            )
        logger.info(
            "PKSampler: %d identities, %d x %d per batch, %d batches per epoch per rank (%d ranks)",
            len(groups),
            ids_per_batch,
            num_instances,
            self._batches_per_rank,
            world_size,
        )

    @property
    def num_identities(self) -> int:
        """Identities taking part in sampling (after dropping singletons)."""
        return len(self._groups)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch plan; all ranks must use the same epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self._batches_per_rank

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.epoch_plan(self.epoch)
        yield from plan[self.rank :: self.world_size]

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of ``epoch`` in order; rank r takes batches r, r + world_size, ..."""
        rng = np.random.default_rng([self.seed, epoch])
        k = self.num_instances
        chunks: list[list[np.ndarray]] = []
        for group in self._groups:
            if len(group) < k:
                chunks.append([_draw_chunk(group, k, rng)])
            else:
                shuffled = rng.permutation(group)
                chunks.append([shuffled[i * k : (i + 1) * k] for i in range(len(group) // k)])
        remaining = np.array([len(c) for c in chunks], dtype=np.int64)
        batches = []
        for _ in range(self._batches_per_rank * self.world_size):
            chosen = self._choose_identities(remaining, rng)
            batch = []
            for identity in chosen:
                if remaining[identity] > 0:
                    remaining[identity] -= 1
                    batch.append(chunks[identity][remaining[identity]])
                else:
                    batch.append(_draw_chunk(self._groups[identity], k, rng))
            batches.append(np.concatenate(batch).tolist())
        return batches

    def _choose_identities(self, remaining: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """P distinct identities, weighted by chunks left; exhausted ones fill in if too few remain."""
        available = np.flatnonzero(remaining)
        p = self.ids_per_batch
        if len(available) >= p:
            weights = remaining[available] / remaining[available].sum()
            return rng.choice(available, size=p, replace=False, p=weights)
        exhausted = np.flatnonzero(remaining == 0)
        return np.concatenate([available, rng.choice(exhausted, size=p - len(available), replace=False)])


def _draw_chunk(group: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K images of one identity: distinct when possible, else all of them plus repeats drawn at random."""
    if len(group) >= k:
        return rng.choice(group, size=k, replace=False)
    return np.concatenate([rng.permutation(group), rng.choice(group, size=k - len(group), replace=True)])
