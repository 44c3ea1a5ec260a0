"""Benchmark TransUNet, BasicUNet or MONAI's DynUNet / SwinUNETR / UNETR with each decoder upsampler: parameters,
forward+backward time and peak memory on CPU, and (``--infer-shape``) the time of ``resfu-med infer`` on a whole CT
volume.

Every upsampler is measured in its own fresh subprocess (so peak resident memory is not inherited from the previous
one); times and memory are reported as ratios to the original network of the same run: bilinear for TransUNet and
BasicUNet, MONAI's transposed convolution (``deconv``) for DynUNet, SwinUNETR and UNETR. The ReSFU goal (issue 4) is
time ≤ 1.15× bilinear, and a parameter overhead well under 1 % of the ~105 M.

``--model dynunet|swinunetr|unetr`` measures the 3D network on a ``--size``³ patch (1 input channel, 9 classes):
DynUNet with nnU-Net's plan for the patch (``resfu_med.networks.dynunet_plan``) and MONAI's default filters,
SwinUNETR and UNETR with MONAI's defaults (feature size 24 / 16; UNETR's ``img_size`` = the patch); ``--lite`` shrinks
them to seconds. Their upsamplers default to ``deconv resfu resfu-slim``; ``resfu-slim`` is ReSFU with the demo
preset's slim widths (embedding 8, PCDC 16, compressor 16).

``--infer-shape X Y Z`` adds, for ``bilinear`` and ``resfu``, the wall time and peak RSS of ``resfu-med infer`` on a
synthetic int16 CT volume of that shape (``scripts/measure_infer_memory.py`` writes it): a checkpoint of the network
is made with one ``resfu-med train --dataset demo`` iteration at ``--size`` (the weights do not change the time), then
the volume is segmented in a fresh process with ``--infer-threads`` threads (slice-wise at the training size, zoomed
back: the evaluation protocol).

Examples:
    python scripts/benchmark_networks.py                       # paper size: batch 2, 224², all upsamplers
    python scripts/benchmark_networks.py --upsamplers bilinear resfu resfu-4 --rounds 3   # interleaved, best of 3
    python scripts/benchmark_networks.py --model unet --batch 8 --size 96      # BasicUNet with every upsampler
    python scripts/benchmark_networks.py --model unet --unet-widths demo --batch 4 --size 96   # the study's network
    python scripts/benchmark_networks.py --upsamplers bilinear resfu --infer-shape 512 512 100   # + a CT volume
    python scripts/benchmark_networks.py --model dynunet --batch 1 --size 64   # 3D DynUNet: deconv, resfu, resfu-slim
    python scripts/benchmark_networks.py --lite --iters 2       # small config, seconds (a smoke test)
    python scripts/benchmark_networks.py --output bench.json    # also write the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["UNET_WIDTHS", "MONAI_MODELS", "TARGETS", "main", "measure", "build", "unet_kwargs", "monai_kwargs", "measure_infer",
           "kept_for_backward_mib", "MALLOC_ENV", "measure_memory",
           "target_network", "forward_flops", "measure_target", "measure_infer3d", "run_targets", "ratios"]

HERE = Path(__file__).resolve().parent

LITE = dict(img_size=64, vit_depth=1, hidden_size=64, mlp_dim=128, num_heads=4, resnet_layers=(1, 1, 1),
            resnet_width=32, head_channels=64, decoder_channels=(32, 32, 16, 16), stem_channels=16)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


#: BasicUNet feature widths per ``--unet-widths`` ("demo" is read from the demo preset, see :func:`unet_kwargs`).
UNET_WIDTHS = {"monai": (32, 32, 64, 128, 256, 32), "lite": (8, 8, 16, 32, 64, 8)}


#: The 3D MONAI networks (``--model``); their reference upsampler is MONAI's transposed convolution.
MONAI_MODELS = ("dynunet", "swinunetr", "unetr")


def _slim_resfu() -> dict:
    """The demo preset's slim ReSFU widths (one source with the study and the demo runs)."""
    from resfu_med.engine.config import PRESETS

    return dict(PRESETS["demo"]["model"]["kwargs"]["upsampler_kwargs"])


