"""Kill and resume through the real command line: SIGKILL at arbitrary moments (twice), a kill in the middle of writing
a checkpoint, and ``--resume`` ending bit-identical to the uninterrupted run (CPU, ``--deterministic``)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from _reliability import ITERS, run_cli, subprocess_env, train_argv
from resfu_med.engine.checkpoint import load_checkpoint


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_run(a: Path, b: Path) -> None:
    """Same iteration, same parameters bit for bit, same optimizer momentum buffers."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["iteration"] == cb["iteration"] == ITERS
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), f"parameter {k} differs"
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def _iteration(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["iteration"])
    except Exception:  # not written yet
        return -1


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resfu_med", *argv], env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_twice_then_resume_is_bit_identical(reference_run, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    rng = random.Random(10)
    seen = []
    resume = ["train", "--output", str(run), "--resume", "--max-iters", str(ITERS), "--no-progress"]
    for n, argv in enumerate([train_argv(run, tiny_config), resume]):
        # Each kill lands a few iterations past the previous one, wherever the machine's speed puts the run then.
        after = 3 if n == 0 else seen[0] + 3
        proc = _start(argv)
        deadline = time.time() + 300  # start-up is slow on a loaded machine
        while proc.poll() is None and time.time() < deadline and _iteration(run / "last.pt") < after:
            time.sleep(0.02)
        # An arbitrary point within about one iteration + save (~50 ms idle): mid-iteration, mid-save, between saves.
        time.sleep(rng.uniform(0.0, 0.08))
        assert proc.poll() is None, f"run {n} ended before it could be killed: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        it = _iteration(run / "last.pt")
        assert it >= after, "last.pt must always load after a kill"
        seen.append(it)
    assert seen[0] < seen[1] < ITERS
    rc, err = run_cli(["train", "--output", str(run), "--resume", "--max-iters", str(ITERS), "--no-progress"],
                      capsys)
    assert rc == 0, err
    assert_same_run(reference_run / "last.pt", run / "last.pt")


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys, torch
    save, calls = torch.save, [0]
    def torn_save(obj, f, *args, **kwargs):  # the 3rd checkpoint: half written, then the process is killed
        calls[0] += 1
        save(obj, f, *args, **kwargs)
        if calls[0] == 3:
            size = os.path.getsize(f)
            with open(f, "r+b") as fh:
                fh.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = torn_save
    from resfu_med.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_while_saving_never_leaves_a_torn_last_pt(reference_run, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *train_argv(run, tiny_config)],
                          env=subprocess_env(), capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    torn = list(run.glob(".last.pt.*"))
    assert torn, "the kill should have left the torn temporary file"
    with pytest.raises(Exception):
        torch.load(torn[0], weights_only=True)
    assert load_checkpoint(run / "last.pt")["iteration"] == 6  # checkpoints every 3 iterations: the 2nd one
    rc, err = run_cli(["train", "--output", str(run), "--resume", "--max-iters", str(ITERS), "--no-progress"],
                      capsys)
    assert rc == 0, err
    assert_same_run(reference_run / "last.pt", run / "last.pt")
    assert not torn[0].exists(), "the resumed run removes the dead run's temporary file"


