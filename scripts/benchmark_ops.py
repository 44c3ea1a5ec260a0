"""Benchmark every registry upsampler (forward and forward + backward time, peak memory) and the fused FNS op.

Cases (N, C, LR → HR): ``256@28`` (8, 256, 28 → 56), ``64@56`` (8, 64, 56 → 112), ``16@112`` (2, 16, 112 → 224) and
``x8`` (2, 64, 28 → 224, one direct ×8 step). Guided upsamplers (``resfu``, ``sapa``) get a guide of
``max(C // 2, 16)`` channels at the HR size; the others ignore it.

CPU: every (case, upsampler) runs in a FRESH subprocess with ``torch.set_num_threads(--threads)``; peak memory is that
process's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` right before the measured
pass) minus its resident set once the module and inputs exist, i.e. the activations, gradients and workspace of one
pass. Time is the median of ``--repeats`` passes after one warm-up pass. CUDA (when present and ``--device`` allows):
CUDA events, ``--warmup`` passes, median of ``--cuda-repeats`` (≥ 20), peak from ``torch.cuda.max_memory_allocated``
minus the allocation before the pass.

The fused FNS gather against the naive materialising path reuses ``scripts/benchmark_fns.py`` (its worker, one
subprocess per case and implementation).

Examples:
    python scripts/benchmark_ops.py                                   # everything, CPU (+ CUDA if present)
    python scripts/benchmark_ops.py --quick --json out.json --plot docs/figures/benchmark_ops.png
    python scripts/benchmark_ops.py --cases x8 --upsamplers bilinear resfu --repeats 1 --no-fns
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["CASES", "QUICK_CASES", "UPSAMPLERS", "build", "cpu_worker", "cuda_bench", "markdown", "plot", "main"]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling benchmark_fns.py, also when loaded by path (tests)
from benchmark_fns import rss_kib  # noqa: E402

from resfu_med.networks.upsamplers import upsampler_names  # noqa: E402

#: name: (N, C, LR side, HR side)
CASES = {
    "256@28": (8, 256, 28, 56),
    "64@56": (8, 64, 56, 112),
    "16@112": (2, 16, 112, 224),
    "x8": (2, 64, 28, 224),
}
#: --quick: the same shapes with batch 1 (the load on a shared machine makes the full batches too slow).
QUICK_CASES = {k: (1,) + v[1:] for k, v in CASES.items()}
#: The upsampler registry's names, baselines first and ReSFU last (the order of tables and plots).
UPSAMPLERS = tuple(sorted(upsampler_names(), key=lambda name: name == "resfu"))


def build(name: str, shape: tuple[int, int, int, int], device: str = "cpu"):
    """The module and its inputs ``(module, x, guide, size)`` for one case."""
    import torch

    from resfu_med.networks import get_upsampler

    n, c, lr, hr = shape
    gc = max(c // 2, 16)
    module = get_upsampler(name, c, gc, hr // lr).to(device)
    x = torch.randn(n, c, lr, lr, device=device, requires_grad=True)
    guide = torch.randn(n, gc, hr, hr, device=device, requires_grad=True)
    return module, x, guide, [hr, hr]


def cpu_worker(name: str, shape: tuple[int, int, int, int], repeats: int, threads: int) -> dict:
    """One (upsampler, case) in this fresh process: forward and fwd+bwd median times, peak extra RSS."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module, x, guide, size = build(name, shape)
    with torch.no_grad():  # warm-up: extension load, first-call allocations
        module(x[:1], guide[:1], size)
    module(x, guide, size).sum().backward()
    fwd, both = [], []
    peak_fwd = peak_both = 0.0
    for i in range(repeats):
        x.grad = guide.grad = None
        module.zero_grad(set_to_none=True)
        base = rss_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
            fh.write("5")
        t0 = time.perf_counter()
        out = module(x, guide, size)
        t1 = time.perf_counter()
        peak_fwd = max(peak_fwd, (rss_kib("VmHWM") - base) / 1024)
        out.backward(torch.ones_like(out))
        t2 = time.perf_counter()
        peak_both = max(peak_both, (rss_kib("VmHWM") - base) / 1024)
        del out
        fwd.append(t1 - t0)
        both.append(t2 - t0)
    return {"fwd_ms": 1e3 * statistics.median(fwd), "fwd_bwd_ms": 1e3 * statistics.median(both),
            "fwd_mib": peak_fwd, "fwd_bwd_mib": peak_both,
            "params": sum(p.numel() for p in module.parameters())}