def monai_kwargs(model: str, name: str, size: int, lite: bool) -> dict:
    """Constructor arguments of the 3D ``model`` (DynUNet, SwinUNETR, UNETR) on a ``size``³ patch with upsampler
    ``name`` (``resfu-slim``: ReSFU with the demo preset's widths); ``lite`` shrinks the network."""
    kw: dict[str, Any] = {"in_channels": 1, "out_channels": 9, "upsampler": name.split("-")[0]}
    if name == "resfu-slim":
        kw["upsampler_kwargs"] = _slim_resfu()
    if model == "dynunet":
        from resfu_med.networks import dynunet_plan

        kw.update(spatial_dims=3, **dynunet_plan([size] * 3, max_downsamplings=3 if lite else 5))
        if lite:
            kw["filters"] = [8, 16, 32, 64][: len(kw["strides"])]
    elif model == "swinunetr":
        kw.update(spatial_dims=3, **({"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)} if lite else {}))
    elif model == "unetr":
        kw.update(spatial_dims=3, img_size=size, **({"feature_size": 8, "hidden_size": 24, "mlp_dim": 48, "num_heads": 2}
                                                   if lite else {}))
    else:
        raise ValueError(f"unknown MONAI model {model!r}: choose one of {', '.join(MONAI_MODELS)}")
    return kw


def unet_kwargs(widths: str, name: str) -> dict:
    """BasicUNet ``features`` and ``upsampler_kwargs`` for ``--unet-widths``: MONAI's default widths, ``lite``, or
    ``demo`` — the demo preset's network (also the upsampler study's), slim ReSFU widths included."""
    if widths == "demo":
        from resfu_med.engine.config import PRESETS

        demo = PRESETS["demo"]["model"]["kwargs"]
        return {"features": list(demo["features"]),
                "upsampler_kwargs": dict(demo["upsampler_kwargs"]) if name == "resfu" else {}}
    return {"features": list(UNET_WIDTHS[widths]), "upsampler_kwargs": {}}


def build(model: str, name: str, size: int, lite: bool, unet_widths: str = "monai") -> tuple[Any, int]:
    """``(network, input side)``: TransUNet(num_classes=9), BasicUNet(2D, 9 classes) or a 3D MONAI network
    (:func:`monai_kwargs`) with upsampler ``name``."""
    from resfu_med.networks import BasicUNet, DynUNet, SwinUNETR, TransUNet, UNETR

    if model in MONAI_MODELS:
        cls = {"dynunet": DynUNet, "swinunetr": SwinUNETR, "unetr": UNETR}[model]
        return cls(**monai_kwargs(model, name, size, lite)), size
    if name == "resfu-slim":
        raise ValueError("resfu-slim is a variant of the MONAI networks (--model dynunet|swinunetr|unetr)")
    if model == "unet":
        if name == "resfu-4":
            raise ValueError("resfu-4 is a TransUNet variant")
        kw = unet_kwargs("lite" if lite else unet_widths, name)
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=9, features=tuple(kw["features"]), upsampler=name,
                         upsampler_kwargs=kw["upsampler_kwargs"] or None), size
    cfg = dict(LITE) if lite else {"img_size": size}
    if name == "resfu-4":  # the four-step variant: ReSFU also at the last (full-resolution) step
        cfg["final_upsampler"] = "resfu"
    return TransUNet(9, upsampler=name.split("-")[0], **cfg), cfg["img_size"]


def measure(name: str, batch: int, size: int, iters: int, warmup: int, threads: int, lite: bool,
            model: str = "transunet", unet_widths: str = "monai") -> dict:
    """Build the network with upsampler ``name`` and time forward+backward (run in a fresh process)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, side = build(model, name, size, lite, unet_widths)
    net.train()
    params = sum(p.numel() for p in net.parameters())
    dims = 3 if model in MONAI_MODELS else 2
    x = torch.rand(batch, 1, *[side] * dims)
    target = torch.randint(0, 9, (batch, *[side] * dims))
    loss_fn = torch.nn.CrossEntropyLoss()
    base_rss = _rss_mib()  # model and input allocated; the peak above it is the step's working memory
    times = []
    for i in range(warmup + iters):
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss_fn(net(x), target).backward()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    from resfu_med.ops import backend

    return {"upsampler": name, "params": params, "time_s": statistics.median(times), "times_s": times,
            "peak_rss_mib": _rss_mib(), "step_peak_mib": _rss_mib() - base_rss, "fns_backend": backend()}


def _network_kwargs(model: str, lite: bool, name: str, unet_widths: str = "monai") -> dict:
    """The ``model.kwargs`` of a training config that builds the same network as :func:`build`."""
    if model == "unet":  # replaces the demo preset's U-Net and slim ReSFU widths unless they are the ones measured
        return unet_kwargs("lite" if lite else unet_widths, name)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in LITE.items() if k != "img_size"} if lite else {}


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {res.returncode}:\n{res.stderr[-2000:]}")
    return res


def measure_infer(model: str, name: str, size: int, shape: list[int], threads: int, work: Path,
                  lite: bool = False, unet_widths: str = "monai") -> dict:
    """Time ``resfu-med infer`` of a synthetic CT volume of ``shape`` (X, Y, Z) with a ``model``/``name`` checkpoint.

    Raises:
        RuntimeError: the training or inference command failed (its stderr is in the message).
    """
    sys.path.insert(0, str(HERE))
    from measure_infer_memory import CHILD, write_ct

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    vol = work / f"ct_{'x'.join(map(str, shape))}.nii.gz"
    if not vol.exists():
        write_ct(vol, tuple(shape))
    run = work / f"{model}-{name}"
    if not (run / "last.pt").exists():
        config = work / f"{model}-{name}.json"
        config.write_text(json.dumps({"model": {"kwargs": _network_kwargs(model, lite, name, unet_widths)}}))
        _run([sys.executable, "-m", "resfu_med", "train", "--dataset", "demo", "--config", str(config), "--model", model,
              "--upsampler", name, "--img-size", str(size), "--batch-size", "2", "--max-iters", "1", "--no-eval",
              "--device", "cpu", "--no-progress", "--overwrite", "--output", str(run)], env)
    res = _run([sys.executable, "-c", CHILD, "infer", "-i", str(vol), "-o", str(work / "out"), "--checkpoint",
                str(run / "last.pt"), "--device", "cpu", "--overwrite", "--no-progress"], env)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {"upsampler": name, "seconds": r["seconds"], "peak_rss_mib": r["peak_rss_kb"] / 1024, "rc": r["rc"]}


# ---------------------------------------------------------------------------------------------------------------
# --targets: the cost table of docs/benchmarks.md ("ReSFU cost in the networks"): every network at its default
# configuration, ReSFU against the network's own upsampler, forward + backward, 1 and 2 threads, FLOPs.

#: network → (reference upsampler, input ``(batch, *spatial)`` of the full run, of ``--lite``, time/memory target).
TARGETS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...], float]] = {
    "transunet": ("bilinear", (2, 224, 224), (1, 64, 64), 1.10),
    "unet": ("deconv", (2, 160, 160), (1, 32, 32), 1.5),
    "unet3d": ("deconv", (1, 64, 64, 64), (1, 32, 32, 32), 1.5),
    "dynunet": ("deconv", (1, 64, 64, 64), (1, 16, 16, 16), 1.5),
    "swinunetr": ("deconv", (1, 64, 64, 64), (1, 64, 32, 32), 1.5),
    "unetr": ("deconv", (1, 64, 64, 64), (1, 16, 16, 16), 1.5),
}

#: glibc's allocator for the --targets children: every block of 128 KiB or more is mapped on its own and unmapped when
#: freed (a fixed threshold; glibc's default raises it up to 32 MiB as blocks are freed, after which freed tensors stay
#: in the heap, fragmented, and count in the peak resident memory by chance). With it the step's peak memory is that of
#: the tensors alive at once, the same to the MiB from run to run for the same code; without it single runs of one
#: network differed by ±5 % (docs/benchmarks.md, "What ReSFU keeps for backward").
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}

#: Variants measured beside each network's default ``resfu`` at one thread: ``resfu-full`` is ReSFU at every decoder
#: step, the full-resolution one included (``final_upsampler="resfu"``: TransUNet's four-step variant, the U-Nets'
#: all-ReSFU decoder; the default of earlier releases). ``--variants`` adds more (``name:key=value,...`` sets ReSFU
#: options, e.g. ``resfu-full:pcdc_channels=32``).
TARGET_VARIANTS = ("resfu-full",)


def _variant(name: str) -> tuple[str, dict[str, Any]]:
    """``"resfu:pcdc_channels=32,full_resolution=..."`` → ``("resfu", {"pcdc_channels": 32, ...})``."""
    base, _, opts = name.partition(":")
    kw: dict[str, Any] = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        kw[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return base, kw


def target_network(model: str, variant: str, lite: bool = False) -> tuple[Any, tuple[int, ...]]:
    """``(network, input shape)`` of the targets table: ``model`` at its default configuration with upsampler
    ``variant`` (a registry name, ``resfu-full``, or ``name:key=value,...`` with ReSFU options); ``lite`` shrinks it to
    a smoke test. Only the upsampler arguments are given, so each release's own defaults are what is measured."""
    from resfu_med.networks import BasicUNet, DynUNet, SwinUNETR, TransUNet, UNETR, dynunet_plan

    ref, full, small, _ = TARGETS[model]
    shape = small if lite else full
    name, opts = _variant(variant)
    extra: dict[str, Any] = {}
    if name == "resfu-full":
        name, extra = "resfu", {"final_upsampler": "resfu"}
    up: dict[str, Any] = {"upsampler": name, **({"upsampler_kwargs": opts} if opts else {})}
    spatial = list(shape[1:])
    if model == "transunet":
        cfg = dict(LITE, img_size=spatial[0]) if lite else {"img_size": spatial[0]}
        return TransUNet(9, **cfg, **up, **extra), shape
    if model in ("unet", "unet3d"):
        dims = len(spatial)
        feats = UNET_WIDTHS["lite"] if lite else UNET_WIDTHS["monai"]
        return BasicUNet(spatial_dims=dims, in_channels=1, out_channels=9, features=feats, **up, **extra), shape
    if model == "dynunet":
        kw = dict(dynunet_plan(spatial, max_downsamplings=2 if lite else 5))
        if lite:
            kw["filters"] = [8, 16, 32][: len(kw["strides"])]
        return DynUNet(spatial_dims=3, in_channels=1, out_channels=9, **kw, **up, **extra), shape
    if model == "swinunetr":
        small_kw = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)} if lite else {}
        return SwinUNETR(in_channels=1, out_channels=9, spatial_dims=3, **small_kw, **up, **extra), shape
    if model == "unetr":
        small_kw = {"feature_size": 8, "hidden_size": 24, "mlp_dim": 48, "num_heads": 2} if lite else {}
        return UNETR(in_channels=1, out_channels=9, img_size=spatial, spatial_dims=3, **small_kw, **up, **extra), shape
    raise ValueError(f"unknown network {model!r}: choose from {', '.join(TARGETS)}")


