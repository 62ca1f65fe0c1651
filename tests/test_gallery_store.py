"""Gallery store with real SQLite, faiss and JPEG crops in tmp_path: persistence, errors, matching, search."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from reid.gallery import (
    CropEntry,
    GalleryCorruptError,
    GalleryLockedError,
    GalleryMismatchError,
    GallerySchemaError,
    GalleryStore,
    calibrate_threshold,
)
from reid.gallery.schema import DB_FILENAME, SCHEMA_VERSION
from reid.gallery.store import CROPS_DIRNAME, INDEX_FILENAME

DIM = 32


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def make_track(
    rng: np.random.Generator, person: np.ndarray, first: int, num_crops: int = 3, noise: float = 0.05
) -> tuple[list[CropEntry], np.ndarray]:
    """Crops on consecutive frames from ``first``; features = person + noise; track feature = their mean."""
    feats = person + noise * rng.normal(size=(num_crops, DIM))
    crops = [
        CropEntry(
            image=rng.integers(0, 256, size=(48, 24, 3), dtype=np.uint8),
            frame_index=first + k,
            timestamp_s=(first + k) / 25.0,
            box_xywh=(10.0 + k, 20.0, 24.0, 48.0),
            det_score=0.9,
            quality=0.5 + 0.1 * k,
            feature=feats[k],
        )
        for k in range(num_crops)
    ]
    return crops, feats.mean(axis=0)


def open_store(root: Path, **kw) -> GalleryStore:
    return GalleryStore.open(root, model_name="test-model", feature_dim=DIM, **kw)


def db_counts(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / DB_FILENAME) as conn:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("identities", "tracks", "entries")
        }


def test_tracks_persist_across_runs_videos_and_cameras(tmp_path):
    rng = np.random.default_rng(0)
    people = unit(rng.normal(size=(3, DIM)))
    root = tmp_path / "gallery"
    with open_store(root) as store:
        video = store.register_video("cam1.avi", camera_id=1, fps=25.0, num_frames=500, width=768, height=576)
        first_run = [store.add_track(video, 1, t, *make_track(rng, people[t], 100 * t)) for t in range(3)]
    assert [r.is_new_identity for r in first_run] == [True, True, True]
    with open_store(root) as store:
        assert (store.num_identities, store.num_tracks, store.num_entries, store.num_indexed) == (3, 3, 9, 9)
        video = store.register_video(
            "cam2.avi", camera_id=2, fps=30.0, num_frames=None, width=640, height=480
        )
        second = store.add_track(video, 2, 7, *make_track(rng, people[1], 0))
    assert not second.is_new_identity and second.identity_id == first_run[1].identity_id
    assert second.distance is not None and second.distance < 0.05
    assert db_counts(root) == {"identities": 3, "tracks": 4, "entries": 12}
    # Market-1501 style names carry identity, camera, video and frame; files exist and match the rows.
    assert Path(second.crop_paths[0]).name == f"{second.identity_id:04d}_c2s2_000000_00.jpg"
    files = sorted(p.name for p in (root / CROPS_DIRNAME).iterdir())
    with sqlite3.connect(root / DB_FILENAME) as conn:
        rows = sorted(Path(p).name for (p,) in conn.execute("SELECT crop_path FROM entries"))
    assert files == rows and len(files) == 12


def test_tracker_split_fragments_merge_but_covisible_tracks_never_do(tmp_path):
    rng = np.random.default_rng(1)
    person = unit(rng.normal(size=DIM))
    with open_store(tmp_path / "g", match_threshold=0.2) as store:
        video = store.register_video("v.avi", camera_id=0, fps=25.0, num_frames=1000, width=640, height=480)
        a = store.add_track(video, 0, 1, *make_track(rng, person, 0), last_frame=99)
        # Same look, disjoint in time: the tracker lost the person and started a new track -> same identity.
        b = store.add_track(video, 0, 2, *make_track(rng, person, 120), first_frame=120, last_frame=200)
        # Same look but on screen during frames 150..160 while track 2 is: two people dressed alike.
        c_crops, c_feature = make_track(rng, person, 150)
        c = store.add_track(video, 0, 3, c_crops, c_feature, last_frame=160)
        # Crops at 90..92 only, but the given span 90..149 overlaps tracks 1 and 2 (identity a), not track 3.
        # It shows exactly track 3's feature, so identity a - a look-alike that counts in the ratio test
        # although it is excluded - is clearly farther.
        d = store.add_track(video, 0, 4, make_track(rng, person, 90)[0], c_feature, last_frame=149)
    assert b.identity_id == a.identity_id and not b.is_new_identity
    assert c.is_new_identity and c.identity_id != a.identity_id
    assert d.identity_id == c.identity_id


def test_different_people_stay_apart_at_the_calibrated_threshold(tmp_path):
    rng = np.random.default_rng(2)
    people = unit(rng.normal(size=(12, DIM)))
    # Calibrate on held-out tracks of other people drawn from the same process.
    others = unit(rng.normal(size=(40, DIM)))
    feats = np.stack([make_track(rng, others[i % 40], 0)[1] for i in range(400)])
    labels = np.arange(400) % 40
    d = 1.0 - unit(feats) @ unit(feats).T
    iu = np.triu_indices(400, 1)
    same = labels[iu[0]] == labels[iu[1]]
    report = calibrate_threshold(d[iu][same], d[iu][~same])
    assert report.eer == 0.0
    with open_store(tmp_path / "g", match_threshold=report.threshold) as store:
        assigned = {}
        for cam in range(3):
            video = store.register_video(
                f"c{cam}.avi", camera_id=cam, fps=25.0, num_frames=None, width=64, height=64
            )
            for p in rng.permutation(12):
                result = store.add_track(video, cam, int(p), *make_track(rng, people[p], 10 * int(p)))
                assigned.setdefault(int(p), set()).add(result.identity_id)
        assert store.num_identities == 12
    assert all(len(ids) == 1 for ids in assigned.values())
    assert len(set.union(*assigned.values())) == 12


def test_search_is_exact_min_over_entries(tmp_path):
    rng = np.random.default_rng(3)
    people = unit(rng.normal(size=(30, DIM)))
    with open_store(tmp_path / "g", match_threshold=0.3) as store:
        video = store.register_video("v.avi", camera_id=0, fps=25.0, num_frames=None, width=64, height=64)
        identity_of, feats = [], []
        for t in range(60):
            crops, track_feature = make_track(rng, people[t % 30], 10 * t, num_crops=4, noise=0.1)
            result = store.add_track(video, 0, t, crops, track_feature)
            identity_of += [result.identity_id] * len(crops)
            feats += [c.feature for c in crops]
        query = people[7] + 0.1 * rng.normal(size=DIM)
        hits = store.search(query, topk=5)
    # Reference: cosine distance to every entry, min per identity, sorted.
    dist = 1.0 - unit(np.stack(feats)) @ unit(query)
    best: dict[int, float] = {}
    for identity, value in zip(identity_of, dist, strict=True):
        best[identity] = min(best.get(identity, np.inf), value)
    expected = sorted(best, key=best.get)[:5]
    assert [h.identity_id for h in hits] == expected
    np.testing.assert_allclose([h.distance for h in hits], [best[i] for i in expected], atol=1e-5)
    assert hits[0].identity_id in {identity_of[4 * 7], identity_of[4 * 37]}  # tracks 7 and 37 show person 7
    top = hits[0].evidence
    assert [e["distance"] for e in top] == sorted(e["distance"] for e in top)
    assert abs(top[0]["distance"] - hits[0].distance) < 1e-5 and Path(top[0]["crop_path"]).is_file()
    assert {"video", "camera_id", "frame_index", "timestamp_s", "crop_path", "box_xywh"} <= set(top[0])


def test_euclidean_gallery_uses_squared_distances(tmp_path):
    rng = np.random.default_rng(4)
    with open_store(tmp_path / "g", metric="euclidean", match_threshold=0.0) as store:
        video = store.register_video("v.avi", camera_id=0, fps=25.0, num_frames=None, width=64, height=64)
        crops, feature = make_track(rng, 3.0 * rng.normal(size=DIM), 0)
        store.add_track(video, 0, 0, crops, feature)
        query = rng.normal(size=DIM)
        hit = store.search(query, topk=1)[0]
    expected = min(float(((c.feature - query) ** 2).sum()) for c in crops)
    assert hit.distance == pytest.approx(expected, rel=1e-4)
    with pytest.raises(GalleryMismatchError, match="metric 'euclidean'"):
        open_store(tmp_path / "g", metric="cosine")


def test_other_model_or_dimension_is_refused_naming_both(tmp_path):
    open_store(tmp_path / "g").close()
    with pytest.raises(GalleryMismatchError, match="'test-model' \\(requested 'resnet50'\\)"):
        GalleryStore.open(tmp_path / "g", model_name="resnet50", feature_dim=DIM)
    with pytest.raises(GalleryMismatchError, match=f"dimension {DIM} \\(requested 2048\\)"):
        GalleryStore.open(tmp_path / "g", model_name="test-model", feature_dim=2048)


def test_corrupt_foreign_and_newer_galleries_give_clear_errors(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(GalleryCorruptError, match="is not a gallery"):
        open_store(tmp_path / "photos")
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]
    with pytest.raises(FileNotFoundError, match="no gallery"):
        open_store(tmp_path / "absent", create=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(GalleryCorruptError, match="is a file"):
        open_store(tmp_path / "afile")

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / DB_FILENAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GalleryCorruptError, match=DB_FILENAME):
        open_store(garbage)

    other_db = tmp_path / "otherdb"
    other_db.mkdir()
    with sqlite3.connect(other_db / DB_FILENAME) as conn:
        conn.execute("CREATE TABLE songs(title TEXT)")
    with pytest.raises(GalleryCorruptError, match="no gallery metadata"):
        open_store(other_db)

    open_store(tmp_path / "newer").close()
    with sqlite3.connect(tmp_path / "newer" / DB_FILENAME) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(GallerySchemaError, match=f"version {SCHEMA_VERSION + 1}.*upgrade"):
        open_store(tmp_path / "newer")


def test_bad_track_input_is_rejected_and_changes_nothing(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "g"
    store = open_store(root)
    video = store.register_video("v.avi", camera_id=0, fps=25.0, num_frames=None, width=64, height=64)
    crops, feature = make_track(rng, unit(rng.normal(size=DIM)), 0)
    bad_image = CropEntry(np.zeros((0, 5, 3), np.uint8), 3, 0.1, (0, 0, 1, 1), 0.9, 0.5, feature)
    nan_feature = CropEntry(crops[0].image, 3, 0.1, (0, 0, 1, 1), 0.9, 0.5, np.full(DIM, np.nan))
    cases = [
        ((video, 0, 1, crops, feature[:5]), "dimension 32"),
        ((video, 0, 1, [*crops, bad_image], feature), "crop 3: image"),
        ((video, 0, 1, [*crops, nan_feature], feature), "crop 3: feature: contains NaN"),
        ((video, 0, 1, [], feature), "crops is empty"),
        ((video + 5, 0, 1, crops, feature), "not registered"),
        ((video, 3, 1, crops, feature), "differs from video"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            store.add_track(*args)
    with pytest.raises(ValueError, match="must contain its crops' frames"):
        store.add_track(video, 0, 1, crops, feature, first_frame=1)
    with pytest.raises(ValueError, match="fps of bad.avi"):
        store.register_video("bad.avi", camera_id=0, fps=0.0, num_frames=None, width=64, height=64)
    assert db_counts(root) == {"identities": 0, "tracks": 0, "entries": 0}
    assert list((root / CROPS_DIRNAME).iterdir()) == []
    assert store.add_track(video, 0, 1, crops, feature).is_new_identity
    store.close()


def test_second_writer_is_locked_out_but_readers_search(tmp_path):
    rng = np.random.default_rng(6)
    person = unit(rng.normal(size=DIM))
    with open_store(tmp_path / "g") as writer:
        video = writer.register_video("v.avi", camera_id=0, fps=25.0, num_frames=None, width=64, height=64)
        added = writer.add_track(video, 0, 0, *make_track(rng, person, 0))
        with pytest.raises(GalleryLockedError, match="read_only=True"):
            open_store(tmp_path / "g")
        with open_store(tmp_path / "g", read_only=True) as reader:
            assert reader.search(person, topk=1)[0].identity_id == added.identity_id
            with pytest.raises(PermissionError):
                reader.register_video("x.avi", camera_id=0, fps=1.0, num_frames=None, width=1, height=1)


def test_stale_or_damaged_index_is_rebuilt_from_the_database(tmp_path):
    rng = np.random.default_rng(7)
    people = unit(rng.normal(size=(4, DIM)))
    root = tmp_path / "g"
    with open_store(root) as store:
        video = store.register_video("v.avi", camera_id=0, fps=25.0, num_frames=None, width=64, height=64)
        for t in range(2):
            store.add_track(video, 0, t, *make_track(rng, people[t], 10 * t))
    saved = (root / INDEX_FILENAME).read_bytes()
    with open_store(root) as store:
        for t in range(2, 4):
            store.add_track(video, 0, t, *make_track(rng, people[t], 10 * t))
    (root / INDEX_FILENAME).write_bytes(saved)  # an older cache: must be caught up, not trusted
    with open_store(root) as store:
        assert store.num_indexed == store.num_entries == 12
        assert store.search(people[3], topk=1)[0].evidence[0]["track_id"] == 3
    (root / INDEX_FILENAME).write_bytes(b"garbage")
    with open_store(root) as store:
        assert store.num_indexed == 12
        assert store.search(people[2], topk=1)[0].evidence[0]["track_id"] == 2
    (root / INDEX_FILENAME).unlink()
    with open_store(root, read_only=True) as store:
        assert store.num_indexed == 12
    assert not (root / INDEX_FILENAME).exists()  # a reader never writes


def test_threshold_is_stored_and_orphan_crops_are_removed(tmp_path):
    root = tmp_path / "g"
    with open_store(root, match_threshold=0.123) as store:
        assert store.match_threshold == 0.123
    assert GalleryStore.read_meta(root).match_threshold == 0.123
    (root / CROPS_DIRNAME / "0001_c0s1_000000_00.jpg").write_bytes(b"left by a crash")
    (root / CROPS_DIRNAME / ".0002_c0s1_000000_00.jpg.abc.tmp").write_bytes(b"half")
    with open_store(root) as store:
        assert store.match_threshold == 0.123
        store.set_match_threshold(0.5)
    assert list((root / CROPS_DIRNAME).iterdir()) == []
    assert GalleryStore.read_meta(root).match_threshold == 0.5


def test_reranked_search_aggregates_reranked_entry_distances(tmp_path):
    from reid.evaluation import re_ranking

    rng = np.random.default_rng(8)
    people = unit(rng.normal(size=(10, DIM)))
    with open_store(tmp_path / "g", match_threshold=0.3) as store:
        video = store.register_video("v.avi", camera_id=0, fps=25.0, num_frames=None, width=64, height=64)
        identity_of, feats = [], []
        for t in range(30):
            crops, track_feature = make_track(rng, people[t % 10], 10 * t, num_crops=3, noise=0.1)
            result = store.add_track(video, 0, t, crops, track_feature)
            identity_of += [result.identity_id] * len(crops)
            feats += [c.feature for c in crops]
        query = people[4] + 0.1 * rng.normal(size=DIM)
        hits = store.search(query, topk=4, rerank=True)
    # Reference: re-rank the query against every entry (cosine gallery: unit vectors), min per identity.
    dist = re_ranking(unit(query)[None].astype(np.float32), unit(np.stack(feats)).astype(np.float32))[0]
    best: dict[int, float] = {}
    for identity, value in zip(identity_of, dist, strict=True):
        best[identity] = min(best.get(identity, np.inf), float(value))
    expected = sorted(best, key=best.get)[:4]
    assert [h.identity_id for h in hits] == expected
    np.testing.assert_allclose([h.distance for h in hits], [best[i] for i in expected], atol=1e-5)
    assert hits[0].identity_id in {identity_of[3 * 4], identity_of[3 * 14], identity_of[3 * 24]}


def test_gallery_whose_creation_was_interrupted_is_created_again(tmp_path):
    root = tmp_path / "g"
    (root / CROPS_DIRNAME).mkdir(parents=True)
    sqlite3.connect(root / DB_FILENAME).close()  # the file exists, the schema transaction never committed
    with open_store(root, match_threshold=0.2) as store:
        assert store.num_identities == 0 and store.match_threshold == 0.2
    assert GalleryStore.read_meta(root).model_name == "test-model"


def test_numpy_scalars_from_a_tracker_are_accepted(tmp_path):
    rng = np.random.default_rng(10)
    feature = rng.normal(size=DIM).astype(np.float32)
    crop = CropEntry(
        image=np.zeros((20, 10, 3), np.uint8), frame_index=np.int64(7), timestamp_s=np.float32(0.28),
        box_xywh=tuple(np.array([1, 2, 10, 20], dtype=np.float32)), det_score=np.float32(0.8),
        quality=np.float64(0.4), feature=feature,
    )  # fmt: skip
    with open_store(tmp_path / "g") as store:
        video = store.register_video(
            "v.avi", camera_id=np.int64(0), fps=np.float32(25), num_frames=np.int64(9), width=np.int64(64),
            height=np.int64(48),
        )  # fmt: skip
        store.add_track(video, np.int64(0), np.int64(3), [crop], feature, last_frame=np.int64(8))
        evidence = store.search(feature, topk=1)[0].evidence[0]
    assert (evidence["frame_index"], evidence["track_id"]) == (7, 3)
    assert evidence["box_xywh"] == (1.0, 2.0, 10.0, 20.0)
    # sqlite3 would silently store numpy scalars as BLOBs: every number must land as a number.
    with sqlite3.connect(tmp_path / "g" / DB_FILENAME) as conn:
        for table in ("videos", "tracks", "entries"):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})") if row[1] != "feature"]
            types = conn.execute(
                f"SELECT {', '.join(f'typeof({c})' for c in columns)} FROM {table}"
            ).fetchone()
            assert "blob" not in types, (table, dict(zip(columns, types, strict=True)))


def _rot_blob(root: Path, table: str, row_id: int, column: str, offset: int = 0) -> None:
    """Overwrite 32 bytes of one stored feature with NaNs, as bit rot would (SQLite itself stays valid)."""
    with sqlite3.connect(root / DB_FILENAME) as conn:
        (blob,) = conn.execute(f"SELECT {column} FROM {table} WHERE id = ?", (row_id,)).fetchone()
        damaged = bytearray(blob)
        damaged[offset : offset + 32] = np.full(32 // 4, np.nan, np.float32).tobytes()
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (bytes(damaged), row_id))
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_damaged_stored_features_are_quarantined_and_matching_keeps_working(tmp_path, caplog):
    rng = np.random.default_rng(5)
    people = unit(rng.normal(size=(6, DIM)))
    root = tmp_path / "gallery"
    with open_store(root) as store:
        video = store.register_video("cam1.avi", camera_id=1, fps=25.0, num_frames=900, width=768, height=576)
        first = [store.add_track(video, 1, t, *make_track(rng, people[t], 100 * t)) for t in range(6)]
    ids = [r.identity_id for r in first]
    _rot_blob(root, "identities", ids[0], "feature_sum")  # one prototype: rebuilt from its track
    _rot_blob(root, "identities", ids[1], "feature_sum")  # ... and this one's track is damaged too
    with sqlite3.connect(root / DB_FILENAME) as conn:
        (track_of_1,) = conn.execute("SELECT id FROM tracks WHERE identity_id = ?", (ids[1],)).fetchone()
        (entry_of_2,) = conn.execute("SELECT min(id) FROM entries").fetchone()
    _rot_blob(root, "tracks", track_of_1, "feature")
    (root / INDEX_FILENAME).unlink()  # the index is rebuilt from the damaged entries
    _rot_blob(root, "entries", entry_of_2, "feature")
    with caplog.at_level("WARNING"), open_store(root) as store:
        video = store.register_video("cam2.avi", camera_id=2, fps=25.0, num_frames=900, width=768, height=576)
        again = [store.add_track(video, 2, t, *make_track(rng, people[t], 100 * t)) for t in range(6)]
        hits = store.search(people[0], topk=1)
    assert [r.identity_id for r in again[2:]] == ids[2:] and again[0].identity_id == ids[0]
    assert again[1].is_new_identity  # its only intact evidence was lost: a new identity, not a wrong match
    assert hits[0].identity_id == ids[0] and np.isfinite(hits[0].distance)
    assert f"identities [{ids[0]}]" in caplog.text and f"identities [{ids[1]}]" in caplog.text
    assert f"entries [{entry_of_2}]" in caplog.text


def test_crop_path_leading_outside_the_gallery_is_refused(tmp_path):
    rng = np.random.default_rng(6)
    root = tmp_path / "gallery"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.jpg").write_bytes(b"not yours")
    with open_store(root) as store:
        video = store.register_video("cam1.avi", camera_id=1, fps=25.0, num_frames=900, width=768, height=576)
        store.add_track(video, 1, 1, *make_track(rng, unit(rng.normal(size=DIM)), 0))
    with sqlite3.connect(root / DB_FILENAME) as conn:
        conn.execute("UPDATE entries SET crop_path = '../outside/x.jpg' WHERE id = 1")
    with open_store(root, read_only=True) as store, pytest.raises(GalleryCorruptError, match="outside"):
        store.search(unit(rng.normal(size=DIM)), topk=1)
