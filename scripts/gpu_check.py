"""GPU acceptance check of the FNS operator and ReSFU in one command (issue 16).

    python scripts/gpu_check.py                      # everything, < 8 min on one GPU; writes gpu_check.json
    python scripts/gpu_check.py --json out.json --train-seconds 30 --skip-tests

On a CUDA machine it (1) runs the CUDA test subset (``pytest -m cuda tests/ops``, when pytest and the tests are
present), (2) compares the CUDA op with the float64 reference on CPU (fp32 / fp16 / bf16; 2D and 3D; K = 3, 5; integer
and non-integer ratios; forward and both gradients) and the deterministic backward with the atomic one, and the whole
ReSFU module's output and gradients (fp32, with and without ``recompute_hidden``) with the module in float64 on CPU,
(3) times FNS
against bilinear upsampling at the TransUNet decoder shapes (CUDA events; at the largest, also the forward alone and
the deterministic backward), (4) trains TransUNet-ReSFU and bilinear
TransUNet for ``--train-seconds`` each at batch 24, 224², under bf16 autocast (iterations/s, peak memory), (5) times
the networks of ``scripts/benchmark_networks.py --targets`` (TransUNet, BasicUNet 2D/3D, DynUNet, SwinUNETR, UNETR at
their default configurations and shapes; fp32 training steps) with their own upsampler, the default ReSFU and ReSFU at
every step, and checks the default's time and memory ratios against the targets (TransUNet ≤ 1.10× bilinear, the
U-Nets ≤ 1.5× their transposed convolution); ``--net-batch-scales 1,8`` repeats those rows at 8× the batch (judged
at 1×). ``--compile`` adds BasicUNet 2D under ``torch.compile`` (inductor, fullgraph; ``--compile-mode reduce-overhead``
replays CUDA graphs) against eager; ``--profile`` prints each targets network's kernels per step and top operators. It prints
one table and writes the same rows as JSON. Without a GPU it says so in one line and exits 0.

Imports: torch (and, for the training and network rows, resfu-med's networks, i.e. MONAI) only, so it runs on a GPU
box without nibabel / medpy / SimpleITK. ``--device cpu`` runs the same checks, tiny, on CPU (used by the tests of this
script; the network rows then use ``--lite`` sizes and judge nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

# (K, LR, HR): integer (2, 4) and non-integer ratios, 2D and 3D.
OP_CASES = [
    (3, (14, 14), (28, 28)),
    (3, (14, 14), (32, 32)),
    (5, (12, 7), (44, 55)),
    (5, (7, 7), (28, 28)),
    (3, (4, 6, 6), (8, 12, 12)),
    (3, (3, 5, 4), (5, 17, 11)),
    (5, (3, 4, 4), (3, 8, 8)),
]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
# TransUNet decoder steps at 224²: (channels, LR side); HR = 2 * LR.
TRANSUNET_STEPS = [(512, 14), (256, 28), (128, 56), (64, 112)]
# The networks of scripts/benchmark_networks.py --targets: each at its default configuration, ReSFU against the
# network's own upsampler; the same builder, so the GPU and the CPU tables measure the same networks.
NETWORK_VARIANTS = ("resfu", "resfu-full")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where to write the table as JSON (default gpu_check.json)")
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N (default cuda); cpu = tiny self-test of this script")
    ap.add_argument("--train-seconds", type=float, default=60.0, help="training time per network (default 60)")
    ap.add_argument("--batch", type=int, default=24, help="training batch (default 24)")
    ap.add_argument("--size", type=int, default=224, help="training image side (default 224)")
    ap.add_argument("--timing-batch", type=int, default=24, help="batch of the FNS vs bilinear timings (default 24)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the pytest CUDA subset")
    ap.add_argument("--skip-train", action="store_true", help="do not run the training rows")
    ap.add_argument("--skip-networks", action="store_true", help="do not time the networks (ReSFU vs their own upsampler)")
    ap.add_argument("--net-iters", type=int, default=10, help="timed training steps per network and variant (default 10)")
    ap.add_argument("--net-batch-scales", default="1",
                    help="comma-separated multipliers of the network rows' batch (default 1: the CPU table's batches; "
                         "e.g. 1,8 also times each network at 8× its batch, where the GPU no longer waits for the CPU)")
    ap.add_argument("--compile", action="store_true",
                    help="also compile BasicUNet 2D with its own upsampler and with ReSFU (torch.compile, inductor, "
                         "fullgraph): compiled vs eager loss and gradients, and the step times")
    ap.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                    help="torch.compile mode of --compile (default: default; reduce-overhead replays CUDA graphs)")
    ap.add_argument("--profile", action="store_true",
                    help="also print where a ReSFU training step spends its GPU time (torch.profiler, per network of "
                         "the targets table: kernels per step, top operators)")
    args = ap.parse_args(argv)
    if args.train_seconds <= 0 or args.batch < 1 or args.size < 32 or args.size % 16 or args.timing_batch < 1:
        ap.error("--train-seconds must be > 0, --batch and --timing-batch >= 1, --size a multiple of 16 >= 32")
    if args.net_iters < 1:
        ap.error("--net-iters must be >= 1")
    try:
        args.net_batch_scales = tuple(int(v) for v in args.net_batch_scales.split(","))
    except ValueError:
        args.net_batch_scales = ()
    if not args.net_batch_scales or min(args.net_batch_scales) < 1:
        ap.error(f"--net-batch-scales must be comma-separated integers >= 1, got {args.net_batch_scales!r}")
    return args


def max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute error relative to ``max(1, max |want|)`` (NaN counts as infinite)."""
    err = (got.detach().double().cpu() - want.detach().double().cpu()).abs().max().item()
    scale = max(1.0, want.detach().abs().max().item())
    return float("inf") if err != err else err / scale