def _register_fns_flops() -> None:
    """Count ReSFU's FNS gather (a custom op FlopCounterMode does not know): 2 FLOPs per weight and channel."""
    import torch
    from torch.utils.flop_counter import register_flop_formula

    op = getattr(getattr(torch.ops, "resfu_med", None), "fns_gather_forward", None)
    if op is None:
        return

    def formula(attn_shape, x_shape, *args, out_shape=None, **kwargs) -> int:
        n = 1
        for s in attn_shape:
            n *= int(s)
        return 2 * n * int(x_shape[1])

    try:
        register_flop_formula(op)(formula)
    except Exception:  # noqa: BLE001 - already registered, or an op without overloads: leave it uncounted
        pass


def forward_flops(net: Any, x: Any) -> int:
    """Forward FLOPs of ``net(x)`` by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convolutions,
    matrix products, attention and the FNS gather; elementwise ops, norms, pooling and interpolation count 0)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    _register_fns_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return int(counter.get_total_flops())


def kept_for_backward_mib(net: Any, x: Any) -> float:
    """MiB that autograd keeps for the backward pass after one training forward of ``net(x)``: every storage its
    saved-tensor hooks see, counted once, parameters and the input excluded. Machine- and allocator-independent: the
    activations a network holds between its forward and backward passes."""
    import torch

    skip = {p.untyped_storage().data_ptr() for p in net.parameters()} | {x.untyped_storage().data_ptr()}
    kept: dict[int, int] = {}

    def pack(t: Any) -> Any:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    del out
    return sum(kept.values()) / 2**20


def _training_step(model: str, variant: str, threads: int, lite: bool) -> tuple[Any, Any, Any]:
    """``(network, input, step)`` of the targets table in this process: ``step()`` runs one forward + backward
    (cross-entropy, 9 classes; DynUNet's deep supervision: head 0)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, shape = target_network(model, variant, lite)
    net.train()
    x = torch.rand(shape[0], 1, *shape[1:])
    target = torch.randint(0, 9, (shape[0], *shape[1:]))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        net.zero_grad(set_to_none=True)
        out = net(x)
        loss_fn(out if out.dim() == x.dim() else out[:, 0], target).backward()

    return net, x, step


def measure_memory(model: str, variant: str, threads: int, lite: bool) -> dict:
    """The step's peak resident memory above the built model and input (one warm-up step, then one step) of ``model``
    with ``variant``, in a fresh process started with :data:`MALLOC_ENV` (the --targets "mem" child); timing runs in
    its own child with the default allocator, whose per-allocation mapping would slow every step."""
    _, _, step = _training_step(model, variant, threads, lite)
    base_rss = _rss_mib()
    for _ in range(2):
        step()
    return {"network": model, "variant": variant, "threads": threads, "kind": "mem", "step_peak_mib": _rss_mib() - base_rss}


def measure_target(model: str, variant: str, threads: int, iters: int, warmup: int, lite: bool) -> dict:
    """Forward+backward of ``model`` with ``variant`` in this (fresh) process: median CPU and wall seconds per step,
    the step's peak resident memory above the built model and input (default allocator), forward FLOPs, what is kept
    for backward and parameters."""
    net, x, step = _training_step(model, variant, threads, lite)
    base_rss = _rss_mib()
    cpu, wall = [], []
    for i in range(warmup + iters):
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        if i >= warmup:
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    step_mib = _rss_mib() - base_rss
    net.zero_grad(set_to_none=True)
    flops = forward_flops(net.eval(), x) if threads == 1 else None
    kept = kept_for_backward_mib(net.train(), x) if threads == 1 else None
    return {"network": model, "variant": variant, "threads": threads, "cpu_s": statistics.median(cpu),
            "wall_s": statistics.median(wall), "step_peak_mib": step_mib, "peak_rss_mib": _rss_mib(),
            "flops": flops, "kept_mib": kept, "params": sum(p.numel() for p in net.parameters())}


def measure_pair(model: str, variant: str, threads: int, pairs: int, warmup: int, lite: bool) -> dict:
    """``model`` with its reference upsampler and with ``variant`` built in this (fresh) process, their training
    steps alternating (reference first in even pairs, ``variant`` first in odd ones) ``pairs`` times after
    ``warmup`` steps each: the ratio of CPU seconds of each pair. Both see the same minutes of the machine, so a
    load change hits both sides of a pair, which fresh processes minutes apart cannot ensure."""
    steps = {v: _training_step(model, v, threads, lite)[2] for v in (_reference(model), variant)}
    cpu: dict[str, list[float]] = {v: [] for v in steps}
    for v, step in steps.items():
        for _ in range(warmup):
            step()
    for i in range(pairs):
        for v in (list(steps) if i % 2 == 0 else list(steps)[::-1]):
            c0 = time.process_time()
            steps[v]()
            cpu[v].append(time.process_time() - c0)
    ref_cpu, var_cpu = cpu[_reference(model)], cpu[variant]
    return {"network": model, "variant": variant, "threads": threads, "kind": "pair",
            "pair_ratios": [a / b for a, b in zip(var_cpu, ref_cpu)], "cpu_s": statistics.median(var_cpu),
            "ref_cpu_s": statistics.median(ref_cpu)}


def measure_infer3d(variant: str, shape: list[int], threads: int, lite: bool) -> dict:
    """CPU and wall seconds of the package's 3D sliding-window inference (``predict_volume_3d``: MONAI Gaussian
    windows, streamed in slabs) of a random ``(Z, Y, X)`` volume with the demo preset's 3D U-Net (``unet3d`` with the
    demo widths; ``trilinear`` = its linear upsampler, ``resfu`` with the preset's ReSFU options)."""
    import numpy as np
    import torch
    from resfu_med.engine.config import PRESETS
    from resfu_med.engine.inferer import predict_volume_3d
    from resfu_med.networks import BasicUNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    demo = PRESETS["demo"]
    kw = demo["model"]["kwargs"]
    roi = [16, 32, 32] if lite else [int(s) for s in demo["data"]["patch_size"]]
    name = "bilinear" if variant == "trilinear" else variant
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=9, features=tuple(kw["features"]), upsampler=name,
                    upsampler_kwargs=dict(kw["upsampler_kwargs"]) if name == "resfu" else None).eval()
    image = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    c0, w0 = time.process_time(), time.perf_counter()
    with torch.no_grad():
        predict_volume_3d(net, image, roi)
    return {"network": "infer3d", "variant": variant, "threads": threads, "cpu_s": time.process_time() - c0,
            "wall_s": time.perf_counter() - w0, "roi": roi}


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def run_targets(args: argparse.Namespace) -> int:
    """Every network of :data:`TARGETS` (``--networks``), its reference and ReSFU variants, each in a fresh process
    per thread count and round (interleaved), then the 3D inference pair; prints the table and writes ``--output``."""
    from tqdm import tqdm

    jobs = []
    for _ in range(args.rounds):
        for threads in args.threads_list:
            for model in args.networks:
                ref = TARGETS[model][0]
                extra = [*(TARGET_VARIANTS if args.variants is None else args.variants)] if threads == 1 else []
                for variant in dict.fromkeys([ref, "resfu", *extra]):
                    jobs += [("net", model, variant, threads), ("mem", model, variant, threads)]
                if args.paired:
                    jobs.append(("pair", model, "resfu", threads))
            if not args.no_infer:
                jobs += [("infer", "infer3d", v, threads) for v in ("trilinear", "resfu")]
    loads = [_load()]
    best: dict[tuple, dict] = {}
    done: list[dict] = []
    if args.partial and Path(args.partial).is_file():  # a stopped sweep: keep its runs, measure the rest
        done = [json.loads(line) for line in Path(args.partial).read_text().splitlines() if line.strip()]
    measured = {(_kind(r), r["network"], r["variant"], r["threads"]) for r in done}
    jobs = [] if args.report_only else [j for j in jobs if j not in measured]
    for kind, model, variant, threads in tqdm(jobs, desc="runs"):
        cmd = [sys.executable, __file__, "--targets", "--_target_child", json.dumps([kind, model, variant, threads]),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--paired", str(args.paired),
               "--infer3d-shape", *map(str, args.infer3d_shape)] + (["--lite"] if args.lite else [])
        out = subprocess.run(cmd + (["--partial", args.partial] if args.partial else []), capture_output=True, text=True,
                             env={**os.environ, **(MALLOC_ENV if kind == "mem" else {})})
        if out.returncode != 0:
            print(f"{model} {variant} ({threads} thread(s)): failed\n{out.stderr[-1500:]}", file=sys.stderr)
            continue
        done.append(json.loads(out.stdout.strip().splitlines()[-1]))
        loads.append(_load())
    memory = {(r["network"], r["variant"], r["threads"]): r["step_peak_mib"] for r in done if _kind(r) == "mem"}
    paired = {(r["network"], r["variant"], r["threads"]): r["pair_ratios"] for r in done if _kind(r) == "pair"}
    for r in done:
        model, variant, threads = r["network"], r["variant"], r["threads"]
        key = (model, variant, threads)
        if _kind(r) in ("mem", "pair"):
            continue
        if key not in best or r["cpu_s"] < best[key]["cpu_s"]:
            best[key] = {**r, "flops": r.get("flops") or best.get(key, {}).get("flops"),
                         "kept_mib": r.get("kept_mib") or best.get(key, {}).get("kept_mib")}
    for key, row in best.items():  # the memory of the "mem" child (fixed mmap threshold) replaces the timing child's
        if key in memory:
            best[key] = {**row, "step_peak_mib_default_malloc": row.get("step_peak_mib"), "step_peak_mib": memory[key]}
    for key, per_round in round_ratios(done).items():
        if key in best:
            best[key] = {**best[key], "round_cpu_ratios": per_round}
    for key, pair_ratios in paired.items():
        if key in best:
            best[key] = {**best[key], "pair_cpu_ratios": pair_ratios}
    results = list(best.values())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"date": stamp, "load_averages": loads, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "iters": args.iters, "warmup": args.warmup, "rounds": args.rounds,
            "lite": args.lite, "infer3d_shape": args.infer3d_shape, "command": " ".join(sys.argv)}
    print_targets(results, meta, _read_json(args.before))
    if args.output:
        from resfu_med.atomic import atomic_write_json

        atomic_write_json(args.output, {**meta, "results": results})
    return 0


