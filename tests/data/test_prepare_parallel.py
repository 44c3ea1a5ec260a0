"""``prepare -np N``: byte-identical to one process, resumable after a kill, bad cases named, --continue-on-error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resfu_med.cli import main
from resfu_med.data.layout import write_prepared


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def prepare(raw, out, *extra):
    return main(["prepare", "--dataset", "synapse", "--data-root", str(raw), "--output", str(out), "--no-progress",
                 *extra])


@pytest.fixture()
def raw(tmp_path, fake):
    root = tmp_path / "raw"
    fake.make_btcv(root, ids=tuple(range(1, 11)), shape=(12, 10, 6))  # train slices and test volumes
    return root


def test_np2_byte_identical_to_np1(raw, tmp_path):
    assert prepare(raw, tmp_path / "one", "-np", "1") == 0
    assert prepare(raw, tmp_path / "two", "-np", "2") == 0
    one, two = tree(tmp_path / "one"), tree(tmp_path / "two")
    assert any(k.startswith("train_npz") for k in one) and any(k.startswith("test_vol_h5") for k in one)
    assert one.keys() == two.keys()
    assert [k for k in one if one[k] != two[k]] == []


def test_bad_case_stops_by_default_and_continue_on_error_lists_it(raw, tmp_path, capsys):
    (raw / "img" / "img0006.nii.gz").write_bytes(b"garbage")
    (raw / "label" / "label0009.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "out"
    assert prepare(raw, out, "-np", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("img0006.nii.gz" in err or "label0009.nii.gz" in err), err
    assert "--continue-on-error" in err
    assert not (out / "dataset.json").exists() and not list(out.rglob(".*.tmp*"))  # nothing looks finished
    assert prepare(raw, out, "-np", "2", "--continue-on-error") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 of 10 cases failed" in err
    assert "img0006.nii.gz" in err and "label0009.nii.gz" in err
    assert len(list((out / "meta").glob("*.json"))) == 8 and not (out / "dataset.json").exists()


# A subprocess prepares slow synthetic cases with 2 workers and is killed (SIGKILL, whole process group) mid-run.
SLOW_JOB = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import numpy as np
    from resfu_med.data.layout import CaseSource, PreparedCase, write_prepared

    def sources(raw):
        raw.mkdir(exist_ok=True)
        out = []
        for i in range(8):
            for kind in ("img", "lab"):
                if not (raw / f"{kind}{i}").exists():  # their stamps (size, mtime) mark what a case came from
                    (raw / f"{kind}{i}").write_bytes(b"x")
            out.append(CaseSource(f"case{i:02d}", "train" if i % 3 else "test", raw / f"img{i}", raw / f"lab{i}"))
        return out

    def load(src, delay=0.0):
        time.sleep(delay)
        rng = np.random.default_rng(int(src.case[4:]))
        return PreparedCase(rng.random((5, 8, 8)).astype(np.float32), rng.integers(0, 3, (5, 8, 8)).astype(np.uint8),
                            np.eye(4), (1.0, 1.0, 1.0))

    INFO = {"dataset": "slow", "num_classes": 3}
    if __name__ == "__main__":
        raw, out, np_, delay = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        write_prepared(out, sources(raw), lambda s: load(s, delay), info=INFO, list_name="Slow", progress=False,
                       num_processes=np_)
''')


def test_resumable_after_kill(tmp_path):
    script = tmp_path / "slow_job.py"
    script.write_text(SLOW_JOB)
    raw, out, ref = tmp_path / "raw", tmp_path / "out", tmp_path / "ref"
    proc = subprocess.Popen([sys.executable, str(script), str(raw), str(out), "2", "0.5"], start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list((out / "meta").glob("*.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its workers, as a scheduler or OOM killer would
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "meta").glob("*.json")}
    assert 3 <= len(finished) < 8 and not (out / "dataset.json").exists()
    sys.path.insert(0, str(tmp_path))
    try:
        import slow_job
    finally:
        sys.path.remove(str(tmp_path))
    write_prepared(out, slow_job.sources(raw), slow_job.load, info=slow_job.INFO, list_name="Slow", progress=False,
                   num_processes=2)
    for name, mtime in finished.items():  # finished cases were skipped, not redone
        assert (out / "meta" / name).stat().st_mtime_ns == mtime
    write_prepared(ref, slow_job.sources(raw), slow_job.load, info=slow_job.INFO, list_name="Slow", progress=False)
    assert tree(out) == tree(ref)  # the interrupted cases redone, no temporary file left behind


@pytest.mark.parametrize("np_", [1, 2])
def test_markers_follow_a_flush_of_their_data_and_fsyncs_do_not_grow_with_cases(tmp_path, monkeypatch, np_):
    """Power-loss policy (resfu_med.atomic): data files without a per-file fsync, one flush per group of cases, then
    the cases' meta markers; so a marker never reaches the disk before its data, and fsyncs are O(1), not O(files)."""
    from resfu_med.data import layout

    sys.path.insert(0, str(tmp_path))
    (tmp_path / "slow_job2.py").write_text(SLOW_JOB)
    try:
        import slow_job2
    finally:
        sys.path.remove(str(tmp_path))
    out = tmp_path / "out"
    snapshots = []

    def data_and_markers():
        return ({p.name for p in out.rglob("*") if p.suffix in (".npz", ".h5") and not p.name.startswith(".")},
                {p.stem for p in (out / "meta").glob("*.json")})

    real_flush = layout.flush_to_disk
    monkeypatch.setattr(layout, "flush_to_disk", lambda root: (snapshots.append(data_and_markers()), real_flush(root)))
    monkeypatch.setattr(layout, "COMMIT_SECONDS", 0.0)  # a group per case: the strictest ordering check
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    write_prepared(out, slow_job2.sources(tmp_path / "raw"), slow_job2.load, info=slow_job2.INFO, list_name="Slow",
                   progress=False, num_processes=np_)
    snapshots.append(data_and_markers())
    for case in sorted(snapshots[-1][1]):
        first = next(k for k, (_, markers) in enumerate(snapshots) if case in markers)
        assert first > 0, case
        flushed_data = snapshots[first - 1][0]
        assert any(name.startswith(case + "_slice") or name.startswith(case + ".") for name in flushed_data), case
        assert not any(name.startswith(case) for name in snapshots[-1][0] - flushed_data), case
    assert len(snapshots[-1][1]) == 8
    assert len(fsyncs) <= 5  # lists, dataset.json, plans: not one per slice (41 data files here)


def test_workers_share_the_cores_out(monkeypatch, tmp_path):
    # Each of N forked workers runs torch with cores // N threads (at least 1), not the parent's all-core count, so
    # -np N does not oversubscribe the machine.
    import types

    import torch

    from resfu_med.data import layout

    monkeypatch.setattr(layout, "_prepare_case", lambda root, src, load, settings: {"threads": torch.get_num_threads()})
    sources = [types.SimpleNamespace(image=f"case{i}", case=str(i)) for i in range(4)]
    results = list(layout._run_cases(tmp_path, sources, [0, 1, 2, 3], None, {}, 2, lambda: False))
    assert sorted(i for i, _, _ in results) == [0, 1, 2, 3] and all(err is None for _, _, err in results)
    cores = len(os.sched_getaffinity(0))
    assert {meta["threads"] for _, meta, _ in results} == {max(1, cores // 2)}
    assert layout.worker_threads(1) == cores and layout.worker_threads(10 * cores) == 1
