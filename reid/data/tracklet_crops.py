"""A re-ID test set from one video's tracks: person crops, identities from track ids, time segments as
cameras.

Why: a second real domain that no model here was trained on (e.g. PETS09-S2L1, ``vtest.avi``) is a fairer test
of generalisation than more CUHK03 identities. One fixed camera has no second view, so the video is cut into
time segments that play the cameras' part: under the standard protocol (same identity + same "camera" removed)
every query must be matched to the same person minutes earlier or later, in another pose and place.

Boxes and identities come from a MOTChallenge file: the public ground truth where one has it, or tracks of
this project's pipeline whose identities were checked by eye on the contact sheet (``merge`` joins track ids
that are one person, ``drop`` removes tracks that mix people). Crops are kept only where the person is
clearly visible: tall enough, not mostly covered by another box, and away from segment boundaries
(``gap``), so that no query has a near-identical neighbour frame in another segment.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from reid.video.mot_io import MotTable
from reid.video.pipeline import crop_boxes
from reid.video.reader import VideoReader


@dataclass(frozen=True)
class TrackCrop:
    """One crop to cut: 0-based video ``frame``, identity ``pid``, 0-based time ``segment``, box x y w h."""

    frame: int
    pid: int
    segment: int
    box: tuple[float, float, float, float]

    def market_name(self) -> str:
        """Market-1501 style file name (``0007_c2s1_000123_00.jpg``: pid, camera = segment + 1, frame), which
        the dataset readers and ``tools/extract_features.py`` parse."""
        return f"{self.pid:04d}_c{self.segment + 1}s1_{self.frame + 1:06d}_00.jpg"


def covered_fraction(boxes: np.ndarray) -> np.ndarray:
    """For each x, y, w, h box: the largest fraction of its area that any single other box covers."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    inter_w = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
    inter_h = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
    covered = inter_w * inter_h / (boxes[:, 2] * boxes[:, 3])[:, None]
    np.fill_diagonal(covered, 0.0)
    return covered.max(axis=1) if len(boxes) else np.zeros(0)


