"""Smoke tests of scripts/benchmark_ops.py, benchmark_networks.py, benchmark_train3d.py and upsampler_study.py in their
smallest modes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ops():
    return _load("benchmark_ops")


@pytest.fixture(scope="module")
def study():
    return _load("upsampler_study")


def test_ops_cases_are_the_issue_shapes(ops):
    # issue 9: (8, 256, 28→56), (8, 64, 56→112), (2, 16, 112→224) and one direct ×8 step
    assert ops.CASES["256@28"] == (8, 256, 28, 56)
    assert ops.CASES["64@56"] == (8, 64, 56, 112)
    assert ops.CASES["16@112"] == (2, 16, 112, 224)
    n, c, lr, hr = ops.CASES["x8"]
    assert hr == 8 * lr
    assert set(ops.UPSAMPLERS) == {"resfu", "bilinear", "nearest", "deconv", "pixelshuffle", "carafe", "sapa", "dysample"}


@pytest.mark.parametrize("name, params", [("bilinear", 0), ("nearest", 0)])
def test_ops_worker_tiny_case(ops, name, params, tmp_path):
    r = ops.cpu_worker(name, (1, 4, 4, 8), repeats=2, threads=1)
    assert r["params"] == params  # interpolation has no weights
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] >= r["fwd_ms"] * 0.5
    assert r["fwd_bwd_mib"] >= 0 and r["fwd_mib"] >= 0
    results = {"cases": {"x2": (1, 4, 4, 8)}, "upsamplers": {"cpu": {"x2": {name: r, "carafe": "failed: boom"}}},
               "fns": {}, "meta": {"cpu_timing": "1 thread"}}
    text = ops.markdown(results)
    assert f"| x2: 1, 4, 4 → 8 | {name} | {params} |" in text
    assert "failed: boom" in text
    pytest.importorskip("matplotlib")
    ops.plot(results, tmp_path / "ops.png")
    assert (tmp_path / "ops.png").read_bytes()[:8] == PNG_MAGIC


def test_ops_main_subprocess_row(ops, tmp_path):
    out = tmp_path / "ops.json"
    assert ops.main(["--quick", "--cases", "16@112", "--upsamplers", "nearest", "--no-fns", "--device", "cpu",
                     "--threads", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    row = r["upsamplers"]["cpu"]["16@112"]["nearest"]
    assert isinstance(row, dict) and row["params"] == 0
    assert r["cases"]["16@112"] == [1, 16, 112, 224]  # --quick: batch 1


def test_study_plan_is_complete(study):
    runs = study.plan_runs([0, 1, 2], study.GROUPS, study.UPSAMPLERS)
    # 8 BasicUNet upsamplers + 2 TransUNet-lite + 4 ablations, per seed
    assert len(runs) == 3 * (8 + 2 + 4)
    assert len({r["id"] for r in runs}) == len(runs)
    slim = {"embed_dim": 8, "pcdc_channels": 16, "compressor_channels": 16}  # the demo preset's ReSFU
    abl = [r for r in runs if "no-FNS" in r["variant"]]
    assert [r["model"]["kwargs"]["upsampler_kwargs"] for r in abl] == [{**slim, "fine_grained": False}] * 3
    resfu = [r for r in runs if r["model"]["upsampler"] == "resfu"]
    assert len(resfu) == 3 * (1 + 1 + 4) and all(
        {k: r["model"]["kwargs"]["upsampler_kwargs"][k] for k in slim} == slim for r in resfu)
    # no other upsampler gets ReSFU options
    assert all("upsampler_kwargs" not in r["model"]["kwargs"] for r in runs if r["model"]["upsampler"] != "resfu")
    # like for like: every BasicUNet run has its upsampler at all four steps (ReSFU's network default differs)
    unet = [r for r in runs if r["model"]["name"] == "unet"]
    assert unet and all(r["model"]["kwargs"]["final_upsampler"] == r["model"]["upsampler"] for r in unet)


def test_study_plan_default_widths(study):
    runs = study.plan_runs([0], ["unet", "ablation"], ["resfu"], resfu_width="default")
    assert [r["model"]["kwargs"].get("upsampler_kwargs") for r in runs] == [
        None, {"use_guided_filter": False}, {"use_gaussian": False}, {"similarity": "inner_product"},
        {"fine_grained": False}]


def test_study_claim_is_exclusive(study, tmp_path):
    with study._claim(tmp_path, "run-a") as first:
        with study._claim(tmp_path, "run-a") as second, study._claim(tmp_path, "run-b") as other:
            assert (first, second, other) == (True, False, True)
    with study._claim(tmp_path, "run-a") as again:  # released when the holder leaves
        assert again


def test_study_smallest_mode_and_resume(study, tmp_path):
    args = ["--output", str(tmp_path), "--seeds", "0", "--groups", "unet", "--upsamplers", "bilinear", "--epochs", "1",
            "--train-stride", "80", "--batch-size", "4", "--img-size", "32", "--threads", "1", "--no-progress"]
    assert study.main(args + ["--no-figures"]) == 0
    result_file = tmp_path / "results" / "unet-bilinear-s0.json"
    r = json.loads(result_file.read_text())
    assert r["iterations"] == 1  # 320 slices / stride 80 = 4 slices = one batch of 4
    assert len(r["history"]) == 1 and r["history"][0]["iteration"] == 1
    assert len(r["dice"]) == len(r["label_names"]) == 8
    assert all(0.0 <= d <= 1.0 for d in r["dice"])
    assert "| unet/bilinear | 1 |" in (tmp_path / "study.md").read_text()
    stamp = result_file.stat().st_mtime_ns
    pytest.importorskip("matplotlib")
    assert study.main(args) == 0  # finished run is skipped; figures rebuilt from the saved result
    assert result_file.stat().st_mtime_ns == stamp
    for png in ("dice_curves.png", "montage.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC


def test_train3d_benchmark_tiny(tmp_path):
    train3d = _load("benchmark_train3d")
    out = tmp_path / "t3d.json"
    assert train3d.main(["--variants", "trilinear", "resfu-slim", "--patch", "16", "32", "32", "--features", "4", "4",
                         "8", "8", "16", "4", "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"]
    assert set(r) == {"trilinear", "resfu-slim"}
    # ReSFU adds parameters (projections, PCDC blocks) and the step allocates activations in both variants
    assert r["resfu-slim"]["params"] > r["trilinear"]["params"] > 0
    assert all(v["step_extra_mib"] > 0 and v["step_s"] > 0 for v in r.values())


def test_networks_benchmark_unet_with_infer(tmp_path, capsys):
    from monai.networks.nets import BasicUNet as MonaiBasicUNet

    networks = _load("benchmark_networks")
    out = tmp_path / "nets.json"
    assert networks.main(["--model", "unet", "--lite", "--size", "32", "--iters", "1", "--warmup", "0",
                          "--upsamplers", "bilinear", "resfu", "--infer-shape", "24", "24", "2", "--output",
                          str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["upsampler"]: r for r in report["results"]}
    # the bilinear U-Net is MONAI's BasicUNet with non-trainable upsampling: same parameter count
    monai_net = MonaiBasicUNet(spatial_dims=2, in_channels=1, out_channels=9, features=(8, 8, 16, 32, 64, 8),
                               upsample="nontrainable")
    assert rows["bilinear"]["params"] == sum(p.numel() for p in monai_net.parameters())
    assert rows["resfu"]["params"] > rows["bilinear"]["params"]
    # `resfu-med infer` ran (exit 0) for both upsamplers and the table names the volume
    assert [(r["upsampler"], r["rc"]) for r in report["infer"]] == [("bilinear", 0), ("resfu", 0)]
    assert all(r["seconds"] > 0 for r in report["infer"])
    assert "24×24×2 (X×Y×Z)" in capsys.readouterr().out


def test_networks_benchmark_demo_widths_are_the_studys_network(study):
    from monai.networks.nets import BasicUNet as MonaiBasicUNet

    networks = _load("benchmark_networks")
    # the same network the upsampler study trains: demo widths, slim ReSFU only for resfu
    assert networks.unet_kwargs("demo", "resfu") == {
        "features": [16, 16, 32, 64, 128, 16], "upsampler_kwargs": {"embed_dim": 8, "pcdc_channels": 16,
                                                                    "compressor_channels": 16}}
    assert study.UNET_FEATURES == [16, 16, 32, 64, 128, 16]
    assert networks.unet_kwargs("demo", "bilinear")["upsampler_kwargs"] == {}
    net, side = networks.build("unet", "bilinear", 32, False, "demo")
    reference = MonaiBasicUNet(spatial_dims=2, in_channels=1, out_channels=9, features=tuple(study.UNET_FEATURES),
                               upsample="nontrainable")
    assert side == 32
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("model", ["dynunet", "swinunetr", "unetr"])
def test_networks_benchmark_monai_models_at_deconv_are_monais(model):
    from monai.networks import nets

    networks = _load("benchmark_networks")
    net, side = networks.build(model, "deconv", 64, True)
    kwargs = networks.monai_kwargs(model, "deconv", 64, True)
    assert kwargs.pop("upsampler") == "deconv" and side == 64
    reference = {"dynunet": nets.DynUNet, "swinunetr": nets.SwinUNETR, "unetr": nets.UNETR}[model](**kwargs)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())
    slim = networks.monai_kwargs(model, "resfu-slim", 64, True)
    assert slim["upsampler"] == "resfu" and slim["upsampler_kwargs"]["embed_dim"] == 8


def test_networks_targets_every_default_network_builds_and_counts_flops():
    import torch

    networks = _load("benchmark_networks")
    for model, (ref, _, small, _) in networks.TARGETS.items():
        for variant in (ref, "resfu", "resfu-full"):
            net, shape = networks.target_network(model, variant, lite=True)
            assert shape == small
            x = torch.rand(shape[0], 1, *shape[1:])
            flops = networks.forward_flops(net.eval(), x)
            assert flops > 0, (model, variant)
        n_default = sum(type(m).__name__ == "ReSFU" for m in networks.target_network(model, "resfu", True)[0].modules())
        n_full = sum(type(m).__name__ == "ReSFU" for m in networks.target_network(model, "resfu-full", True)[0].modules())
        assert n_full == n_default + 1, model  # the default leaves the full-resolution step to the network's own
    net, _ = networks.target_network("unet", "resfu:pcdc_channels=32", lite=True)
    assert {m.pcdc.out_channels for m in net.modules() if type(m).__name__ == "PCDCBlock"} == {32}


def test_networks_targets_table_and_resume(tmp_path, capsys):
    networks = _load("benchmark_networks")
    partial = tmp_path / "runs.jsonl"
    # a stopped sweep: the deconv run is already there, only resfu and resfu-full are measured
    partial.write_text(json.dumps({"network": "unet", "variant": "deconv", "threads": 1, "cpu_s": 0.5, "wall_s": 0.6,
                                   "step_peak_mib": 10.0, "flops": 1e6, "params": 1}) + "\n")
    out = tmp_path / "t.json"
    assert networks.main(["--targets", "--lite", "--networks", "unet", "--threads-list", "1", "--no-infer", "--iters",
                          "1", "--warmup", "0", "--partial", str(partial), "--output", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"deconv", "resfu", "resfu-full"} and rows["deconv"]["cpu_s"] == 0.5
    assert rows["resfu-full"]["flops"] > rows["resfu"]["flops"] > 0
    table = capsys.readouterr().out
    assert "| unet (deconv) | resfu | 1 |" in table and "≤ 1.50×" in table and "load averages" in table
    assert rows["resfu"]["kept_mib"] > 0 and "kept for backward" in table
    ratio = networks.ratios(json.loads(out.read_text())["results"])[("unet", "resfu", 1)]
    assert ratio["cpu"] == rows["resfu"]["cpu_s"] / 0.5


def test_networks_targets_report_each_rounds_paired_ratio(tmp_path, capsys):
    # Two interleaved rounds: the table keeps the best-of-rounds ratio and shows each round's own pair beside it
    # (the i-th run of ReSFU over the i-th of the reference); memory children carry no time and are not paired.
    networks = _load("benchmark_networks")
    runs = [("deconv", 1.0), ("resfu", 1.2), ("deconv", 0.8), ("resfu", 1.2)]
    rows = [{"network": "unet", "variant": v, "threads": 1, "cpu_s": t, "wall_s": t, "step_peak_mib": 10.0, "flops": 1e6}
            for v, t in runs]
    rows += [{"network": "unet", "variant": v, "threads": 1, "kind": "mem", "cpu_s": None, "step_peak_mib": 12.0}
             for v in ("deconv", "resfu")]
    assert networks.round_ratios(rows) == {("unet", "resfu", 1): pytest.approx([1.2, 1.5])}
    partial = tmp_path / "runs.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.json"
    assert networks.main(["--targets", "--report-only", "--partial", str(partial), "--rounds", "2", "--networks", "unet",
                          "--threads-list", "1", "--no-infer", "--variants", "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "per round, CPU" in table and "| 1.50× (1.50×) | 1.20 / 1.50 |" in table
    (resfu,) = [r for r in json.loads(out.read_text())["results"] if r["variant"] == "resfu"]
    assert resfu["round_cpu_ratios"] == pytest.approx([1.2, 1.5])


def test_networks_targets_paired_in_one_process(tmp_path, capsys):
    """--paired N: the reference and ReSFU are also timed in one process, steps alternating, N paired ratios."""
    networks = _load("benchmark_networks")
    r = networks.measure_pair("unet", "resfu", 1, 3, 0, True)
    assert r["kind"] == "pair" and len(r["pair_ratios"]) == 3 and all(v > 0 for v in r["pair_ratios"])
    partial = tmp_path / "runs.jsonl"
    rows = [{"network": "unet", "variant": v, "threads": 1, "cpu_s": t, "wall_s": t, "step_peak_mib": 10.0, "flops": 1e6}
            for v, t in (("deconv", 1.0), ("resfu", 1.2))]
    rows.append({**r, "pair_ratios": [1.1, 1.3, 1.2]})
    partial.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = tmp_path / "t.json"
    assert networks.main(["--targets", "--report-only", "--partial", str(partial), "--paired", "3", "--networks",
                          "unet", "--threads-list", "1", "--no-infer", "--variants", "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "same process, alternating" in table and "| 1.20× (1.10–1.30, 3 pairs) |" in table
    (resfu,) = [x for x in json.loads(out.read_text())["results"] if x["variant"] == "resfu"]
    assert resfu["pair_cpu_ratios"] == [1.1, 1.3, 1.2] and resfu["cpu_s"] == 1.2  # the paired child is not a timing row


def test_networks_targets_kept_for_backward_and_allocator(tmp_path, monkeypatch):
    """What the networks keep for backward is counted once per storage (ReSFU keeps more than the deconvolution, the
    count is the same every time); memory is measured in its own child with the fixed mmap threshold."""
    import subprocess

    import torch

    networks = _load("benchmark_networks")
    kept = {}
    for variant in ("deconv", "resfu"):
        net, shape = networks.target_network("unet", variant, lite=True)
        x = torch.rand(shape[0], 1, *shape[1:])
        kept[variant] = networks.kept_for_backward_mib(net.train(), x)
        assert kept[variant] == networks.kept_for_backward_mib(net, x)
    assert kept["resfu"] > kept["deconv"] > 0
    seen = []

    def run(cmd, **kwargs):
        seen.append((json.loads(cmd[cmd.index("--_target_child") + 1])[0], kwargs.get("env") or {}))
        return subprocess.CompletedProcess(cmd, 1, "", "stub")

    monkeypatch.setattr(networks.subprocess, "run", run)
    networks.main(["--targets", "--lite", "--networks", "unet", "--threads-list", "1", "--no-infer", "--variants"])
    assert sorted(kind for kind, _ in seen) == ["mem", "mem", "net", "net"]
    for kind, env in seen:  # memory with the fixed mmap threshold; timing with the default allocator
        assert (env.get("MALLOC_MMAP_THRESHOLD_") == "131072") == (kind == "mem")
    row = networks.measure_memory("unet", "deconv", 1, lite=True)
    assert row["kind"] == "mem" and row["step_peak_mib"] >= 0


def test_networks_targets_infer3d_lite():
    networks = _load("benchmark_networks")
    for variant in ("trilinear", "resfu"):
        r = networks.measure_infer3d(variant, [16, 40, 40], 1, lite=True)
        assert r["cpu_s"] > 0 and r["roi"] == [16, 32, 32]