def cuda_bench(name: str, shape: tuple[int, int, int, int], repeats: int, warmup: int) -> dict:
    """One (upsampler, case) on CUDA: CUDA-event median times and allocator peak memory."""
    import torch

    torch.manual_seed(0)
    module, x, guide, size = build(name, shape, "cuda")

    def timed(backward: bool) -> tuple[float, float]:
        times = []
        for i in range(warmup + repeats):
            x.grad = guide.grad = None
            module.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            if backward:
                out = module(x, guide, size)
                out.backward(torch.ones_like(out))
            else:
                with torch.no_grad():
                    out = module(x, guide, size)
            end.record()
            torch.cuda.synchronize()
            del out
            if i >= warmup:
                times.append(start.elapsed_time(end))
        return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**20

    fwd_ms, fwd_mib = timed(False)
    both_ms, both_mib = timed(True)
    out = {"fwd_ms": fwd_ms, "fwd_bwd_ms": both_ms, "fwd_mib": fwd_mib, "fwd_bwd_mib": both_mib,
           "params": sum(p.numel() for p in module.parameters())}
    del module, x, guide
    torch.cuda.empty_cache()
    return out


def _run_cpu(name: str, case: str, shape, repeats: int, threads: int) -> dict | str:
    cmd = [sys.executable, __file__, "--worker", name, json.dumps(list(shape)), "--repeats", str(repeats),
           "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_fns(case: str, impl: str, repeats: int, threads: int) -> dict | str:
    cmd = [sys.executable, str(HERE / "benchmark_fns.py"), "--worker", case, impl, "--repeats", str(repeats),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict) -> str:
    """Markdown tables of a results dict (as written by ``--json``)."""
    lines = []
    for dev, rows in results["upsamplers"].items():
        lines += [f"**{dev}** ({results['meta'][dev + '_timing']})", "",
                  "| case (N, C, LR → HR) | upsampler | params | fwd ms | fwd+bwd ms | fwd MiB | fwd+bwd MiB | "
                  "fwd+bwd time / bilinear |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for case, per in rows.items():
            n, c, lr, hr = results["cases"][case]
            ref = per.get("bilinear")
            for name, r in per.items():
                label = f"{case}: {n}, {c}, {lr} → {hr}"
                if isinstance(r, str):
                    lines.append(f"| {label} | {name} | failed: {r} | | | | | |")
                    continue
                ratio = f"{r['fwd_bwd_ms'] / ref['fwd_bwd_ms']:.1f}×" if isinstance(ref, dict) else "–"
                lines.append(f"| {label} | {name} | {r['params']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
                             f"{r['fwd_mib']:.0f} | {r['fwd_bwd_mib']:.0f} | {ratio} |")
        lines.append("")
    if results.get("fns"):
        lines += ["**Fused FNS gather vs naive (CPU, fwd+bwd)**", "",
                  "| case | impl | fwd+bwd s | peak extra MiB | speed-up vs naive | memory ratio |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for case, per in results["fns"].items():
            naive = per.get("naive")
            for impl, r in per.items():
                if isinstance(r, str):
                    lines.append(f"| {case} | {impl} | failed: {r} | | | |")
                    continue
                ok = isinstance(naive, dict)
                sp = f"{naive['time_s'] / r['time_s']:.1f}×" if ok else "–"
                mem = f"{naive['extra_mib'] / max(r['extra_mib'], 1e-3):.1f}×" if ok else "–"
                lines.append(f"| {case} | {impl} | {r['time_s']:.3f} | {r['extra_mib']:.0f} | {sp} | {mem} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: str | Path) -> None:
    """Grouped bar chart (log scale): fwd+bwd time and peak memory per case and upsampler, one row per device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    devs = list(results["upsamplers"])
    fig, axes = plt.subplots(len(devs), 2, figsize=(11, 3.4 * len(devs)), squeeze=False)
    for row, dev in enumerate(devs):
        rows = results["upsamplers"][dev]
        cases = list(rows)
        names = sorted({n for per in rows.values() for n in per}, key=lambda n: UPSAMPLERS.index(n))
        width = 0.8 / max(len(names), 1)
        for col, (key, unit) in enumerate((("fwd_bwd_ms", "fwd+bwd time (ms)"), ("fwd_bwd_mib", "fwd+bwd peak (MiB)"))):
            ax = axes[row][col]
            for j, name in enumerate(names):
                vals = [rows[c].get(name) for c in cases]
                vals = [v[key] if isinstance(v, dict) else np.nan for v in vals]
                ax.bar(np.arange(len(cases)) + j * width, np.maximum(vals, 1e-2), width, label=name)
            ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2, cases)
            ax.set_yscale("log")
            ax.set_title(f"{dev}: {unit}", fontsize=10)
        axes[row][1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    import io

    from resfu_med.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="cases (default: all)")
    parser.add_argument("--upsamplers", nargs="+", default=list(UPSAMPLERS), choices=UPSAMPLERS,
                        help="upsamplers (default: all registry names)")
    parser.add_argument("--quick", action="store_true", help="batch 1 instead of 8/2, 1 CPU repeat, FNS 2d-256 only")
    parser.add_argument("--repeats", type=int, default=3, help="CPU timed passes per case, median reported (default: 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU torch threads (default: all cores)")
    parser.add_argument("--cuda-repeats", type=int, default=20, help="CUDA timed passes (default: 20)")
    parser.add_argument("--warmup", type=int, default=5, help="CUDA warm-up passes (default: 5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CPU, plus CUDA when available (default: auto)")
    parser.add_argument("--no-fns", action="store_true", help="skip the fused-vs-naive FNS comparison")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON (atomic)")
    parser.add_argument("--markdown", metavar="FILE", help="write the markdown tables (atomic)")
    parser.add_argument("--plot", metavar="PNG", help="write the bar chart (needs matplotlib: pip install .[bench])")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(cpu_worker(args.worker[0], tuple(json.loads(args.worker[1])), args.repeats, args.threads)))
        return 0

    import torch
    from tqdm import tqdm

    from resfu_med.atomic import atomic_write_json, atomic_write_text

    table = QUICK_CASES if args.quick else CASES
    repeats = 1 if args.quick else args.repeats
    cases = {c: table[c] for c in args.cases}
    results: dict = {"cases": cases, "upsamplers": {}, "fns": {}, "meta": {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "threads": args.threads,
        "load_average": os.getloadavg(), "quick": args.quick, "command": " ".join([Path(__file__).name, *sys.argv[1:]]),
        "cpu_timing": f"{args.threads} threads, median of {repeats} pass(es) after 1 warm-up, fresh process per row, "
                      "memory = VmHWM − VmRSS",
    }}
    if args.device in ("auto", "cpu"):
        rows = results["upsamplers"]["cpu"] = {}
        for case, shape in tqdm([(c, s) for c, s in cases.items()], desc="cpu cases", unit="case"):
            rows[case] = {name: _run_cpu(name, case, shape, repeats, args.threads) for name in args.upsamplers}
            if args.json:  # partial results survive an interrupted run
                atomic_write_json(Path(args.json), results)
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        results["meta"]["cuda_timing"] = (f"{torch.cuda.get_device_name()}, CUDA events, {args.warmup} warm-up, "
                                          f"median of {args.cuda_repeats}, memory = max_memory_allocated − allocated")
        rows = results["upsamplers"]["cuda"] = {}
        for case, shape in tqdm(list(cases.items()), desc="cuda cases", unit="case"):
            rows[case] = {}
            for name in args.upsamplers:
                try:
                    rows[case][name] = cuda_bench(name, shape, args.cuda_repeats, args.warmup)
                except (RuntimeError, ValueError) as err:
                    rows[case][name] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    if not args.no_fns:
        fns_cases = ["2d-256"] if args.quick else ["2d-256", "2d-64"]
        for case in tqdm(fns_cases, desc="fns", unit="case"):
            results["fns"][case] = {impl: _run_fns(case, impl, repeats, args.threads) for impl in ("naive", "cpp")}
    text = markdown(results)
    print(f"\n{results['meta']['date']}, torch {results['meta']['torch']}, {results['meta']['machine']}, "
          f"load average {results['meta']['load_average'][0]:.1f}\n\n{text}")
    if args.json:
        atomic_write_json(Path(args.json), results)
    if args.markdown:
        atomic_write_text(Path(args.markdown), text)
    if args.plot:
        try:
            plot(results, args.plot)
        except ImportError:
            print("--plot: matplotlib is not installed (pip install .[bench]); no figure written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
