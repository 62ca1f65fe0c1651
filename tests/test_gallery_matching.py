"""Identity assignment against a slow, obviously-correct reference: prototypes, threshold, co-visibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reid.gallery import CropEntry, GalleryStore
from reid.gallery.matching import DISTINCTIVENESS_RATIO, IdentityBank

DIM = 16


class ReferenceMatcher:
    """Plain-Python restatement of the documented rule, one identity at a time."""

    def __init__(self, metric: str, threshold: float) -> None:
        self.metric, self.threshold = metric, threshold
        self.tracks: dict[
            int, list[list[float]]
        ] = {}  # identity -> its track features (normalised if cosine)
        self.spans: list[tuple[int, int, int, int]] = []  # (video, first, last, identity)
        self.blocked = 0  # tracks whose nearest identity was within the threshold but on screen with them

    def _prepare(self, v: list[float]) -> list[float]:
        if self.metric == "euclidean":
            return list(v)
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    def _distance(self, v: list[float], identity: int) -> float:
        members = self.tracks[identity]
        mean = [sum(col) / len(members) for col in zip(*members, strict=True)]
        if self.metric == "euclidean":
            return sum((a - b) ** 2 for a, b in zip(v, mean, strict=True))
        a, b = self._prepare(v), self._prepare(mean)
        return 1.0 - sum(x * y for x, y in zip(a, b, strict=True))

    def decide(self, feature: list[float], busy: set[int]) -> tuple[int | None, float | None]:
        """(identity or None, distance to the nearest admissible identity or None): the nearest admissible
        identity, if within the threshold and nearer than ratio**2 times every other identity."""
        options = [(self._distance(feature, i), i) for i in sorted(self.tracks) if i not in busy]
        if not options:
            return None, None
        best = min(options)
        others = [self._distance(feature, i) for i in self.tracks if i != best[1]]
        distinct = all(best[0] <= DISTINCTIVENESS_RATIO**2 * d for d in others)
        return (best[1] if best[0] <= self.threshold and distinct else None), best[0]

    def add(self, feature: list[float], video: int, first: int, last: int) -> int:
        busy = {i for (vid, f, l, i) in self.spans if vid == video and f <= last and l >= first}
        chosen, _ = self.decide(feature, busy)
        nearest_any = min((self._distance(feature, i), i) for i in self.tracks) if self.tracks else None
        self.blocked += (
            nearest_any is not None and nearest_any[0] <= self.threshold and nearest_any[1] in busy
        )
        if chosen is not None:
            identity = chosen
        else:
            identity = len(self.tracks) + 1
            self.tracks[identity] = []
        self.tracks[identity].append(self._prepare(feature))
        self.spans.append((video, first, last, identity))
        return identity


@pytest.mark.parametrize("metric, threshold", [("cosine", 0.25), ("euclidean", 1.2)])
def test_bank_agrees_with_reference(metric, threshold):
    rng = np.random.default_rng(0)
    people = rng.normal(size=(6, DIM))
    bank, ref = IdentityBank(DIM, metric), ReferenceMatcher(metric, threshold)
    next_id = 1
    rejected_as_ambiguous = 0
    for _ in range(150):
        feature = people[rng.integers(6)] + 0.35 * rng.normal(size=DIM)  # noisy enough to create close calls
        excluded = set(rng.choice(np.arange(1, next_id + 1), size=min(2, next_id), replace=False).tolist())
        decision = bank.match(feature, threshold, excluded)
        expected_identity, expected_distance = ref.decide(feature.tolist(), excluded)
        assert decision.identity_id == expected_identity
        if expected_distance is None:
            assert decision.distance is None
        else:
            assert decision.distance == pytest.approx(expected_distance, abs=1e-4)
        rejected_as_ambiguous += (
            expected_identity is None and expected_distance is not None and expected_distance <= threshold
        )
        identity = decision.identity_id
        if identity is None:
            identity, next_id = next_id, next_id + 1
            ref.tracks[identity] = []
        bank.set(identity, *bank.updated_sum(decision.identity_id, feature))
        ref.tracks[identity].append(ref._prepare(feature.tolist()))
    assert len(bank) == len(ref.tracks)
    assert rejected_as_ambiguous > 0  # the ratio test did real work


def test_ratio_test_counts_lookalikes_on_screen_with_the_track():
    bank = IdentityBank(2, "euclidean")
    bank.set(1, np.array([0.0, 0.0]), 1)
    bank.set(2, np.array([1.0, 0.0]), 1)
    halfway, near_one = np.array([0.45, 0.0]), np.array([0.1, 0.0])
    assert bank.match(halfway, threshold=1.0).identity_id is None  # 0.2025 vs 0.3025: not distinct
    assert bank.match(near_one, threshold=1.0).identity_id == 1  # 0.01 vs 0.81
    assert bank.match(near_one, threshold=1.0, max_ratio=1.0).identity_id == 1
    # Identity 2 cannot be this track's person (excluded, e.g. on screen with it) but it still counts as a
    # look-alike: the match to identity 1 is only as distinct as the nearest other person allows.
    decision = bank.match(halfway, threshold=1.0, excluded=[2])
    assert decision.identity_id is None and decision.second_distance == pytest.approx(0.3025)
    assert bank.match(halfway, threshold=1.0, excluded=[2], max_ratio=1.0).identity_id == 1


def test_store_assignments_agree_with_reference_including_covisibility(tmp_path):
    rng = np.random.default_rng(1)
    people = rng.normal(size=(5, DIM))
    threshold = 0.3
    ref = ReferenceMatcher("cosine", threshold)
    crop_image = np.zeros((16, 8, 3), np.uint8)
    with GalleryStore.open(
        tmp_path / "g", model_name="m", feature_dim=DIM, match_threshold=threshold
    ) as store:
        videos = [
            store.register_video(f"v{c}.avi", camera_id=c, fps=25.0, num_frames=None, width=64, height=64)
            for c in range(2)
        ]
        for t in range(80):
            camera = int(rng.integers(2))
            first = int(rng.integers(0, 400))
            last = first + int(rng.integers(0, 60))
            feature = people[rng.integers(5)] + 0.2 * rng.normal(size=DIM)
            crop = CropEntry(crop_image, first, first / 25, (0.0, 0.0, 8.0, 16.0), 1.0, 1.0, feature)
            result = store.add_track(videos[camera], camera, t, [crop], feature, last_frame=last)
            assert result.identity_id == ref.add(feature.tolist(), videos[camera], first, last)
        assert store.num_identities == len(ref.tracks)
    # The rule did real work: some tracks were kept apart only because they were on screen together.
    assert ref.blocked > 0