def row(check: str, case: str, value: float | str, limit: float | str = "", passed: bool | None = None, unit: str = "") -> dict:
    return {"check": check, "case": case, "value": value, "limit": limit, "unit": unit, "passed": passed}


def _op_rows(device: torch.device, small: bool) -> list[dict]:
    from resfu_med.ops import fns_gather, fns_gather_reference

    rows = []
    for k, lr, hr in OP_CASES[:3] + OP_CASES[4:6] if small else OP_CASES:
        gen = torch.Generator().manual_seed(k * 100 + len(lr))
        n, c = 2, (4 if small else 16)
        attn64 = torch.softmax(torch.randn(n, k ** len(lr), *hr, generator=gen, dtype=torch.float64), 1)
        x64 = torch.randn(n, c, *lr, generator=gen, dtype=torch.float64)
        g64 = torch.randn(n, c, *hr, generator=gen, dtype=torch.float64)
        for dtype, tol in TOLERANCE.items():
            a = attn64.to(dtype).to(device).requires_grad_()
            x = x64.to(dtype).to(device).requires_grad_()
            out = fns_gather(a, x, deterministic=True)
            grads = torch.autograd.grad(out, (a, x), g64.to(dtype).to(device))
            ra, rx = a.detach().double().cpu().requires_grad_(), x.detach().double().cpu().requires_grad_()
            ref = fns_gather_reference(ra, rx)
            want = (ref, *torch.autograd.grad(ref, (ra, rx), g64.to(dtype).double()))
            err = max(max_error(gt, wt) for gt, wt in zip((out, *grads), want))
            name = f"K={k} {'x'.join(map(str, lr))}->{'x'.join(map(str, hr))} {str(dtype).replace('torch.', '')}"
            rows.append(row("op vs reference", name, err, tol, err <= tol, "rel. error"))
        # deterministic backward: bit-identical across runs, close to the atomic one
        a = attn64.float().to(device).requires_grad_()
        x = x64.float().to(device).requires_grad_()
        runs = [torch.autograd.grad(fns_gather(a, x, deterministic=det), (a, x), g64.float().to(device)) for det in (True, True, False)]
        same = all(torch.equal(u, v) for u, v in zip(runs[0], runs[1]))
        err = max(max_error(u, v) for u, v in zip(runs[0], runs[2]))
        name = f"K={k} {'x'.join(map(str, lr))}->{'x'.join(map(str, hr))}"
        rows.append(row("deterministic == deterministic", name, "bit-identical" if same else "differs", "", same))
        rows.append(row("deterministic vs atomic", name, err, 1e-4, err <= 1e-4, "rel. error"))
    return rows


