"""SIGKILL a process writing a gallery (mid-run and mid-transaction): the gallery must reopen consistent."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faiss
import numpy as np

from reid.gallery import CropEntry, GalleryStore
from reid.gallery.schema import DB_FILENAME
from reid.gallery.store import CROPS_DIRNAME, INDEX_FILENAME

DIM = 24
WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from reid.gallery import CropEntry, GalleryStore

    root, first_track, pause_at, durable = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    rng = np.random.default_rng(first_track)
    people = rng.normal(size=(8, %(dim)d))
    if pause_at >= 0:  # stop for good inside add_track number pause_at, after two crops are on disk
        original = GalleryStore._write_crop
        calls = []
        def write_then_pause(self, *args):
            path = original(self, *args)
            calls.append(path)
            if track == pause_at and len(calls) == 2:
                print("inside", flush=True)
                time.sleep(600)
            return path
        GalleryStore._write_crop = write_then_pause
    store = GalleryStore.open(root, model_name="crash-test", feature_dim=%(dim)d, match_threshold=0.3,
                              durable=durable)
    video = store.register_video("v.avi", camera_id=0, fps=25.0, num_frames=None, width=64, height=64)
    for track in range(first_track, first_track + 100000):
        calls = []
        person = people[track %% 8]
        crops = [
            CropEntry(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8), 10 * track + k, track + k / 25,
                      (1.0, 2.0, 32.0, 64.0), 0.9, 0.5, person + 0.05 * rng.normal(size=%(dim)d))
            for k in range(4)
        ]
        store.add_track(video, 0, track, crops, np.mean([c.feature for c in crops], axis=0))
        print("committed", track - first_track + 1, flush=True)
    """
) % {"dim": DIM}


def run_writer_and_kill(
    script: Path, root: Path, first_track: int, *, kill_after: int, pause_at: int = -1, durable: bool = True
) -> int:
    """Run the writer; SIGKILL it after ``kill_after`` commits (or once it pauses). Returns its commits."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), str(first_track), str(pause_at), str(int(durable))],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("inside") or (pause_at < 0 and len(lines) >= kill_after):
                break
        assert proc.poll() is None, "the writer ended before it could be killed"
        time.sleep(0.003 * (first_track % 7))  # vary where in the next add_track the kill lands
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        lines += proc.stdout.readlines()  # what it printed before dying is still in the pipe
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return sum(line.startswith("committed") for line in lines)


def assert_consistent(root: Path) -> int:
    """Reopen, then check tables, crop files and faiss cache agree with each other; return the track count."""
    with GalleryStore.open(root, model_name="crash-test", feature_dim=DIM) as store:
        counts = (store.num_tracks, store.num_entries, store.num_indexed)
    with sqlite3.connect(root / DB_FILENAME) as conn:
        q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        assert q("PRAGMA integrity_check") == "ok"
        assert q("SELECT count(*) FROM identities WHERE id NOT IN (SELECT identity_id FROM tracks)") == 0
        assert q("SELECT count(*) FROM tracks WHERE id NOT IN (SELECT track_id FROM entries)") == 0
        assert q("SELECT count(*) FROM entries WHERE track_id NOT IN (SELECT id FROM tracks)") == 0
        # The identity's track counter was updated in the same transaction as the track insert.
        per_identity = "SELECT count(*) FROM tracks WHERE identity_id = i.id"
        assert q(f"SELECT count(*) FROM identities i WHERE num_tracks != ({per_identity})") == 0
        assert q("SELECT count(*) FROM entries") == 4 * q("SELECT count(*) FROM tracks") == counts[1]
        names = sorted(Path(p).name for (p,) in conn.execute("SELECT crop_path FROM entries"))
        entry_ids = [i for (i,) in conn.execute("SELECT id FROM entries ORDER BY id")]
    assert sorted(p.name for p in (root / CROPS_DIRNAME).iterdir()) == names  # no orphans, nothing missing
    index = faiss.read_index(str(root / INDEX_FILENAME))
    assert sorted(faiss.vector_to_array(index.id_map).tolist()) == entry_ids
    assert counts[2] == counts[1]
    return counts[0]


def test_killed_writer_leaves_a_consistent_gallery_that_appends_again(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = tmp_path / "gallery"

    # Killed at an arbitrary point of a long run of add_track calls, four times in a row, with and without
    # the per-crop fsync (the rename-before-commit order is what makes both kill-safe).
    tracks = 0
    for round_index in range(4):
        durable = round_index % 2 == 0
        reported = run_writer_and_kill(script, root, 1000 * round_index, kill_after=15, durable=durable)
        before = tracks
        tracks = assert_consistent(root)
        # The kill may land after a COMMIT but before its "committed" line: at most one more track.
        assert before + reported <= tracks <= before + reported + 1

    # Killed inside add_track, with two crop files renamed into place and the transaction open.
    reported = run_writer_and_kill(script, root, 5000, kill_after=0, pause_at=5003)
    assert reported == 3
    assert len(list((root / CROPS_DIRNAME).iterdir())) == 4 * (tracks + 3) + 2
    assert assert_consistent(root) == tracks + 3

    # Appending in this process works and the person is found again.
    rng = np.random.default_rng(9)
    with GalleryStore.open(root, model_name="crash-test", feature_dim=DIM) as store:
        video = store.register_video("after.avi", camera_id=1, fps=25.0, num_frames=None, width=64, height=64)
        feature = rng.normal(size=DIM)
        crops = [CropEntry(np.zeros((8, 4, 3), np.uint8), k, k / 25, (0.0, 0.0, 4.0, 8.0), 1.0, 1.0, feature)
                 for k in range(4)]  # fmt: skip
        result = store.add_track(video, 1, 0, crops, feature)
        assert store.search(feature, topk=1)[0].identity_id == result.identity_id
    assert assert_consistent(root) == tracks + 4