def _reference(model: str) -> str:
    """The upsampler a targets row is compared with: the network's own (``TARGETS``), trilinear for the 3D inference."""
    return "trilinear" if model == "infer3d" else TARGETS[model][0]


def _kind(row: dict) -> str:
    """The --targets child a row comes from: ``net`` (time, FLOPs), ``mem`` (memory), ``pair`` (alternating steps
    in one process) or ``infer``."""
    return row.get("kind") or ("infer" if row["network"] == "infer3d" else "net")


def round_ratios(runs: list[dict]) -> dict[tuple, list[float]]:
    """``(network, variant, threads)`` → the CPU-time ratio to the network's reference in each round: the i-th timed
    run of the variant over the i-th of its reference (rounds are interleaved, so the two ran minutes apart at most).
    Their spread is the machine's noise, which the best-of-rounds ratio hides."""
    times: dict[tuple, list[float]] = {}
    for r in runs:
        if _kind(r) in ("net", "infer") and r.get("cpu_s"):
            times.setdefault((r["network"], r["variant"], r["threads"]), []).append(r["cpu_s"])
    out = {}
    for (model, variant, threads), seq in times.items():
        ref = times.get((model, _reference(model), threads))
        if ref is not None and seq is not ref:
            out[(model, variant, threads)] = [t / r for t, r in zip(seq, ref)]
    return out