def _module_rows(device: torch.device, small: bool) -> list[dict]:
    """ReSFU's output and every gradient (inputs and parameters) on ``device`` in float32 against the same module in
    float64 on the CPU, with and without ``recompute_hidden``: the hand-written backward passes (guided filter,
    GroupNorm → convolution, the compressor's recomputation) on the device's kernels."""
    import copy

    from resfu_med.networks import ReSFU

    cases = [("2D 8x6->16x12", 2, (2, 16, 8, 6), (2, 8, 16, 12)), ("3D 3x4x3->6x8x6", 3, (1, 8, 3, 4, 3), (1, 8, 6, 8, 6))]
    if not small:
        cases.append(("2D 28x28->56x56", 2, (2, 64, 28, 28), (2, 32, 56, 56)))
    rows = []
    for name, dims, x_shape, g_shape in cases:
        for opts in ({}, {"recompute_hidden": True}):
            gen = torch.Generator().manual_seed(7)
            ref = ReSFU(x_shape[1], g_shape[1], spatial_dims=dims, **opts).double()
            with torch.no_grad():  # away from the initial zeros and ones, so every term counts
                for p in ref.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            x64 = torch.randn(x_shape, generator=gen, dtype=torch.float64, requires_grad=True)
            g64 = torch.randn(g_shape, generator=gen, dtype=torch.float64, requires_grad=True)
            w64 = torch.randn(x_shape[:2] + g_shape[2:], generator=gen, dtype=torch.float64)
            out64 = ref(x64, g64)
            want = (out64, *torch.autograd.grad(out64, (x64, g64, *ref.parameters()), w64))
            mod = copy.deepcopy(ref).float().to(device)
            x = x64.detach().float().to(device).requires_grad_()
            g = g64.detach().float().to(device).requires_grad_()
            out = mod(x, g)
            got = (out, *torch.autograd.grad(out, (x, g, *mod.parameters()), w64.float().to(device)))
            err = max(max_error(u, v) for u, v in zip(got, want))
            case = f"{name}{' recompute_hidden' if opts else ''}"
            rows.append(row("ReSFU module vs float64 CPU (output, all grads)", case, err, 1e-3, err <= 1e-3, "rel. error"))
    return rows


