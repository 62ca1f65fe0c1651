"""The video pipeline into a squared-Euclidean gallery behaves like the cosine one (issue: the per-video
threshold cap was once in cosine units whatever the gallery's metric)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reid.gallery.store import GalleryStore
from reid.video.detection import build_detector
from reid.video.embedder import build_embedder
from reid.video.pipeline import VideoToGallery, pipeline_config_for
from reid.video.reader import VideoReader

CLIP = Path(__file__).resolve().parents[1] / "assets" / "vtest_clip.avi"


def test_a_euclidean_gallery_gives_the_identities_of_the_cosine_one(tmp_path):
    # Track features are unit vectors, so squared Euclidean distance = 2 x cosine distance: the same gallery
    # threshold in either unit (0.35 / 0.7) must give the same identities, the per-video cap included, and
    # every match distance must double.
    embedder = build_embedder("handcrafted")
    detector = build_detector("ssdlite")
    outcomes = {}
    for metric, threshold in (("cosine", 0.35), ("euclidean", 0.7)):
        outcomes[metric] = []
        with GalleryStore.open(
            tmp_path / metric,
            model_name=embedder.model_name,
            feature_dim=embedder.feature_dim,
            metric=metric,
            match_threshold=threshold,
        ) as store:
            # frames 0-31 as camera 1, then 16-47 as camera 2: the second run meets people of the first
            for camera, start in ((1, 0), (2, 16)):
                with VideoReader(str(CLIP), start_frame=start, max_frames=32) as reader:
                    pipeline = VideoToGallery(
                        detector,
                        embedder,
                        store,
                        camera_id=camera,
                        config=pipeline_config_for(embedder, detect_every=4),
                    )
                    result = pipeline.run(reader, progress=False)
                outcomes[metric] += [
                    (t.track_id, t.identity_id, t.is_new_identity, t.match_distance) for t in result.tracks
                ]
    cosine, euclidean = outcomes["cosine"], outcomes["euclidean"]
    assert len(cosine) >= 4 and [t[:3] for t in cosine] == [t[:3] for t in euclidean]
    assert any(d is not None for *_, d in cosine)  # some tracks were matched against the gallery
    for (*_, d_cos), (*_, d_euc) in zip(cosine, euclidean, strict=True):
        assert (d_cos is None) == (d_euc is None)
        if d_cos is not None:
            np.testing.assert_allclose(d_euc, 2 * d_cos, rtol=1e-4, atol=1e-5)