def _read_json(path: str | None) -> list[dict]:
    return json.loads(Path(path).read_text())["results"] if path else []


def ratios(results: list[dict]) -> dict[tuple, dict]:
    """``(network, variant, threads)`` → the variant's ratios to its network's reference of the same thread count:
    ``cpu``, ``wall``, ``mem`` (step peak memory) and ``flops``."""
    by = {(r["network"], r["variant"], r["threads"]): r for r in results}
    out: dict[tuple, dict] = {}
    for (model, variant, threads), r in by.items():
        ref_name = _reference(model)
        ref = by.get((model, ref_name, threads))
        if ref is None or variant == ref_name:
            continue
        flops_r = by.get((model, variant, 1), {}).get("flops")
        flops_ref = by.get((model, ref_name, 1), {}).get("flops")
        kept_r = by.get((model, variant, 1), {}).get("kept_mib")
        kept_ref = by.get((model, ref_name, 1), {}).get("kept_mib")
        out[(model, variant, threads)] = {
            "cpu": r["cpu_s"] / ref["cpu_s"], "wall": r["wall_s"] / ref["wall_s"],
            "mem": (r["step_peak_mib"] / max(ref["step_peak_mib"], 1.0)) if "step_peak_mib" in r else None,
            "flops": (flops_r / flops_ref) if flops_r and flops_ref else None,
            "gflops": flops_r / 1e9 if flops_r else None, "ref_gflops": flops_ref / 1e9 if flops_ref else None,
            "kept_mib": kept_r, "ref_kept_mib": kept_ref,
            "cpu_s": r["cpu_s"], "ref_cpu_s": ref["cpu_s"], "mem_mib": r.get("step_peak_mib"),
            "ref_mem_mib": ref.get("step_peak_mib"), "rounds": r.get("round_cpu_ratios"),
            "pairs": r.get("pair_cpu_ratios")}
    return out