class _Timer:
    """Median milliseconds of ``fn`` (CUDA events on GPU, perf_counter on CPU)."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats = device, repeats

    def __call__(self, fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(self.device)
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return sorted(times)[len(times) // 2]


def _timing_rows(device: torch.device, batch: int, small: bool) -> list[dict]:
    import torch.nn.functional as F

    from resfu_med.ops import fns_gather

    timer = _Timer(device, 3 if small else 20)
    rows = []
    for channels, side in TRANSUNET_STEPS[:1] if small else TRANSUNET_STEPS:
        c = 8 if small else channels
        x = torch.randn(batch, c, side, side, device=device, requires_grad=True)
        attn = torch.softmax(torch.randn(batch, 9, 2 * side, 2 * side, device=device), 1).requires_grad_()
        grad = torch.randn(batch, c, 2 * side, 2 * side, device=device)

        def fns():
            torch.autograd.grad(fns_gather(attn, x), (attn, x), grad)

        def bilinear():
            torch.autograd.grad(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), (x,), grad)

        t_fns, t_bil = timer(fns), timer(bilinear)
        case = f"N={batch} C={c} {side}->{2 * side} K=3 fwd+bwd"
        rows.append(row("time FNS", case, round(t_fns, 3), "", None, "ms"))
        rows.append(row("time bilinear", case, round(t_bil, 3), "", None, "ms"))
        rows.append(row("FNS / bilinear", case, round(t_fns / max(t_bil, 1e-9), 2), "", None, "x"))
    # the last (largest) step split up: forward alone and the deterministic backward beside the default atomic one
    case = f"N={batch} C={c} {side}->{2 * side} K=3"
    with torch.no_grad():
        rows.append(row("time FNS forward", case, round(timer(lambda: fns_gather(attn, x)), 3), "", None, "ms"))
    t_det = timer(lambda: torch.autograd.grad(fns_gather(attn, x, deterministic=True), (attn, x), grad))
    rows.append(row("time FNS fwd+bwd (deterministic)", case, round(t_det, 3), "", None, "ms"))
    rows.append(row("time FNS fwd+bwd (atomic)", case, round(t_fns, 3), "", None, "ms"))
    return rows


def _train_rows(device: torch.device, args: argparse.Namespace, small: bool) -> list[dict]:
    from resfu_med.networks.transunet import TransUNet

    rows = []
    for upsampler in ("bilinear", "resfu"):
        torch.manual_seed(0)
        if small:
            net = TransUNet(9, img_size=args.size, upsampler=upsampler, vit_depth=1, hidden_size=32, mlp_dim=64, num_heads=2,
                            resnet_layers=(1, 1, 1), resnet_width=32, head_channels=32, decoder_channels=(16, 16, 8, 8),
                            stem_channels=8, upsampler_kwargs={"embed_dim": 8, "pcdc_channels": 16, "compressor_channels": 16} if upsampler == "resfu" else None)
        else:
            net = TransUNet(9, img_size=args.size, upsampler=upsampler)
        net = net.to(device).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        image = torch.randn(args.batch, 3, args.size, args.size, device=device)
        label = torch.randint(0, 9, (args.batch, args.size, args.size), device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(net(image), label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up (cuDNN autotuning, first-use allocations)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        iters, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.train_seconds:
            step()
            iters += 1
            if device.type == "cuda" and iters % 5 == 0:
                torch.cuda.synchronize(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        case = f"TransUNet-{upsampler} batch {args.batch} {args.size}² bf16 autocast"
        rows.append(row("train it/s", case, round(iters / elapsed, 3), "", None, "it/s"))
        if device.type == "cuda":
            rows.append(row("train peak memory", case, round(torch.cuda.max_memory_allocated(device) / 2**30, 2), "", None, "GiB"))
        del net, opt
    return rows


def _benchmark_networks():
    """``scripts/benchmark_networks.py``, whose builder the network rows share, so the GPU and the CPU tables measure
    the same networks."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import benchmark_networks

    return benchmark_networks


def _network_step_cost(net: torch.nn.Module, shape: tuple, device: torch.device, iters: int, warmup: int) -> tuple[float, float]:
    """Seconds per fp32 training step (forward + backward, cross-entropy) and the step's peak memory in MiB above the
    model and input (CUDA: allocator statistics; CPU: 0, the CPU table of benchmark_networks.py measures memory)."""
    x = torch.rand(shape[0], 1, *shape[1:], device=device)
    target = torch.randint(0, 9, (shape[0], *shape[1:]), device=device)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        out = net(x)
        torch.nn.functional.cross_entropy(out if out.dim() == x.dim() else out[:, 0], target).backward()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        net.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / iters
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else 0.0
    return seconds, peak


