"""Identity assignment against a slow, obviously-correct reference: prototypes, threshold, co-visibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reid.gallery import CropEntry, GalleryStore
from reid.gallery.matching import IdentityBank

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

    def add(self, feature: list[float], video: int, first: int, last: int) -> int:
        busy = {i for (vid, f, l, i) in self.spans if vid == video and f <= last and l >= first}
        options = [(self._distance(feature, i), i) for i in sorted(self.tracks) if i not in busy]
        best = min(options, default=None)
        nearest_any = min((self._distance(feature, i), i) for i in self.tracks) if self.tracks else None
        self.blocked += (
            nearest_any is not None and nearest_any[0] <= self.threshold and nearest_any[1] in busy
        )
        if best is not None and best[0] <= self.threshold:
            identity = best[1]
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
    for _ in range(150):
        feature = people[rng.integers(6)] + 0.35 * rng.normal(size=DIM)  # noisy enough to create close calls
        excluded = set(rng.choice(np.arange(1, next_id + 1), size=min(2, next_id), replace=False).tolist())
        decision = bank.match(feature, threshold, excluded)
        options = [(ref._distance(feature.tolist(), i), i) for i in sorted(ref.tracks) if i not in excluded]
        expected = min(options, default=None)
        if expected is None:
            assert decision.distance is None and decision.identity_id is None
        else:
            assert decision.distance == pytest.approx(expected[0], abs=1e-4)
            assert decision.identity_id == (expected[1] if expected[0] <= threshold else None)
        identity = decision.identity_id
        if identity is None:
            identity, next_id = next_id, next_id + 1
            ref.tracks[identity] = []
        bank.set(identity, *bank.updated_sum(decision.identity_id, feature))
        ref.tracks[identity].append(ref._prepare(feature.tolist()))
    assert len(bank) == len(ref.tracks)


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