def print_targets(results: list[dict], meta: dict, before: list[dict]) -> None:
    """The markdown table: per network, variant and thread count, the time (CPU seconds per step; wall in brackets),
    step-memory and forward-FLOP ratios to the network's own upsampler, the target and, with ``--before``, the same
    ratios of the earlier run."""
    now, old = ratios(results), ratios(before)
    print(f"\n{meta['date']}, CPU {meta['cpu']} ({meta['cores']} cores, shared), load averages (1/5/15 min) "
          f"{meta['load_averages'][0]} at the start, {meta['load_averages'][-1]} at the end; median of "
          f"{meta['iters']} fwd+bwd after {meta['warmup']} warm-up, best of {meta['rounds']} round(s)"
          + (" (each round's paired ratio beside it)" if meta["rounds"] > 1 else "") + "\n")
    fmt = lambda v, d=2: "–" if v is None else f"{v:.{d}f}×"  # noqa: E731
    per_round = any(len(r.get("rounds") or []) > 1 for r in now.values())
    pairs = any(r.get("pairs") for r in now.values())
    print("| network (reference) | variant | threads | time ratio, CPU (wall) | " + ("per round, CPU | " if per_round else "")
          + ("same process, alternating: median (range) of the pairs | " if pairs else "")
          + "step memory ratio | kept for backward, MiB | forward GFLOPs (ratio) | target | met | before: time / memory / FLOPs |")
    print("| --- | --- | ---: | ---: | " + ("---: | " if per_round else "") + ("---: | " if pairs else "")
          + "---: | ---: | ---: | ---: | --- | ---: |")
    for key in sorted(now, key=lambda k: (list(TARGETS).index(k[0]) if k[0] in TARGETS else 99, k[2], k[1])):
        model, variant, threads = key
        r = now[key]
        ref = _reference(model)
        limit = 1.5 if model == "infer3d" else TARGETS[model][3]
        met = r["cpu"] <= limit and (r["mem"] is None or r["mem"] <= limit)
        flops = "–" if r["gflops"] is None else f"{r['gflops']:.2f} vs {r['ref_gflops']:.2f} ({100 * (r['flops'] - 1):+.1f} %)"
        # earlier releases' default put ReSFU at every step: "before" of both placements is their resfu
        o = old.get((model, "resfu" if variant in ("resfu", "resfu-full") else variant, threads))
        prev = "–" if not o else f"{fmt(o['cpu'])} / {fmt(o['mem'])} / {fmt(o['flops'])}"
        kept = "–" if threads != 1 or None in (r["kept_mib"], r["ref_kept_mib"]) else f"{r['kept_mib']:.0f} vs {r['ref_kept_mib']:.0f}"
        rounds = " / ".join(f"{v:.2f}" for v in r.get("rounds") or []) or "–"
        p = r.get("pairs")
        pair = f"{fmt(statistics.median(p))} ({min(p):.2f}–{max(p):.2f}, {len(p)} pairs)" if p else "–"
        print(f"| {model} ({ref}) | {variant} | {threads} | {fmt(r['cpu'])} ({fmt(r['wall'])}) | "
              + (f"{rounds} | " if per_round else "") + (f"{pair} | " if pairs else "")
              + f"{fmt(r['mem'])} | {kept} | {flops} | ≤ {limit:.2f}× | {'yes' if met else 'NO'} | {prev} |")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from resfu_med.networks.upsamplers import upsampler_names

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upsamplers", nargs="+", default=None,
                   help="registry names, resfu-4 (TransUNet: ReSFU with final_upsampler='resfu') or resfu-slim "
                        "(MONAI networks: ReSFU with the demo widths) (default: all names; MONAI networks: deconv "
                        "resfu resfu-slim)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    p.add_argument("--size", type=int, default=None,
                   help="image side, or the 3D patch side of the MONAI networks (default: 224; MONAI networks: 64)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations, median reported (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up iterations (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; shared machines)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole sweep, interleaved; the fastest round per upsampler is reported (default: 1)")
    p.add_argument("--model", default="transunet", choices=["transunet", "unet", *MONAI_MODELS],
                   help="TransUNet R50-ViT-B/16, 2D BasicUNet (MONAI widths 32..256), or a 3D MONAI network "
                        "(DynUNet, SwinUNETR, UNETR) (default: transunet)")
    p.add_argument("--lite", action="store_true", help="small config instead of R50-ViT-B/16 / MONAI widths")
    p.add_argument("--unet-widths", default="monai", choices=["monai", "demo", "lite"],
                   help="BasicUNet widths: MONAI's 32..256, the demo preset's 16..128 with slim ReSFU (the upsampler "
                        "study's network), or tiny (default: monai)")
    p.add_argument("--infer-shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="also time resfu-med infer (bilinear and resfu) on a CT volume of this shape (default: off)")
    p.add_argument("--infer-threads", type=int, default=2, help="threads of the infer runs (default: 2)")
    p.add_argument("--output", default=None, help="write the results as JSON here (default: none)")
    p.add_argument("--targets", action="store_true",
                   help="the cost table of docs/benchmarks.md: every network (--networks) at its default "
                        "configuration, ReSFU vs its own upsampler, 1 and 2 threads, FLOPs, 3D inference")
    p.add_argument("--networks", nargs="*", default=list(TARGETS), choices=list(TARGETS),
                   help="--targets: the networks (default: all; none: only the 3D inference pair)")
    p.add_argument("--variants", nargs="*", default=None,
                   help="--targets: variants measured beside the default resfu at 1 thread, e.g. resfu-full "
                        "resfu:pcdc_channels=32 (default: resfu-full; give none to measure only the default)")
    p.add_argument("--report-only", action="store_true",
                   help="--targets: print the table of the --partial file without measuring anything")
    p.add_argument("--paired", type=int, default=0, metavar="N",
                   help="--targets: also time each network's reference and default ReSFU in one process, their "
                        "steps alternating N times (the table adds the median and range of the N paired ratios)")
    p.add_argument("--threads-list", type=int, nargs="+", default=[1, 2], help="--targets: thread counts (1 2)")
    p.add_argument("--infer3d-shape", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"),
                   help="--targets: volume of the 3D sliding-window inference pair (default: 64 256 256)")
    p.add_argument("--no-infer", action="store_true", help="--targets: skip the 3D inference pair")
    p.add_argument("--before", default=None, help="--targets: JSON of an earlier --targets run, shown beside")
    p.add_argument("--partial", default=None,
                   help="--targets: append each finished run as a JSON line to this file, and skip the runs it already "
                        "holds (resumes a stopped sweep) (default: none)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_target_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    monai = args.model in MONAI_MODELS
    if args.upsamplers is None:
        args.upsamplers = ["deconv", "resfu", "resfu-slim"] if monai else list(upsampler_names())
    if args.size is None:
        args.size = 64 if monai else 224
    if monai and args.infer_shape:
        p.error("--infer-shape times the 2D models; for 3D networks run resfu-med infer on a checkpoint")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints a markdown table. Returns the exit code."""
    args = _parse(argv)
    if args._target_child:
        kind, model, variant, threads = json.loads(args._target_child)
        if kind == "infer":
            r = measure_infer3d(variant, args.infer3d_shape, threads, args.lite)
        elif kind == "mem":
            r = measure_memory(model, variant, threads, args.lite)
        elif kind == "pair":
            r = measure_pair(model, variant, threads, args.paired, args.warmup, args.lite)
        else:
            r = measure_target(model, variant, threads, args.iters, args.warmup, args.lite)
        if args.partial:  # one line per finished run: a stopped sweep keeps what it measured
            with open(args.partial, "a") as f:
                f.write(json.dumps({**r, "load": _load()}) + "\n")
        print(json.dumps(r))
        return 0
    if args.targets:
        return run_targets(args)
    if args._child:
        print(json.dumps(measure(args._child, args.batch, args.size, args.iters, args.warmup, args.threads, args.lite,
                                 args.model, args.unet_widths)))
        return 0
    from tqdm import tqdm

    ref = "deconv" if args.model in MONAI_MODELS else "bilinear"  # the original network
    names = list(dict.fromkeys([ref, *args.upsamplers]))  # the reference first
    best: dict[str, dict] = {}
    jobs = [name for _ in range(args.rounds) for name in names]  # interleaved rounds: load changes hit all alike
    for name in tqdm(jobs, desc="upsampler runs"):
        cmd = [sys.executable, __file__, "--_child", name, "--batch", str(args.batch), "--size", str(args.size),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--model", args.model, "--unet-widths", args.unet_widths]
        if args.lite:
            cmd.append("--lite")
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if name not in best or r["time_s"] < best[name]["time_s"]:
            best[name] = r
    results = [best[n] for n in names if n in best]
    base = next(r for r in results if r["upsampler"] == ref)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.model in MONAI_MODELS:
        net_name = {"dynunet": "DynUNet", "swinunetr": "SwinUNETR", "unetr": "UNETR"}[args.model] + "(3D, 9 classes)"
        cfg = f"{'lite' if args.lite else 'MONAI defaults'}, {args.size}³ patch"
    elif args.model == "unet":
        net_name, cfg = "BasicUNet(2D, 9 classes)", f"{'lite' if args.lite else args.unet_widths} widths, {args.size}²"
    else:
        net_name, cfg = "TransUNet(num_classes=9)", "lite" if args.lite else f"R50-ViT-B/16, {args.size}²"
    print(f"\n{net_name}, {cfg}, batch {args.batch}, CPU {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), median of {args.iters} fwd+bwd after {args.warmup} warm-up, best of {args.rounds} "
          f"interleaved round(s); FNS backend {base.get('fns_backend')}; {stamp}\n")
    print(f"| upsampler | params | Δ params vs {ref} | fwd+bwd (s) | time ratio | peak RSS (MiB) | step peak (MiB) | step-memory ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        dp = r["params"] - base["params"]
        print(f"| {r['upsampler']} | {r['params']:,} | {dp:+,} ({100 * dp / base['params']:+.3f} %) | {r['time_s']:.2f} | "
              f"{r['time_s'] / base['time_s']:.2f}× | {r['peak_rss_mib']:.0f} | {r['step_peak_mib']:.0f} | "
              f"{r['step_peak_mib'] / max(base['step_peak_mib'], 1e-9):.2f}× |")
    infer = []
    if args.infer_shape:
        names = [n for n in ("bilinear", "resfu") if n in ["bilinear", *args.upsamplers]]
        with tempfile.TemporaryDirectory(prefix="resfu-bench-infer-") as tmp:
            for name in tqdm(names, desc="infer runs"):
                side = LITE["img_size"] if args.lite and args.model == "transunet" else args.size
                infer.append(measure_infer(args.model, name, side, args.infer_shape, args.infer_threads, Path(tmp),
                                           args.lite, args.unet_widths))
        shape = "×".join(map(str, args.infer_shape))
        print(f"\n`resfu-med infer` of a {shape} (X×Y×Z) int16 CT volume, {args.model} at {args.size}², CPU, "
              f"{args.infer_threads} thread(s), wall time of the whole command incl. reading and writing NIfTI\n")
        print("| upsampler | infer time (s) | time ratio | s per slice | peak RSS (MiB) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in infer:
            print(f"| {r['upsampler']} | {r['seconds']:.1f} | {r['seconds'] / infer[0]['seconds']:.2f}× | "
                  f"{r['seconds'] / args.infer_shape[2]:.2f} | {r['peak_rss_mib']:.0f} |")
    if args.output:
        from resfu_med.atomic import atomic_write_json

        atomic_write_json(args.output, {"date": stamp, "config": vars(args) | {"_child": None}, "results": results,
                                        "infer": infer})
    return 0


if __name__ == "__main__":
    sys.exit(main())
