"""Peak memory and time of one 3D training step: BasicUNet(spatial_dims=3) with ReSFU vs trilinear upsampling.

One step = forward, 0.5 CE + 0.5 Dice loss (the trainer's ``DiceCELoss``), backward and an SGD update on a batch of
``--batch`` one-channel patches of ``--patch`` voxels — what ``resfu-med train --model unet3d`` does per iteration.
Each (upsampler, width) runs in a FRESH subprocess. On CPU the peak is the process's resident-set high-water mark
(``VmHWM``, reset via ``/proc/self/clear_refs`` after the model, optimizer and batch exist) minus its resident set at
that point: the memory the step itself adds (activations, gradients, workspace); the parameters and optimizer state
are reported separately (they are small). On CUDA it is ``torch.cuda.max_memory_allocated`` over the step minus the
allocation before it. The first step is the measured one for memory; time is the median of ``--repeats`` steps.

Examples:
    python scripts/benchmark_train3d.py                                   # 96^3 patch, batch 1, CPU
    python scripts/benchmark_train3d.py --device cuda --repeats 20        # on a GPU
    python scripts/benchmark_train3d.py --patch 32 96 96 --variants trilinear resfu-slim --features 16 16 32 64 128 16   # demo
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling benchmark_fns.py, also when loaded by path (tests)
from benchmark_fns import rss_kib  # noqa: E402

from resfu_med.engine.config import PRESETS  # noqa: E402

__all__ = ["VARIANTS", "worker", "main"]

#: name -> (upsampler, ReSFU constructor options)
VARIANTS = {
    "trilinear": ("bilinear", {}),  # the registry's "bilinear" is trilinear for spatial_dims=3
    "resfu": ("resfu", {}),  # ReSFU's default widths (embed 32, PCDC 128)
    "resfu-ckpt": ("resfu", {"use_checkpoint": True}),  # default widths, similarity blocks recomputed in backward
    "resfu-slim": ("resfu", dict(PRESETS["demo"]["model"]["kwargs"]["upsampler_kwargs"])),  # the demo preset's
}


def worker(variant: str, patch: list[int], batch: int, features: list[int], device: str, repeats: int,
           threads: int) -> dict:
    """One variant in this (fresh) process: build, one measured step, ``repeats - 1`` more for the time."""
    import torch
    from monai.losses import DiceCELoss

    from resfu_med.networks import BasicUNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    upsample, options = VARIANTS[variant]
    classes = 9
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=classes, features=tuple(features), upsample=upsample,
                    upsampler_kwargs=options or None).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_ce=0.5, lambda_dice=0.5)
    x = torch.rand(batch, 1, *patch, device=device)
    y = torch.randint(0, classes, (batch, 1, *patch), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    params = sum(p.numel() for p in net.parameters())
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        step()  # the optimizer state exists from here on, as in a training run
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
            fh.write("5")
    t0 = time.perf_counter()
    step()
    sync()
    times = [time.perf_counter() - t0]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else rss_kib("VmHWM") * 1024
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "params": params, "step_s": statistics.median(times),
            "step_extra_mib": (peak - base) / 2**20, "params_mib": params * 4 / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="upsamplers/widths to run (default: all)")
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96], metavar=("Z", "Y", "X"),
                        help="patch size (default: 96 96 96)")
    parser.add_argument("--batch", type=int, default=1, help="patches per step (default: 1)")
    parser.add_argument("--features", type=int, nargs=6, default=[32, 32, 64, 128, 256, 32],
                        help="BasicUNet features (default: MONAI's 32 32 64 128 256 32)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default: cpu)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps; the median is reported (default: 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", metavar="VARIANT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        r = worker(args.worker, args.patch, args.batch, args.features, args.device, args.repeats, args.threads)
        print(json.dumps(r))
        return 0

    from tqdm import tqdm

    results = {}
    for variant in tqdm(args.variants, desc="3D training step", unit="variant"):
        cmd = [sys.executable, __file__, "--worker", variant, "--patch", *map(str, args.patch), "--batch",
               str(args.batch), "--features", *map(str, args.features), "--device", args.device, "--repeats",
               str(args.repeats), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if proc.returncode != 0:
            print(f"{variant} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])

    import torch

    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads")
    print(f"\n{where}; torch {torch.__version__}; patch {'×'.join(map(str, args.patch))}, batch {args.batch}, "
          f"features {args.features}")
    print("| variant | params | step time (s) | peak extra memory of one step (MiB) | vs trilinear |")
    print("| --- | ---: | ---: | ---: | ---: |")
    ref = results.get("trilinear")
    for name, r in results.items():
        ratio = f"{r['step_extra_mib'] / ref['step_extra_mib']:.2f}×" if ref else "–"
        print(f"| {name} | {r['params']:,} | {r['step_s']:.2f} | {r['step_extra_mib']:.0f} | {ratio} |")
    if args.json:
        from resfu_med.atomic import atomic_write_json

        atomic_write_json(args.json, {"args": {k: v for k, v in vars(args).items() if k != "worker"},
                                      "machine": where, "torch": torch.__version__, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
