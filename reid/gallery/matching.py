"""Identity assignment: which known person, if any, a new track shows.

Each identity keeps a prototype: the mean of its tracks' features (each L2-normalised first under the cosine
metric, and the mean normalised again). A track joins the nearest *admissible* identity when the distance to
its prototype is at most the match threshold, otherwise it founds a new identity.

Why prototypes rather than the nearest stored entry: a single-linkage rule (min over entries) chains people
together - one ambiguous crop links two identities for good - while a mean over tracks averages out pose and
lighting, and costs one vector per identity.

Distinct: the nearest admissible identity must also be clearly nearer than the second nearest - Lowe's
ratio test (Lowe, "Distinctive image features from scale-invariant keypoints", IJCV 2004: accept the nearest
neighbour only if its Euclidean distance is below 0.8 times the second's). A track halfway between two people
is not evidence for either, and a wrong merge costs both identities their precision while a missed one costs
a fragment. The second nearest is taken over *all* other identities, including those on screen with the
track: they are certainly other people, so one that looks as close as the candidate shows that this
closeness is no evidence of identity. Both metrics of the gallery are squared distances (squared Euclidean;
cosine distance is half the squared Euclidean distance of the normalised vectors), so the test compares them
with ratio 0.8**2.

Admissible: an identity that already has a track in the same video overlapping the new track in time is
excluded, because two boxes in one frame are two people. This is what lets the tracker's split fragments of
one person merge (same video, disjoint in time, similar look) without ever merging two people walking side
by side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from reid.gallery.metric import pairwise_distances, prepare

DISTINCTIVENESS_RATIO = 0.8
"""Largest ratio of nearest to second-nearest (unsquared) distance at which a match is accepted."""


@dataclass(frozen=True)
class MatchDecision:
    """``identity_id`` is None when the track founds a new identity; ``distance`` is to the nearest admissible
    identity (None when there was none), so callers can log how close a rejected match came;
    ``second_distance`` to the nearest other identity, admissible or not (None when there was none)."""

    identity_id: int | None
    distance: float | None
    second_distance: float | None = None


class IdentityBank:
    """Prototypes of all identities, kept in memory and mirrored in the database's ``identities`` table."""

    def __init__(self, feature_dim: int, metric: str) -> None:
        self.feature_dim = feature_dim
        self.metric = metric
        self._ids: list[int] = []
        self._row: dict[int, int] = {}
        self._sums = np.zeros((0, feature_dim), dtype=np.float64)
        self._counts = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def set(self, identity_id: int, feature_sum: np.ndarray, num_tracks: int) -> None:
        """Insert or overwrite an identity's running sum (call only after the database commit succeeded)."""
        feature_sum = np.asarray(feature_sum, dtype=np.float64).reshape(1, self.feature_dim)
        row = self._row.get(identity_id)
        if row is None:
            self._row[identity_id] = len(self._ids)
            self._ids.append(identity_id)
            self._sums = np.vstack([self._sums, feature_sum])
            self._counts = np.append(self._counts, num_tracks)
        else:
            self._sums[row] = feature_sum[0]
            self._counts[row] = num_tracks

    def updated_sum(self, identity_id: int | None, track_feature: np.ndarray) -> tuple[np.ndarray, int]:
        """The running sum and track count an identity would have after adding this track (no mutation)."""
        contribution = prepare(track_feature.reshape(1, -1), self.metric)[0].astype(np.float64)
        if identity_id is None:
            return contribution, 1
        row = self._row[identity_id]
        return self._sums[row] + contribution, int(self._counts[row]) + 1

    def prototypes(self) -> np.ndarray:
        means = self._sums / np.maximum(self._counts, 1)[:, None]
        return prepare(means.astype(np.float32), self.metric)

    def match(
        self, track_feature: np.ndarray, threshold: float, excluded: Iterable[int] = (),
        max_ratio: float = DISTINCTIVENESS_RATIO,
    ) -> MatchDecision:
        """Nearest admissible identity if within ``threshold`` (distance <= threshold matches) and distinct:
        its distance at most ``max_ratio**2`` times that of the nearest other identity, admissible or not
        (if there is one)."""
        if not self._ids:
            return MatchDecision(None, None)
        dist = pairwise_distances(track_feature.reshape(1, -1), self.prototypes(), self.metric)[0]
        admissible = np.ones(len(dist), dtype=bool)
        for identity_id in excluded:
            row = self._row.get(identity_id)
            if row is not None:
                admissible[row] = False
        if not admissible.any():
            return MatchDecision(None, None)
        best = int(np.flatnonzero(admissible)[np.argmin(dist[admissible])])
        best_distance = float(dist[best])
        others = np.delete(dist, best)
        second = float(others.min()) if len(others) else None
        distinct = second is None or best_distance <= max_ratio**2 * second
        if best_distance <= threshold and distinct:
            return MatchDecision(self._ids[best], best_distance, second)
        return MatchDecision(None, best_distance, second)
