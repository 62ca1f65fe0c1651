import json

import pytest

from reid.utils.io import atomic_open, atomic_write_json


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_json(target, {"mAP": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write("{half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"mAP": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_atomic_open_rejects_read_modes(tmp_path):
    with pytest.raises(ValueError, match="write modes"):
        with atomic_open(tmp_path / "x", "r"):
            pass


def test_atomic_write_uses_normal_file_permissions(tmp_path):
    import os

    target = tmp_path / "results.md"
    atomic_write_json(target, [])
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)
