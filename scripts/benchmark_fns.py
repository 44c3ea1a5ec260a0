"""Benchmark the fused FNS gather against the naive materialising path (time and peak extra memory, fwd + bwd).

The naive path is what a plain PyTorch user writes: bilinearly (trilinearly) upsample x to the output size, gather the
K^2 (K^3) dilated neighbours into a materialised ``(N, C, K^d, *HR)`` tensor (``F.unfold`` in 2D, shifted slices of a
padded volume in 3D), multiply by attn and sum. Each (case, implementation) runs in a FRESH subprocess so that the
peak-memory number is that process's resident-set high-water mark (``VmHWM``, reset via ``/proc/self/clear_refs``
just before the measured forward + backward) minus its resident set after the inputs exist. torch's CPU allocations
are invisible to tracemalloc; RSS is what the machine actually pays.

Examples:
    python scripts/benchmark_fns.py                      # all cases, 2 threads
    python scripts/benchmark_fns.py --cases 2d-256 --repeats 5 --threads 1
    python scripts/benchmark_fns.py --impls cpp reference
    python scripts/benchmark_fns.py --thread-scaling            # C++ kernel, 2 threads vs 1, TransUNet decoder shapes
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

CASES = {
    # name: (N, C, LR spatial, HR spatial, K)
    "2d-256": (8, 256, (28, 28), (56, 56), 3),
    "2d-64": (8, 64, (56, 56), (112, 112), 3),
    "3d-32": (1, 32, (24, 48, 48), (48, 96, 96), 3),
}
IMPLS = ("naive", "cpp", "reference")
# TransUNet decoder steps at 224², batch 2, K = 3: (N, C, LR, HR)
TRANSUNET_STEPS = [(2, 512, (14, 14), (28, 28)), (2, 256, (28, 28), (56, 56)), (2, 128, (56, 56), (112, 112)), (2, 64, (112, 112), (224, 224))]


def thread_scaling(repeats: int, rounds: int = 3) -> int:
    """C++ kernel fwd+bwd at the TransUNet shapes with 1 and 2 threads, interleaved per round (load hits both alike)."""
    import torch

    from resfu_med.ops import backend, fns_gather

    assert backend() == "cpp", f"the C++ kernel is not available (backend {backend()})"
    best = {}
    for n, c, lr, hr in TRANSUNET_STEPS:
        attn = torch.softmax(torch.randn(n, 9, *hr), 1).requires_grad_()
        x = torch.randn(n, c, *lr, requires_grad=True)
        grad = torch.randn(n, c, *hr)
        for _ in range(rounds):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                fns_gather(attn, x).backward(grad)  # warm-up
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fns_gather(attn, x).backward(grad)
                    times.append(time.perf_counter() - t0)
                key = (c, lr, threads)
                best[key] = min(best.get(key, float("inf")), statistics.median(times))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print("| N, C, LR → HR, K = 3 | 1 thread fwd+bwd (ms) | 2 threads (ms) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    total = [0.0, 0.0]
    for n, c, lr, hr in TRANSUNET_STEPS:
        one, two = best[(c, lr, 1)], best[(c, lr, 2)]
        total[0] += one
        total[1] += two
        print(f"| {n}, {c}, {lr[0]}² → {hr[0]}² | {one * 1e3:.1f} | {two * 1e3:.1f} | {one / two:.2f}× |")
    print(f"| all four steps | {total[0] * 1e3:.1f} | {total[1] * 1e3:.1f} | {total[0] / total[1]:.2f}× |")
    return 0


def naive_fns(attn, x):
    """Upsample, then gather the dilated neighbourhood into a materialised tensor (zero padding at the border)."""
    import torch
    import torch.nn.functional as F

    n, c = x.shape[:2]
    lr, hr = x.shape[2:], attn.shape[2:]
    k = round(attn.shape[1] ** (1 / len(lr)))
    rad = k // 2
    ratios = [h // l for h, l in zip(hr, lr)]
    if len(lr) == 2:
        up = F.interpolate(x, size=hr, mode="bilinear", align_corners=False)
        cols = F.unfold(up, k, dilation=ratios, padding=[r * rad for r in ratios]).view(n, c, k * k, *hr)
    else:
        up = F.interpolate(x, size=hr, mode="trilinear", align_corners=False)
        pad = F.pad(up, [p for r in reversed(ratios) for p in (r * rad, r * rad)])
        rz, ry, rx = ratios
        D, H, W = hr
        cols = torch.stack(
            [pad[:, :, a * rz : a * rz + D, b * ry : b * ry + H, e * rx : e * rx + W] for a in range(k) for b in range(k) for e in range(k)],
            dim=2,
        )
    return (cols * attn.unsqueeze(1)).sum(2)


def rss_kib(field: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``, …) in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(case: str, impl: str, repeats: int, threads: int) -> dict:
    """Run one case with one implementation in this (fresh) process; return time and memory."""
    import torch

    from resfu_med.ops import backend, fns_gather, fns_gather_reference

    torch.set_num_threads(threads)
    n, c, lr, hr, k = CASES[case]
    if impl == "cpp":
        assert backend() == "cpp", "the C++ extension is not available"
        fn = fns_gather
    else:
        fn = naive_fns if impl == "naive" else fns_gather_reference
    # warm up on a tiny problem (loads the extension, first-call allocations) without touching the big sizes
    tiny_a = torch.softmax(torch.randn(1, k ** len(lr), *[2 * s for s in (2,) * len(lr)]), 1).requires_grad_()
    tiny_x = torch.randn(1, 2, *(2,) * len(lr), requires_grad=True)
    fn(tiny_a, tiny_x).sum().backward()

    attn = torch.softmax(torch.randn(n, k ** len(lr), *hr), 1).requires_grad_()
    x = torch.randn(n, c, *lr, requires_grad=True)
    grad = torch.randn(n, c, *hr)
    base = rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    t0 = time.perf_counter()
    fn(attn, x).backward(grad)
    first = time.perf_counter() - t0
    peak = rss_kib("VmHWM")
    times = [first]
    for _ in range(repeats - 1):
        attn.grad = x.grad = None
        t0 = time.perf_counter()
        fn(attn, x).backward(grad)
        times.append(time.perf_counter() - t0)
    out_mib = n * c * torch.Size(hr).numel() * 4 / 2**20
    return {"case": case, "impl": impl, "time_s": statistics.median(times), "extra_mib": (peak - base) / 1024, "out_mib": out_mib}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="cases to run (default: all)")
    parser.add_argument("--impls", nargs="+", default=["naive", "cpp"], choices=IMPLS, help="implementations (default: naive cpp)")
    parser.add_argument("--repeats", type=int, default=3, help="timed fwd+bwd runs per case; the median is reported (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--thread-scaling", action="store_true", help="C++ kernel, 2 threads vs 1 at the TransUNet decoder shapes")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.thread_scaling:
        return thread_scaling(args.repeats)
    if args.worker:
        print(json.dumps(worker(*args.worker, repeats=args.repeats, threads=args.threads)))
        return 0

    from tqdm import tqdm

    jobs = [(case, impl) for case in args.cases for impl in args.impls]
    results = {}
    for case, impl in tqdm(jobs, desc="fns benchmark", unit="run"):
        cmd = [sys.executable, __file__, "--worker", case, impl, "--repeats", str(args.repeats), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if proc.returncode != 0:
            print(f"{case}/{impl} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[case, impl] = json.loads(proc.stdout.strip().splitlines()[-1])

    print(f"\nmachine: {platform.machine()} {os.cpu_count()} cores, {args.threads} threads, python {platform.python_version()}")
    print("| case (N, C, LR → HR, K) | impl | fwd+bwd time (s) | peak extra memory (MiB) | speed-up | memory ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for case in args.cases:
        n, c, lr, hr, k = CASES[case]
        label = f"N={n}, C={c}, {'×'.join(map(str, lr))} → {'×'.join(map(str, hr))}, K={k}"
        naive = results.get((case, "naive"))
        for impl in args.impls:
            r = results.get((case, impl))
            if r is None:
                continue
            speed = f"{naive['time_s'] / r['time_s']:.1f}×" if naive else "–"
            mem = f"{naive['extra_mib'] / max(r['extra_mib'], 1e-9):.1f}×" if naive else "–"
            print(f"| {label} | {impl} | {r['time_s']:.3f} | {r['extra_mib']:.0f} | {speed} | {mem} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