def segment_of(frame: int, num_frames: int, segments: int) -> int:
    """0-based time segment of a frame when ``num_frames`` are cut into ``segments`` equal parts."""
    return min(frame * segments // num_frames, segments - 1)


def select_track_crops(
    table: MotTable,
    *,
    num_frames: int,
    segments: int = 4,
    gap: int = 10,
    every: int = 4,
    min_height: float = 64.0,
    max_covered: float = 0.3,
    merge: Mapping[int, int] | None = None,
    drop: set[int] | frozenset[int] = frozenset(),
) -> list[TrackCrop]:
    """The crops worth keeping from the boxes of ``table`` (ids < 0, e.g. unlabelled detections, are ignored).

    A box is kept when its frame is a multiple of ``every``, it is at least ``min_height`` pixels tall, no
    other box of that frame (of any track, kept or not) covers more than ``max_covered`` of it, and it lies at
    least ``gap`` frames from every segment boundary. ``merge`` maps track ids onto the id they are one person
    with; ``drop`` lists ids (before merging) to leave out.
    """
    if segments < 2:
        raise ValueError(
            f"segments must be at least 2 (a single segment has no second 'camera'), got {segments}"
        )
    if num_frames < segments:
        raise ValueError(f"num_frames ({num_frames}) must be at least segments ({segments})")
    if every < 1 or gap < 0:
        raise ValueError(f"every must be >= 1 and gap >= 0, got every={every}, gap={gap}")
    merge = dict(merge or {})
    boundaries = [k * num_frames / segments for k in range(1, segments)]
    crops = []
    for frame, rows in sorted(table.by_frame().items()):
        if frame % every or frame >= num_frames or any(abs(frame - b) < gap for b in boundaries):
            continue
        covered = covered_fraction(table.boxes[rows])
        for row, cover in zip(rows, covered, strict=True):
            track_id = int(table.ids[row])
            x, y, w, h = (float(v) for v in table.boxes[row])
            if track_id < 0 or track_id in drop or h < min_height or cover > max_covered:
                continue
            pid = merge.get(track_id, track_id)
            crops.append(TrackCrop(frame, pid, segment_of(frame, num_frames, segments), (x, y, w, h)))
    return crops


def query_gallery_split(
    crops: list[TrackCrop], *, queries_per_segment: int = 3
) -> tuple[list[TrackCrop], list[TrackCrop]]:
    """Per identity seen in two or more segments and per segment it is seen in, ``queries_per_segment`` crops
    spread evenly in time are queries and its other crops are gallery; identities seen in one segment only are
    gallery distractors. Several queries per segment make the figures less dependent on one pose."""
    if queries_per_segment < 1:
        raise ValueError(f"queries_per_segment must be at least 1, got {queries_per_segment}")
    by_pid_segment: dict[tuple[int, int], list[TrackCrop]] = defaultdict(list)
    for crop in crops:
        by_pid_segment[crop.pid, crop.segment].append(crop)
    segments_of: dict[int, set[int]] = defaultdict(set)
    for pid, segment in by_pid_segment:
        segments_of[pid].add(segment)
    query, gallery = [], []
    for (pid, _segment), items in sorted(by_pid_segment.items()):
        items = sorted(items, key=lambda c: c.frame)
        if len(segments_of[pid]) < 2:
            gallery.extend(items)
            continue
        count = min(queries_per_segment, len(items))
        picked = {int((i + 0.5) * len(items) / count) for i in range(count)}  # centres of equal time slices
        query.extend(items[i] for i in sorted(picked))
        gallery.extend(item for i, item in enumerate(items) if i not in picked)
    return query, gallery


def cut_crops(video: str, crops: list[TrackCrop]) -> dict[TrackCrop, np.ndarray]:
    """Read the video once, up to the last frame needed, and cut every planned crop (BGR)."""
    wanted: dict[int, list[TrackCrop]] = defaultdict(list)
    for crop in crops:
        wanted[crop.frame].append(crop)
    images: dict[TrackCrop, np.ndarray] = {}
    if not wanted:
        return images
    with VideoReader(video, max_frames=max(wanted) + 1) as reader:
        for frame_index, frame in reader:
            for crop in wanted.get(frame_index, []):
                pieces, keep = crop_boxes(frame, np.asarray([crop.box]))
                if keep[0]:
                    images[crop] = pieces[0].copy()
    return images


@dataclass(frozen=True)
class Tracklet:
    """One confident track as a pseudo-identity: ``label`` (unique over all footage), its ``camera``, the
    tracker's ``track_id``, the frame span of the whole track and the clear crops kept from it."""

    label: int
    camera: int
    track_id: int
    span: tuple[int, int]
    crops: tuple[TrackCrop, ...]


def mine_tracklets(
    table: MotTable,
    *,
    camera: int,
    first_label: int = 0,
    min_crops: int = 8,
    every: int = 2,
    min_height: float = 64.0,
    max_covered: float = 0.3,
) -> list[Tracklet]:
    """Tracks of one camera that are long and clean enough to be one person each (tracklet-supervised
    adaptation, Li, Zhu & Gong, ECCV 2018): at least ``min_crops`` crops that are tall enough and not covered
    by another box (:func:`select_track_crops`, which drops crops where two people overlap, where tracks
    swap). Labels run from ``first_label`` in track-id order."""
    if len(table) == 0:
        return []
    num_frames = int(table.frames.max()) + 1
    crops = select_track_crops(table, num_frames=max(num_frames, 2), segments=2, gap=0, every=every,
                               min_height=min_height, max_covered=max_covered)  # fmt: skip
    by_track: dict[int, list[TrackCrop]] = defaultdict(list)
    for crop in crops:
        by_track[crop.pid].append(crop)
    tracklets = []
    for track_id in sorted(by_track):
        kept = sorted(by_track[track_id], key=lambda c: c.frame)
        if len(kept) < min_crops:
            continue
        frames = table.frames[table.ids == track_id]
        label = first_label + len(tracklets)
        relabelled = tuple(TrackCrop(c.frame, label, 0, c.box) for c in kept)
        span = (int(frames.min()), int(frames.max()))
        tracklets.append(Tracklet(label, camera, track_id, span, relabelled))
    return tracklets


def covisible_pairs(tracklets: list[Tracklet]) -> set[tuple[int, int]]:
    """Label pairs (a < b) of tracklets seen at the same time by the same camera: two people for certain."""
    pairs = set()
    for i, a in enumerate(tracklets):
        for b in tracklets[i + 1 :]:
            if a.camera == b.camera and a.span[0] <= b.span[1] and b.span[0] <= a.span[1]:
                pairs.add((min(a.label, b.label), max(a.label, b.label)))
    return pairs


def covisible_groups(
    labels: list[int], pairs: set[tuple[int, int]], size: int, rng: random.Random
) -> list[int] | None:
    """A random group of up to ``size`` labels that are pairwise co-visible (so every pair is a certain
    negative), grown greedily from a random anchor; None when the anchor has no co-visible partner."""
    neighbours: dict[int, set[int]] = defaultdict(set)
    for a, b in pairs:
        neighbours[a].add(b)
        neighbours[b].add(a)
    anchor = rng.choice(labels)
    group = [anchor]
    candidates = sorted(neighbours[anchor] & set(labels))
    rng.shuffle(candidates)
    for label in candidates:
        if len(group) == size:
            break
        if all(label in neighbours[member] for member in group):
            group.append(label)
    return group if len(group) >= 2 else None