def _network_rows(device: torch.device, args: argparse.Namespace, small: bool) -> list[dict]:
    """Each network of benchmark_networks.py's targets table with its own upsampler, the default ReSFU and ReSFU at
    every step: seconds per training step and peak step memory, and the ratios against the targets. The targets are
    judged at the CPU table's batch (scale 1); larger scales show the ratios once the GPU, not the launching CPU,
    sets the pace."""
    bench = _benchmark_networks()
    targets, target_network = bench.TARGETS, bench.target_network

    rows = []
    for scale in args.net_batch_scales:
        for model, (ref, _, _, limit) in targets.items():
            cost = {}
            for variant in (ref, *NETWORK_VARIANTS):
                torch.manual_seed(0)
                net, shape = target_network(model, variant, lite=small)
                shape = (shape[0] * scale, *shape[1:])
                net = net.to(device).train()
                cost[variant] = _network_step_cost(net, shape, device, 1 if small else args.net_iters, 0 if small else 2)
                del net
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            case = f"{model} {'x'.join(map(str, shape))} fp32"
            for variant, (sec, mib) in cost.items():
                rows.append(row("network step", f"{case}, {variant}", round(sec, 4), "", None, "s"))
                if device.type == "cuda":
                    rows.append(row("network step memory", f"{case}, {variant}", round(mib, 1), "", None, "MiB"))
            for variant in NETWORK_VARIANTS:
                ratio = cost[variant][0] / cost[ref][0]
                # the targets hold for the default at the table's batch; tiny CPU sizes say nothing
                judged = variant == "resfu" and scale == 1 and not small
                rows.append(row("time ratio", f"{case}, {variant}/{ref}", round(ratio, 3), f"<= {limit}",
                                ratio <= limit if judged else None, "x"))
                if device.type == "cuda":
                    mem = cost[variant][1] / max(cost[ref][1], 1e-9)
                    rows.append(row("memory ratio", f"{case}, {variant}/{ref}", round(mem, 3), f"<= {limit}",
                                    mem <= limit if judged else None, "x"))
    return rows


def _compile_rows(device: torch.device, small: bool, backend: str = "inductor", mode: str = "default") -> list[dict]:
    """BasicUNet 2D of the targets table, own upsampler and ReSFU, eager vs ``torch.compile(fullgraph=True)``: the
    compiled training step's loss and gradient norm against eager (one step from the same weights), and the step
    times, so the launch overhead that compiling removes is measured."""
    target_network = _benchmark_networks().target_network

    rows, cost = [], {}
    for variant in ("deconv", "resfu"):
        torch.manual_seed(0)
        net, shape = target_network("unet", variant, lite=small)
        net = net.to(device).train()
        x = torch.rand(shape[0], 1, *shape[1:], device=device)
        target = torch.randint(0, 9, (shape[0], *shape[1:]), device=device)
        compiled = torch.compile(net, fullgraph=True, backend=backend, **({} if mode == "default" else {"mode": mode}))
        results = []
        for model in (net, compiled):
            net.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in net.parameters() if p.grad is not None))
            results.append((loss.item(), norm.item()))
        (l0, g0), (l1, g1) = results
        err = max(abs(l1 - l0) / max(abs(l0), 1e-12), abs(g1 - g0) / max(abs(g0), 1e-12))
        case = f"unet {'x'.join(map(str, shape))} fp32, {variant}, {backend} ({mode})"
        rows.append(row("compiled vs eager (loss, grad norm)", case, err, 1e-2, err <= 1e-2, "rel. error"))
        iters = 1 if small else 10
        for name, model in (("eager", net), ("compiled", compiled)):
            sec, _ = _network_step_cost(model, shape, device, iters, 0 if small else 3)
            cost[(variant, name)] = sec
            rows.append(row(f"network step ({name})", case, round(sec, 4), "", None, "s"))
        del net, compiled
    for name in ("eager", "compiled"):
        ratio = cost[("resfu", name)] / cost[("deconv", name)]
        rows.append(row(f"time ratio ({name})", f"unet resfu/deconv, {backend} ({mode})", round(ratio, 3), "<= 1.5",
                        None if small else ratio <= 1.5, "x"))
    return rows


