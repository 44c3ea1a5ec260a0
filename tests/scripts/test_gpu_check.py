"""scripts/gpu_check.py without a GPU: the one-line exit, argument errors, and its checks + JSON on CPU (tiny sizes)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the real check runs there")
def test_without_gpu_one_line_and_exit_0(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert gpu_check.main(["--json", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "no CUDA device" in printed[0]
    assert not out.exists()


@pytest.mark.parametrize("bad", [["--train-seconds", "0"], ["--batch", "0"], ["--size", "40"], ["--nope"],
                                 ["--net-batch-scales", "0"], ["--net-batch-scales", "1,x"], ["--compile-mode", "fast"]])
def test_bad_arguments_exit_2(bad):
    with pytest.raises(SystemExit) as err:
        gpu_check.parse_args(bad)
    assert err.value.code == 2


def test_network_rows_at_several_batch_scales(monkeypatch):
    # --net-batch-scales 1,2: every network row twice, the batch multiplied; only scale 1 would be judged (on a GPU).
    bench = gpu_check._benchmark_networks()
    monkeypatch.setattr(bench, "TARGETS", {"unet": bench.TARGETS["unet"]})
    args = gpu_check.parse_args(["--device", "cpu", "--net-batch-scales", "1,2"])
    assert args.net_batch_scales == (1, 2)
    rows = gpu_check._network_rows(torch.device("cpu"), args, small=True)
    cases = [r["case"] for r in rows if r["check"] == "time ratio"]
    assert cases == ["unet 1x32x32 fp32, resfu/deconv", "unet 1x32x32 fp32, resfu-full/deconv",
                     "unet 2x32x32 fp32, resfu/deconv", "unet 2x32x32 fp32, resfu-full/deconv"]
    assert all(r["passed"] is None for r in rows)


def test_table_and_error_helpers():
    rows = [gpu_check.row("op vs reference", "K=3", 2e-6, 1e-4, True, "rel. error"), gpu_check.row("x", "y", "z", "", False)]
    table = gpu_check.format_table(rows)
    assert table.count("\n") == 3 and "2e-06" in table and "**NO**" in table
    assert gpu_check.max_error(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])) == float("inf")
    assert gpu_check.max_error(torch.tensor([10.5]), torch.tensor([10.0])) == pytest.approx(0.05)


def test_top_level_imports_are_torch_and_stdlib_only():
    tree = ast.parse(SCRIPT.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    assert names <= {"__future__", "argparse", "json", "os", "subprocess", "sys", "tempfile", "time", "pathlib", "torch"}


@pytest.mark.slow
def test_cpu_run_writes_json_without_nibabel_medpy_simpleitk(tmp_path):
    # The whole script on CPU (tiny shapes), with the medical I/O libraries made unimportable.
    out = tmp_path / "sub" / "report.json"
    code = (
        "import sys, runpy\n"
        "for name in ('nibabel', 'medpy', 'SimpleITK'): sys.modules[name] = None\n"
        f"sys.argv = ['gpu_check.py', '--device', 'cpu', '--train-seconds', '0.5', '--batch', '1', '--size', '32', '--json', {str(out)!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = {r["check"] for r in report["rows"]}
    assert report["passed"] and report["device"] == "cpu"
    assert {"op vs reference", "deterministic vs atomic", "time FNS", "FNS / bilinear", "train it/s", "network step",
            "time ratio", "time FNS forward", "time FNS fwd+bwd (deterministic)", "time FNS fwd+bwd (atomic)",
            "ReSFU module vs float64 CPU (output, all grads)"} <= checks
    # the networks of benchmark_networks.py --targets, each with its own upsampler, the default ReSFU and ReSFU everywhere
    cases = {r["case"] for r in report["rows"] if r["check"] == "time ratio"}
    for model, ref in (("transunet", "bilinear"), ("unet", "deconv"), ("unet3d", "deconv"), ("dynunet", "deconv"),
                       ("swinunetr", "deconv"), ("unetr", "deconv")):
        assert any(c.startswith(model + " ") and c.endswith(f"resfu/{ref}") for c in cases), (model, cases)
    assert "| check | case |" in proc.stdout and "all checks passed" in proc.stdout


def test_cuda_test_subset_is_started_outside_the_checkout(monkeypatch):
    # Regression (first GPU run, 2026-12-04): started with cwd = the checkout, `python -m pytest` imported the
    # checkout's resfu_med/ (no networks/, data/, csrc/ mapped in) instead of the installed package.
    seen = {}

    def fake_run(cmd, **kwargs):
        seen.update(cmd=cmd, cwd=Path(kwargs["cwd"]).resolve())
        return subprocess.CompletedProcess(cmd, 0, stdout="1 passed\n", stderr="")

    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    (result,) = gpu_check._test_rows(torch.device("cpu"))
    assert result["passed"] is True
    repo = gpu_check.REPO.resolve()
    assert seen["cwd"] != repo and repo not in seen["cwd"].parents
    assert "--rootdir" in seen["cmd"] and str(repo / "setup.cfg") in seen["cmd"]


@pytest.mark.slow
def test_cuda_test_subset_runs_from_outside_the_checkout():
    # On CPU every CUDA test skips; what is checked is the command line: run from a temporary folder (so the
    # checkout's resfu_med/ cannot shadow the installed package), with the repository's markers and rootdir.
    (result,) = gpu_check._test_rows(torch.device("cpu"))
    assert result["passed"] is True, result
    assert "skipped" in result["value"] and "error" not in result["value"], result


@pytest.mark.slow
def test_profile_prints_kernel_counts_and_top_operators(capsys):
    gpu_check._profile(torch.device("cpu"), small=True, top=3)
    out = capsys.readouterr().out
    for model, ref in (("transunet", "bilinear"), ("unet", "deconv"), ("unetr", "deconv")):
        assert f"### profile: {model} {ref} " in out and f"### profile: {model} resfu " in out
    assert "device kernels per step" in out and "Self CPU time total" in out


@pytest.mark.slow
def test_compile_rows_compare_compiled_with_eager():
    # aot_eager keeps the CPU test short; the GPU check compiles with inductor.
    rows = gpu_check._compile_rows(torch.device("cpu"), small=True, backend="aot_eager")
    checks = [r for r in rows if r["check"] == "compiled vs eager (loss, grad norm)"]
    assert len(checks) == 2 and all(r["passed"] for r in checks), checks
    assert {r["check"] for r in rows} >= {"network step (eager)", "network step (compiled)", "time ratio (compiled)"}


def test_module_rows_compare_float32_with_float64_with_and_without_recompute_hidden():
    rows = gpu_check._module_rows(torch.device("cpu"), small=True)
    assert len(rows) == 4 and all(r["passed"] for r in rows), rows
    assert sum("recompute_hidden" in r["case"] for r in rows) == 2
    assert max(r["value"] for r in rows) < 1e-4  # float32 rounding on CPU
