"""Atomic writes: complete file or old file, never a torn one; permissions as a plain open() gives."""

from __future__ import annotations

import os
import stat

import pytest

from resfu_med.atomic import atomic_path, atomic_write_json, atomic_write_text


def test_write_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_failure_keeps_old_file(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "shared.txt"
        atomic_write_text(target, "x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_durable_false_skips_fsync_and_flush_to_disk_runs(tmp_path, monkeypatch):
    from resfu_med import atomic

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    atomic_write_text(tmp_path / "fast.txt", "x", durable=False)
    assert calls == [] and (tmp_path / "fast.txt").read_text() == "x"
    atomic_write_text(tmp_path / "safe.txt", "y")
    assert len(calls) == 1
    atomic.flush_to_disk(tmp_path)  # syncfs(2) on Linux, os.sync elsewhere; raises OSError on failure
