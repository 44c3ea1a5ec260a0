"""Benchmark TransUNet with each decoder upsampler: parameters, forward+backward time and peak memory on CPU.

Every upsampler is measured in its own fresh subprocess (so peak resident memory is not inherited from the previous
one); times and memory are reported as ratios to the bilinear (original) TransUNet of the same run. The ReSFU goal
(issue 4) is time ≤ 1.15× bilinear, and a parameter overhead well under 1 % of the ~105 M.

Examples:
    python scripts/benchmark_networks.py                       # paper size: batch 2, 224², all upsamplers
    python scripts/benchmark_networks.py --upsamplers bilinear resfu resfu-3 --rounds 3   # interleaved, best of 3
    python scripts/benchmark_networks.py --lite --iters 2       # small config, seconds (a smoke test)
    python scripts/benchmark_networks.py --output bench.json    # also write the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

__all__ = ["main", "measure"]

LITE = dict(img_size=64, vit_depth=1, hidden_size=64, mlp_dim=128, num_heads=4, resnet_layers=(1, 1, 1),
            resnet_width=32, head_channels=64, decoder_channels=(32, 32, 16, 16), stem_channels=16)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure(name: str, batch: int, size: int, iters: int, warmup: int, threads: int, lite: bool) -> dict:
    """Build TransUNet(num_classes=9, upsampler=name) and time forward+backward (run in a fresh process)."""
    import torch

    from resfu_med.networks import TransUNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = dict(LITE) if lite else {"img_size": size}
    if name == "resfu-3":  # three ReSFU, the last (full-resolution) step bilinear
        cfg["final_upsampler"] = "bilinear"
    net = TransUNet(9, upsampler=name.split("-")[0], **cfg).train()
    params = sum(p.numel() for p in net.parameters())
    side = cfg["img_size"]
    x = torch.rand(batch, 1, side, side)
    target = torch.randint(0, 9, (batch, side, side))
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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from resfu_med.networks.upsamplers import upsampler_names

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upsamplers", nargs="+", default=list(upsampler_names()),
                   help="registry names, or resfu-3 for ReSFU with final_upsampler='bilinear' (default: all names)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    p.add_argument("--size", type=int, default=224, help="image side (default: 224)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations, median reported (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up iterations (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; shared machines)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole sweep, interleaved; the fastest round per upsampler is reported (default: 1)")
    p.add_argument("--lite", action="store_true", help="small TransUNet config instead of R50-ViT-B/16")
    p.add_argument("--output", default=None, help="write the results as JSON here (default: none)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints a markdown table. Returns the exit code."""
    args = _parse(argv)
    if args._child:
        print(json.dumps(measure(args._child, args.batch, args.size, args.iters, args.warmup, args.threads, args.lite)))
        return 0
    from tqdm import tqdm

    names = list(dict.fromkeys(["bilinear", *args.upsamplers]))  # bilinear first: the reference
    best: dict[str, dict] = {}
    jobs = [name for _ in range(args.rounds) for name in names]  # interleaved rounds: load changes hit all alike
    for name in tqdm(jobs, desc="upsampler runs"):
        cmd = [sys.executable, __file__, "--_child", name, "--batch", str(args.batch), "--size", str(args.size),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)]
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
    base = next(r for r in results if r["upsampler"] == "bilinear")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cfg = "lite" if args.lite else f"R50-ViT-B/16, {args.size}²"
    print(f"\nTransUNet(num_classes=9), {cfg}, batch {args.batch}, CPU {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), median of {args.iters} fwd+bwd after {args.warmup} warm-up, best of {args.rounds} "
          f"interleaved round(s); FNS backend {base.get('fns_backend')}; {stamp}\n")
    print("| upsampler | params | Δ params vs bilinear | fwd+bwd (s) | time ratio | peak RSS (MiB) | step peak (MiB) | step-memory ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        dp = r["params"] - base["params"]
        print(f"| {r['upsampler']} | {r['params']:,} | {dp:+,} ({100 * dp / base['params']:+.3f} %) | {r['time_s']:.2f} | "
              f"{r['time_s'] / base['time_s']:.2f}× | {r['peak_rss_mib']:.0f} | {r['step_peak_mib']:.0f} | "
              f"{r['step_peak_mib'] / max(base['step_peak_mib'], 1e-9):.2f}× |")
    if args.output:
        from resfu_med.atomic import atomic_write_json

        atomic_write_json(args.output, {"date": stamp, "config": vars(args) | {"_child": None}, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