def test_leftover_temp_files_and_torn_last_pt_on_resume(reference_run, tmp_path, capsys):
    """A stale temporary file is ignored; a last.pt torn by a disk problem is refused in one line, never half-used."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    (run / ".last.pt.k2j3h4.tmp").write_bytes(b"PK\x03\x04 torn")
    rc, err = run_cli(["train", "--output", str(run), "--resume", "--max-iters", str(ITERS + 2), "--no-progress"],
                      capsys)
    assert rc == 0, err
    assert load_checkpoint(run / "last.pt")["iteration"] == ITERS + 2
    assert not list(run.glob(".*.tmp*"))
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 3])
    from _reliability import assert_one_line_error

    rc, err = run_cli(["train", "--output", str(run), "--resume", "--max-iters", str(ITERS), "--no-progress"],
                      capsys)
    assert_one_line_error(rc, err, "train", str(run / "last.pt"), "corrupt")


def _wait_for_first_save(proc: subprocess.Popen, run: Path) -> None:
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (run / "last.pt").exists():
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()


def _stopped_at(proc: subprocess.Popen, signum: int) -> int:
    """The one clear line of a stopped run, its conventional status (128 + signal) and the saved iteration."""
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 128 + signum and "Traceback" not in err and "DataLoader worker" not in err, err
    line = [ln for ln in err.splitlines() if ": error:" in ln]
    assert len(line) == 1 and f"interrupted by {signal.Signals(signum).name} at iteration" in line[0], err
    assert "--resume" in line[0]
    return int(line[0].split(" at iteration ")[1].split(";")[0])


# SIGTERM / SIGINT, to the process alone or to its whole group (``timeout``, SLURM, Ctrl-C), with 0, 1, 2 DataLoader
# workers: the current iteration is saved, one line, exit 143 / 130, and --resume ends bit-identical.
@pytest.mark.slow
@pytest.mark.parametrize("signum, workers, group", [
    (signal.SIGTERM, 2, True), (signal.SIGINT, 1, True), (signal.SIGTERM, 0, False),
], ids=["term-2workers-group", "int-1worker-group", "term-0workers-process"])
def test_signal_saves_the_current_iteration_and_resumes(signum, workers, group, reference_run, tiny_config,
                                                        tmp_path, capsys):
    run = tmp_path / "run"
    # Saving every iteration makes the first last.pt the sign that training is under way (its handlers are
    # installed) while the tiny run is still far from its end; a fixed sleep raced the whole run on an idle machine.
    proc = subprocess.Popen([sys.executable, "-m", "resfu_med",
                             *train_argv(run, tiny_config, "--checkpoint-every", "1", "--num-workers", str(workers))],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    _wait_for_first_save(proc, run)
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    stopped = _stopped_at(proc, signum)
    assert 0 < stopped < ITERS and load_checkpoint(run / "last.pt")["iteration"] == stopped
    rc, err = run_cli(["train", "--output", str(run), "--resume", "--max-iters", str(ITERS), "--no-progress",
                       "--num-workers", str(workers)], capsys)
    assert rc == 0, err
    assert_same_run(reference_run / "last.pt", run / "last.pt")


def _ddp(run: Path, argv: list[str], port: int) -> list[subprocess.Popen]:
    """Two gloo processes of ``resfu-med train`` in one new process group (as torchrun's workers under SLURM)."""
    procs = []
    for rank in range(2):
        env = {**subprocess_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        group = {"process_group": 0 if rank == 0 else procs[0].pid}  # rank 0 leads a new group, rank 1 joins it
        procs.append(subprocess.Popen([sys.executable, "-m", "resfu_med", *argv], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **group))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> None:
    """Wait for both ranks; each must exit 0. On a timeout the group is killed and every rank's stderr is shown: a
    rank that died leaves the other blocked in a collective, so the stuck rank's own output says nothing (one CI run,
    2026-12-04 18:49 UTC, timed out here: once in that session's 3 CI runs and 7 single runs; the other rank's
    error was not kept)."""
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        errs = [p.communicate()[1] for p in procs]
        pytest.fail("DDP ranks did not finish in %d s; exit codes %s\n%s" % (
            timeout, [p.returncode for p in procs],
            "\n".join(f"--- rank {i} stderr ---\n{e.decode(errors='replace')[-3000:]}" for i, e in enumerate(errs))))
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err.decode()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gloo_sigterm_to_the_group_saves_and_resumes_bit_identical(tiny_config, tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    _finish(_ddp(reference, train_argv(reference, tiny_config, "--num-workers", "1"), _free_port()))
    procs = _ddp(run, train_argv(run, tiny_config, "--checkpoint-every", "1", "--num-workers", "1"), _free_port())
    _wait_for_first_save(procs[0], run)
    os.killpg(procs[0].pid, signal.SIGTERM)
    stopped = {_stopped_at(p, signal.SIGTERM) for p in procs}
    assert len(stopped) == 1, "both ranks stop at the same iteration"
    assert load_checkpoint(run / "last.pt")["iteration"] == stopped.pop()
    resume = ["train", "--output", str(run), "--resume", "--max-iters", str(ITERS), "--no-progress"]
    _finish(_ddp(run, resume, _free_port()))
    assert_same_run(reference / "last.pt", run / "last.pt")
