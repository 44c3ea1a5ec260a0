"""Sharded folder inference: ``--shard I/N`` and ``torchrun`` ranks split a folder into disjoint subsets whose union
equals a single-process run file for file; a re-run shard skips finished cases."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from eval_standins import BinModel, config, save_nifti, smooth_volume

from resfu_med.cli import main
from resfu_med.engine import predictor
from resfu_med.engine.distributed import parse_shard, resolve_shard, shard_items

N_CASES = 5


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(predictor, "load_for_inference", lambda path, device="cpu": (BinModel(3).eval(), config(3, img_size=16)))
    src = tmp_path / "scans"
    src.mkdir()
    for i in range(N_CASES):
        save_nifti(src / f"case{i:02d}.nii.gz", np.transpose(smooth_volume((3 + i, 16, 16), seed=i), (2, 1, 0)))
    return src


def infer(src, out, *extra):
    return main(["infer", "-i", str(src), "-o", str(out), "--checkpoint", "x.pt", "--no-progress", *extra])


def outputs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shards_are_disjoint_and_cover_everything():
    items = list(range(11))
    parts = [shard_items(items, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_union_of_shards_equals_one_process_file_for_file(folder, tmp_path, capsys):
    assert infer(folder, tmp_path / "single") == 0
    single = outputs(tmp_path / "single")
    assert len(single) == N_CASES
    for i in range(2):
        assert infer(folder, tmp_path / "sharded", "--shard", f"{i}/2") == 0, capsys.readouterr().err
    assert outputs(tmp_path / "sharded") == single


def test_concurrent_shards_into_one_folder(folder, tmp_path):
    # shards started at once (scheduler array jobs) must not refuse each other's files while they are written
    codes = [None] * 3
    threads = [threading.Thread(target=lambda i=i: codes.__setitem__(i, infer(folder, tmp_path / "o", "--shard",
                                                                                  f"{i}/3"))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0, 0, 0]
    assert infer(folder, tmp_path / "single") == 0
    assert outputs(tmp_path / "o") == outputs(tmp_path / "single")


def test_torchrun_ranks_take_their_shard_and_rerun_skips_finished(folder, tmp_path, monkeypatch, capsys):
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert resolve_shard() == (rank, 2)
        assert infer(folder, tmp_path / "o") == 0
    first = outputs(tmp_path / "o")
    assert len(first) == N_CASES
    capsys.readouterr()
    monkeypatch.setenv("RANK", "1")
    (tmp_path / "o" / "case01_seg.nii.gz").unlink()  # an interrupted shard: one of its cases is missing
    assert infer(folder, tmp_path / "o") == 0
    err = capsys.readouterr().err
    assert "1 segmented, 1 skipped" in err, err
    assert outputs(tmp_path / "o") == first
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_shard() is None


def test_bad_shard_is_one_line(folder, tmp_path, capsys):
    assert infer(folder, tmp_path / "o", "--shard", "2/2") != 0
    err = capsys.readouterr().err
    assert "--shard '2/2'" in err and "Traceback" not in err
