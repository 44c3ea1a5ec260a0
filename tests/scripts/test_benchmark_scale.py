"""scripts/benchmark_scale.py: the speed-up arithmetic (hand-computed) and a smallest-size prepare run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_scale.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speedups_by_hand():
    bench = _load()
    # t1 = 12 s with 5 s fixed: the per-case work is 7 s; halved exactly, -np 2 would take 5 + 3.5 = 8.5 s
    assert bench.speedups(12.0, 9.0, 5.0) == {"speedup": 1.33, "per_case_speedup": 1.75, "bound": 1.41}
    # no fixed cost: the bound is the number of processes
    assert bench.speedups(10.0, 5.0, 0.0, n=4)["bound"] == 4.0


@pytest.mark.slow
def test_prepare_step_smallest(tmp_path):
    out = tmp_path / "res.json"
    subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "w"), "--cases", "4", "--shape", "3", "16",
                    "16", "--steps", "prepare", "--json", str(out)], check=True, capture_output=True)
    run = json.loads(out.read_text())["prepare"][0]
    assert run["identical"] and run["1"]["files"] == run["2"]["files"] > 0
    for key in ("1", "2", "rerun", "startup"):
        assert run[key]["seconds"] > 0 and run[key]["cpu_seconds"] > 0
    assert {"speedup", "per_case_speedup", "bound"} <= set(run)
