"""The per-frame loop: read -> detect (every k-th frame) -> embed -> track -> finished tracks to a gallery.

Detection is the expensive step, so it runs on every ``detect_every``-th frame only; the tracker's Kalman
filters carry the boxes in between. Features and crop qualities are computed for detection frames only,
in one batch per frame. A track that ends goes to the gallery with its best crops and its track-level feature
if it was seen often enough to be a person rather than noise; the gallery answers with the identity id used
in ``identities.txt`` and in the annotations. For a live stream that happens as each track ends, under the
gallery threshold capped by the co-visible pairs among the tracks ended so far. A file is
processed offline once it is read: the tracklets are stitched (:mod:`reid.video.stitching`) and the gallery
threshold is capped for this video by its co-visible track pairs (:mod:`reid.video.self_calibration`)
before any track enters the gallery. The tracker's and the stitcher's appearance gates are capped the same
way, by the different people the video shows at the same time (collected as it plays, for the tracker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from reid.gallery import CropEntry, GalleryStore
from reid.video.crop_bank import TrackEvidence
from reid.video.detection import Detections, Detector
from reid.video.embedder import Embedder
from reid.video.quality import QualityConfig, crop_quality
from reid.video.reader import VideoInfo, VideoReader, VideoStallError, frames_in
from reid.video.self_calibration import (
    MIN_COVISIBLE_PAIRS,
    CovisibleNegatives,
    StreamMatchThreshold,
    covisible_distances,
    percentile_cap,
    video_match_threshold,
    warn_uncapped,
)
from reid.video.separability import REACTIVATION_PERCENTILE, VETO_PERCENTILE
from reid.video.stitching import StitchConfig, merge_tracks, stitch_chains
from reid.video.tracking import Track, Tracker, TrackerConfig, TrackerStep, track_rows

logger = logging.getLogger(__name__)

DETECTION_INTERVAL_S = 0.4
"""Default time between two detection frames: 4 frames at 10 fps, 10 at 25 fps. In seconds, so that the
motion between two detections, which the tracker's IoU gate and the confirmation count see, is the same at
any frame rate."""

LiveBoxes = list[tuple[int, np.ndarray]]
"""(track_id, box_xywh) of the confirmed tracks in the current frame."""
FrameCallback = Callable[[int, np.ndarray, LiveBoxes], None]


@dataclass(frozen=True)
class PipelineConfig:
    """``detect_every``: run the detector on every k-th frame (None: every :data:`DETECTION_INTERVAL_S` of
    video, by the video's fps); ``min_track_detections``: matched detections a track needs to enter the
    gallery;
    ``crops_per_track``: crops stored per track; ``evidence_capacity``: best observations averaged into the
    track feature; ``max_interpolation_gap_s``: longest gap (seconds) filled between two detections;
    ``stitch``: offline tracklet stitching for file inputs (None: every track goes to the gallery as it ends,
    as for live streams); ``covisible_max_fpr``: for file inputs, cap the gallery threshold so that at most
    this share of the video's co-visible (different-person) track pairs would match (None: no cap);
    ``calibrate_gates``: cap the tracker's and the stitcher's appearance gates at the same percentiles of this
    video's own different-person distances (:mod:`reid.video.self_calibration`); off for an embedder without
    calibrated gates, which is tracked by motion alone."""

    detect_every: int | None = None
    min_track_detections: int = 5
    crops_per_track: int = 4
    evidence_capacity: int = 8
    max_interpolation_gap_s: float = 3.0
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    stitch: StitchConfig | None = field(default_factory=StitchConfig)
    covisible_max_fpr: float | None = 0.0
    calibrate_gates: bool = True
    quality: QualityConfig = field(default_factory=QualityConfig)

    def __post_init__(self) -> None:
        if self.detect_every is not None and self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if self.crops_per_track < 1 or self.evidence_capacity < self.crops_per_track:
            raise ValueError("need 1 <= crops_per_track <= evidence_capacity")


def detection_stride(config: PipelineConfig, fps: float) -> int:
    """The config's ``detect_every``, else the frames in :data:`DETECTION_INTERVAL_S` at ``fps`` (>= 1)."""
    if config.detect_every is not None:
        return config.detect_every
    return frames_in(DETECTION_INTERVAL_S, fps)


def pipeline_config_for(embedder: Embedder, **overrides) -> PipelineConfig:
    """The pipeline settings with the tracker's and stitcher's appearance gates of ``embedder``.

    An embedder without calibrated thresholds (a checkpoint never run through ``tools/calibrate_threshold.py
    --write-thresholds``) gets motion-only association: appearance never vetoes a match, never re-activates
    a lost track on its own, and does not gate stitching; a warning says how to calibrate it.
    """
    gates = embedder.appearance
    if gates is None:
        logger.warning("%s carries no calibrated appearance thresholds: tracking and stitching use motion "
                       "only (calibrate them with tools/calibrate_threshold.py --dataset-root ... "
                       "--checkpoint ... --write-thresholds)", embedder.model_name)
        tracker, stitch = TrackerConfig(), StitchConfig(appearance_weight=0.0)
        overrides.setdefault("calibrate_gates", False)
    else:
        tracker = TrackerConfig(max_appearance=gates.tracker_veto, reactivate_appearance=gates.reactivation)
        stitch = StitchConfig(max_appearance=gates.stitch)
    return PipelineConfig(tracker=tracker, stitch=stitch, **overrides)


@dataclass(frozen=True)
class FinishedTrack:
    """A track of this run; ``identity_id`` is None when it was too short to enter the gallery."""

    track_id: int
    identity_id: int | None
    is_new_identity: bool
    match_distance: float | None
    rows: list[tuple[int, np.ndarray, float]]
    crop_paths: list[str]


@dataclass
class VideoRunResult:
    info: VideoInfo
    video_id: int
    detect_every: int = 1
    """The detection stride this run used (the config's, or the one derived from the video's fps)."""
    frames_read: int = 0
    seconds: float = 0.0
    detection_frames: int = 0
    detections: int = 0
    tracks: list[FinishedTrack] = field(default_factory=list)
    stopped_by: str | None = None
    """Why reading ended before the source did (Ctrl-C, a stalled stream); None when it simply ended."""

    @property
    def gallery_tracks(self) -> list[FinishedTrack]:
        return [t for t in self.tracks if t.identity_id is not None]


def crop_boxes(frame: np.ndarray, boxes: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Pixel crops of the boxes (rounded, clipped); also the mask of boxes big enough to crop (>= 2x2 px)."""
    height, width = frame.shape[:2]
    crops, keep = [], []
    for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x1, y1 = max(int(round(x)), 0), max(int(round(y)), 0)
        x2, y2 = min(int(round(x + w)), width), min(int(round(y + h)), height)
        ok = x2 - x1 >= 2 and y2 - y1 >= 2
        keep.append(ok)
        if ok:
            crops.append(frame[y1:y2, x1:x2])
    return crops, np.asarray(keep, dtype=bool)


class VideoToGallery:
    """Runs one video through detection, tracking and embedding into ``store`` (an open GalleryStore)."""

    def __init__(self, detector: Detector, embedder: Embedder, store: GalleryStore, *, camera_id: int = 0,
                 config: PipelineConfig | None = None) -> None:
        if store.feature_dim != embedder.feature_dim:
            raise ValueError(f"gallery {store.root} holds {store.feature_dim}-d features but the embedder "
                             f"{embedder.model_name} gives {embedder.feature_dim}-d ones")
        self.detector = detector
        self.embedder = embedder
        self.store = store
        self.camera_id = int(camera_id)
        self.config = config or PipelineConfig()

    def run(self, reader: VideoReader, *, on_frame: FrameCallback | None = None,
            progress: bool = True) -> VideoRunResult:
        info = reader.info
        video_id = self.store.register_video(info.source, camera_id=self.camera_id, fps=info.fps,
                                             num_frames=info.num_frames, width=info.width, height=info.height)
        result = VideoRunResult(info=info, video_id=video_id,
                                detect_every=detection_stride(self.config, info.fps))
        negatives = CovisibleNegatives() if self.config.calibrate_gates else None
        tracker = Tracker(self.config.tracker, fps=info.fps, negatives=negatives)
        evidence: dict[int, TrackEvidence] = {}
        # A file is over when it ends, so its tracklets can be stitched and its tracks compared before they
        # enter the gallery; a live stream gets online tracks, each stored as it ends.
        offline = info.is_file
        stream = None
        if not offline and self.config.covisible_max_fpr is not None:
            stream = StreamMatchThreshold(metric=self.store.metric, max_fpr=self.config.covisible_max_fpr)
        pending: list[tuple[Track, TrackEvidence | None]] = []
        start = time.perf_counter()
        remaining = None if info.num_frames is None else max(0, info.num_frames - reader.start_frame)
        total = remaining if reader.max_frames is None else min(remaining or reader.max_frames,
                                                                reader.max_frames)
        # A live source ends with Ctrl-C or a stall: what was seen until then still reaches the gallery.
        try:
            for index, frame in tqdm(reader, total=total, desc="frames", unit="frame", disable=not progress):
                if index % result.detect_every == 0:
                    step = self._detect_and_track(tracker, evidence, index, frame, info.fps, result)
                else:
                    step = tracker.step(index)
                for track in step.finished:
                    if offline:
                        pending.append((track, evidence.pop(track.track_id, None)))
                    else:
                        self._finish_live(track, evidence.pop(track.track_id, None), result, stream)
                if len(evidence) > len(tracker.tracks):  # tentative tracks the tracker dropped
                    live = {t.track_id for t in tracker.tracks}
                    for track_id in evidence.keys() - live:
                        del evidence[track_id]
                if on_frame is not None:
                    on_frame(index, frame, [(t.track_id, t.box) for t in tracker.tracks if t.confirmed])
                result.frames_read += 1
        except (KeyboardInterrupt, VideoStallError) as exc:
            result.stopped_by = f"{type(exc).__name__}: {exc}".rstrip(": ")
            logger.warning("stopped reading after %d frames (%s); finishing the tracks seen so far",
                           result.frames_read, result.stopped_by)
        if negatives is not None:
            gates = self.config.tracker
            logger.info("tracker gates from %d different-person distances of this video: veto %.3f (model "
                        "%.3f), re-find %.3f (model %.3f)", len(negatives),
                        negatives.cap(gates.max_appearance, VETO_PERCENTILE), gates.max_appearance,
                        negatives.cap(gates.reactivate_appearance, REACTIVATION_PERCENTILE),
                        gates.reactivate_appearance)
        pending += [(track, evidence.pop(track.track_id, None)) for track in tracker.finish_all()]
        if offline:
            if self.config.stitch is not None:
                pending = self._stitch(pending, (info.width, info.height), info.fps)
            threshold = self._video_threshold(pending)
            for track, bank in pending:
                self._finish(track, bank, result, threshold)
        else:
            for track, bank in pending:
                self._finish_live(track, bank, result, stream)
            if stream is not None and result.gallery_tracks and stream.pairs < stream.min_pairs:
                warn_uncapped(stream.pairs, stream.min_pairs, self.store.match_threshold)
        result.seconds = time.perf_counter() - start
        return result

    def _detect_and_track(self, tracker: Tracker, evidence: dict[int, TrackEvidence], index: int,
                          frame: np.ndarray, fps: float, result: VideoRunResult) -> TrackerStep:
        detections: Detections = self.detector(frame, index)
        crops, keep = crop_boxes(frame, detections.boxes)
        detections = detections.select(keep)
        features = self.embedder(crops)
        quality = crop_quality(crops, detections.boxes, detections.scores, frame.shape, self.config.quality)
        step = tracker.step(index, detections.boxes, detections.scores, features)
        result.detection_frames += 1
        result.detections += len(detections)
        for track_id, d in step.matches:
            bank = evidence.setdefault(track_id, TrackEvidence(self.config.evidence_capacity))
            box = tuple(float(v) for v in detections.boxes[d])
            bank.offer(CropEntry(image=crops[d].copy(), frame_index=index, timestamp_s=index / fps,
                                 box_xywh=box, det_score=float(detections.scores[d]),
                                 quality=float(quality[d]), feature=features[d]))
        return step

    def _stitch(self, finished: list[tuple[Track, TrackEvidence | None]], frame_size: tuple[int, int],
                fps: float) -> list[tuple[Track, TrackEvidence | None]]:
        """Join tracklets of one person (see :mod:`reid.video.stitching`); each chain keeps its first id."""
        dim = self.embedder.feature_dim
        features = np.stack([
            bank.track_feature() if bank is not None and len(bank) else np.zeros(dim, np.float32)
            for _, bank in finished
        ]) if finished else None
        tracks = [track for track, _ in finished]
        config = self.config.stitch
        if self.config.calibrate_gates and finished:
            config = self._calibrated_stitch_gate(finished, features)
        stitched = []
        for chain in stitch_chains(tracks, features, config, frame_size, fps=fps):
            parts = [finished[i] for i in chain]
            if len(parts) == 1:
                stitched.append(parts[0])
                continue
            logger.debug("stitched tracks %s", [track.track_id for track, _ in parts])
            bank = TrackEvidence(self.config.evidence_capacity)
            for _, part_bank in parts:
                for observation in part_bank.best() if part_bank is not None else []:
                    bank.offer(observation)
            stitched.append((merge_tracks([track for track, _ in parts]), bank))
        return stitched

    def _calibrated_stitch_gate(self, finished: list[tuple[Track, TrackEvidence | None]],
                                features: np.ndarray) -> StitchConfig:
        """The stitcher's appearance gate capped at the same percentile of this video's co-visible tracklet
        pairs (certainly different people; only pairs whose boxes never touch)."""
        rows = [i for i, (_, bank) in enumerate(finished) if bank is not None and len(bank)]
        tracks = [finished[i][0] for i in rows]
        negatives = covisible_distances([t.span for t in tracks], features[rows], metric="cosine",
                                        boxes=[t.boxes_by_frame() for t in tracks])
        gate = self.config.stitch.max_appearance
        if len(negatives) < MIN_COVISIBLE_PAIRS:
            return self.config.stitch
        capped = percentile_cap(negatives, gate, VETO_PERCENTILE)
        logger.info("stitching gate from %d co-visible tracklet pairs of this video: %.3f (model %.3f)",
                    len(negatives), capped, gate)
        return replace(self.config.stitch, max_appearance=capped)

    def _enters_gallery(self, track: Track, bank: TrackEvidence | None) -> bool:
        return bank is not None and len(track.observations) >= self.config.min_track_detections

    def _video_threshold(self, finished: list[tuple[Track, TrackEvidence | None]]) -> float | None:
        """The gallery threshold capped by this video's co-visible pairs (see reid.video.self_calibration)."""
        if self.config.covisible_max_fpr is None:
            return None
        kept = [(track, bank) for track, bank in finished if self._enters_gallery(track, bank)]
        if not kept:
            return None
        spans = [track.span for track, _ in kept]
        features = np.stack([bank.track_feature() for _, bank in kept])
        boxes = [track.boxes_by_frame() for track, _ in kept]
        return video_match_threshold(spans, features, self.store.match_threshold, metric=self.store.metric,
                                     max_fpr=self.config.covisible_max_fpr, boxes=boxes)

    def _finish_live(self, track: Track, bank: TrackEvidence | None, result: VideoRunResult,
                     stream: StreamMatchThreshold | None) -> None:
        """A stream's track, stored as it ends, under the threshold capped by the co-visible pairs among the
        tracks ended so far (:class:`reid.video.self_calibration.StreamMatchThreshold`)."""
        threshold = None
        if stream is not None and self._enters_gallery(track, bank):
            threshold = stream.add(track.span, bank.track_feature(), track.boxes_by_frame(),
                                   self.store.match_threshold)
        self._finish(track, bank, result, threshold)

    def _finish(self, track: Track, bank: TrackEvidence | None, result: VideoRunResult,
                match_threshold: float | None = None) -> None:
        rows = track_rows(track, frames_in(self.config.max_interpolation_gap_s, result.info.fps))
        if not self._enters_gallery(track, bank):
            result.tracks.append(FinishedTrack(track.track_id, None, False, None, rows, []))
            return
        added = self.store.add_track(result.video_id, self.camera_id, track.track_id,
                                     bank.best(self.config.crops_per_track),
                                     bank.track_feature(), first_frame=rows[0][0], last_frame=rows[-1][0],
                                     match_threshold=match_threshold)
        logger.debug("track %d -> identity %d (%s)", track.track_id, added.identity_id,
                     "new" if added.is_new_identity else f"distance {added.distance:.3f}")
        result.tracks.append(FinishedTrack(track.track_id, added.identity_id, added.is_new_identity,
                                           added.distance, rows, list(added.crop_paths)))