def _profile(device: torch.device, small: bool, top: int = 15) -> None:
    """Print, per network of the targets table, a ReSFU training step's kernel count and top operators by device time."""
    from torch.profiler import ProfilerActivity, profile

    bench = _benchmark_networks()
    targets, target_network = bench.TARGETS, bench.target_network

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for model in targets:
        for variant in (targets[model][0], "resfu"):
            torch.manual_seed(0)
            net, shape = target_network(model, variant, lite=small)
            net = net.to(device).train()
            _network_step_cost(net, shape, device, 1, 0 if small else 2)  # warm-up
            with profile(activities=activities) as prof:
                _network_step_cost(net, shape, device, 1 if small else 3, 0)
            events = prof.key_averages()
            kernels = sum(e.count for e in events if e.device_type.name == "CUDA") // (1 if small else 3)
            print(f"\n### profile: {model} {variant} {'x'.join(map(str, shape))}, {kernels} device kernels per step")
            print(events.table(sort_by=sort, row_limit=top, max_name_column_width=60))
            del net
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _test_rows(device: torch.device) -> list[dict]:
    tests = REPO / "tests" / "ops"
    if not tests.is_dir():
        return [row("pytest -m cuda tests/ops", "", "skipped: tests not found", "", None)]
    try:
        import pytest  # noqa: F401
    except ImportError:
        return [row("pytest -m cuda tests/ops", "", "skipped: pytest not installed", "", None)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", str(device.index or 0)))
    # Run from outside the checkout: `python -m` puts the working directory first on sys.path, and the checkout's
    # resfu_med/ folder (without networks/, data/, csrc/ mapped in) would shadow the installed package.
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-c",
                               str(REPO / "setup.cfg"), "--rootdir", str(REPO), str(tests)],
                              capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n")  # the failures, for the log of a one-off GPU run
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return [row("pytest -m cuda tests/ops", "", summary, "exit 0", proc.returncode == 0)]


def format_table(rows: list[dict]) -> str:
    """The rows as one Markdown table."""
    lines = ["| check | case | value | unit | limit | pass |", "| --- | --- | ---: | --- | ---: | --- |"]
    for r in rows:
        value = f"{r['value']:.3g}" if isinstance(r["value"], float) else str(r["value"])
        ok = "" if r["passed"] is None else ("yes" if r["passed"] else "**NO**")
        lines.append(f"| {r['check']} | {r['case']} | {value} | {r['unit']} | {r['limit']} | {ok} |")
    return "\n".join(lines)


def write_json(path: Path, report: dict) -> None:
    """Write ``report`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device available (torch.cuda.is_available() is False); nothing to check.")
        return 0
    if device.type not in ("cuda", "cpu"):
        print(f"gpu_check: --device must be cuda[:N] or cpu, got {args.device}", file=sys.stderr)
        return 2
    small = device.type == "cpu"
    started = time.perf_counter()
    from resfu_med.ops import backend

    rows = [row("FNS backend", str(device), backend(device), "cuda" if device.type == "cuda" else "cpp", None)]
    if not args.skip_tests and device.type == "cuda":
        rows += _test_rows(device)
    rows += _op_rows(device, small)
    rows += _module_rows(device, small)
    rows += _timing_rows(device, 2 if small else args.timing_batch, small)
    if not args.skip_train:
        rows += _train_rows(device, args, small)
    if not args.skip_networks:
        rows += _network_rows(device, args, small)
    if args.compile:
        rows += _compile_rows(device, small, backend="inductor" if device.type == "cuda" else "aot_eager",
                              mode=args.compile_mode if device.type == "cuda" else "default")
    if args.profile:
        _profile(device, small)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    failed = [r for r in rows if r["passed"] is False]
    report = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
        "passed": not failed,
        "rows": rows,
    }
    print(f"gpu_check on {name} (torch {torch.__version__}, CUDA {torch.version.cuda}), {report['date']}")
    print(format_table(rows))
    print(f"{'all checks passed' if not failed else f'{len(failed)} check(s) FAILED'}; {report['seconds']} s; JSON: {args.json}")
    write_json(args.json, report)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
