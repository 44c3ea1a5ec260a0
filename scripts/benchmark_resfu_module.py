"""Time and peak memory of one ReSFU module, forward + backward, on CPU (or CUDA with ``--device cuda``).

Each configuration runs in a fresh subprocess so its peak RSS (``ru_maxrss``; on CUDA ``max_memory_allocated``) is its
own. Reports the median of ``--repeats`` timed forward+backward passes after one warm-up, and the FNS backend in use.

    python scripts/benchmark_resfu_module.py                          # the default 2D and 3D table
    python scripts/benchmark_resfu_module.py --case 8,256,64,28,56    # N,C,c,h,H (2D) -- repeatable
    python scripts/benchmark_resfu_module.py --case3d 1,32,32,12x24x24,24x48x48 --checkpoint
    python scripts/benchmark_resfu_module.py --profile 2,64,32,112,224 --threads 1   # fwd+bwd per block (+ torch.profiler)
    python scripts/benchmark_resfu_module.py --old --threads 1        # before (frozen v1 module) vs now, side by side

``--old`` (run from a source checkout) also times the frozen module of before issue #27's exact rewrites
(``tests/networks/resfu_reference_v1.py``, same constructor), alternating old and new per case, and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])

CHILD = r"""
import json, resource, statistics, sys, time
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from resfu_med.networks import ReSFU
from resfu_med.ops import backend
if args["old"]:
    sys.path.insert(0, args["root"])
    from tests.networks.resfu_reference_v1 import ReSFUv1 as ReSFU
else:
    ReSFU._fuse_blocks = args["fused"]
dev = torch.device(args["device"])
n, c_in, c_g, lr, hr = args["n"], args["c"], args["cg"], args["lr"], args["hr"]
model = ReSFU(c_in, c_g, spatial_dims=len(lr), use_checkpoint=args["checkpoint"]).to(dev)
x = torch.randn(n, c_in, *lr, device=dev, requires_grad=True)
g = torch.randn(n, c_g, *hr, device=dev, requires_grad=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
times = []
for i in range(args["repeats"] + 1):
    if dev.type == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = model(x, g)
    out.backward(torch.ones_like(out))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    if i:
        times.append(time.perf_counter() - t)
    x.grad = g.grad = None
    model.zero_grad(set_to_none=True)
peak = (torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
print(json.dumps({"seconds": statistics.median(times), "peak_mib": peak, "backend": backend(dev)}))
"""

PROFILE = r"""
import json, statistics, sys, time
import torch
import torch.nn.functional as F
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from resfu_med.networks import ReSFU
from resfu_med.networks.resfu import _prescale, border_mask, upsampling_dilation
from resfu_med.ops import fns_gather
n, c_in, c_g, lr, hr = args["n"], args["c"], args["cg"], tuple(args["lr"]), tuple(args["hr"])
m = ReSFU(c_in, c_g, spatial_dims=len(lr))
x, g = torch.randn(n, c_in, *lr), torch.randn(n, c_g, *hr)
s = upsampling_dilation(hr, lr)
mode = "bilinear" if len(lr) == 2 else "trilinear"
with torch.no_grad():  # inputs of every stage, computed once
    q = m.proj_q(m.norm_guide(g)); k = m.proj_k(m.norm_x(x))
    k_up = F.interpolate(k, size=hr, mode=mode, align_corners=False)
    q_gf = m.guided_filter(q, k_up); q_gs = m.gaussian(q)
    scores = m.semantic_block(q_gf, k_up, s) + m.detail_block(q, q_gs, s)
    attn = torch.softmax(scores, 1)
stages = {
    "prescale (both inputs)": (lambda a, b: (_prescale(a), _prescale(b)), (g, x)),
    "norms + projections": (lambda a, b: (m.proj_q(m.norm_guide(a)), m.proj_k(m.norm_x(b))), (g, x)),
    "key upsampling": (lambda a: F.interpolate(a, size=hr, mode=mode, align_corners=False), (k,)),
    "guided filter": (lambda a, b: m.guided_filter(a, b), (q, k_up)),
    "gaussian": (lambda a: m.gaussian(a), (q,)),
    "semantic PCDC block": (lambda a, b: m.semantic_block(a, b, s), (q_gf, k_up)),
    "detail PCDC block": (lambda a, b: m.detail_block(a, b, s), (q, q_gs)),
    "border mask + softmax": (lambda a: torch.softmax(a.masked_fill(~border_mask(hr, s, m.kernel_size), -1e30), 1), (scores,)),
    "FNS gather": (lambda a, b: fns_gather(a, b), (attn, x)),
    "whole module": (lambda a, b: m(a, b), (x, g)),
    "bilinear upsampling (comparison)": (lambda a: F.interpolate(a, size=hr, mode=mode, align_corners=False), (x,)),
}
rows = {}
for name, (fn, inputs) in stages.items():
    times = []
    for i in range(args["repeats"] + 1):
        ins = [t.detach().clone().requires_grad_() for t in inputs]
        t0 = time.perf_counter()
        out = fn(*ins)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward([o for o in outs], [torch.ones_like(o) for o in outs])
        if i:
            times.append(time.perf_counter() - t0)
    rows[name] = statistics.median(times)
print(json.dumps(rows))
"""

DEFAULT_2D = ["8,256,64,28,56", "8,64,64,56,112", "2,256,64,14,112"]
DEFAULT_3D = ["1,32,32,12x24x24,24x48x48"]


def _parse(case: str, dims: int) -> dict:
    n, c, cg, lr, hr = case.split(",")
    size = (lambda s: [int(v) for v in s.split("x")]) if dims == 3 else (lambda s: [int(s)] * 2)
    return {"n": int(n), "c": int(c), "cg": int(cg), "lr": size(lr), "hr": size(hr)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", help="2D case N,C,c,h,H (default: %s)" % " ".join(DEFAULT_2D))
    ap.add_argument("--case3d", action="append", help="3D case N,C,c,dxhxw,DxHxW (default: %s)" % " ".join(DEFAULT_3D))
    ap.add_argument("--checkpoint", action="store_true", help="also run every case with use_checkpoint=True")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (default 3)")
    ap.add_argument("--old", action="store_true", help="also time the frozen module of before #27 (source checkout)")
    ap.add_argument("--fused", action="store_true", help="current module with both PCDC blocks in one pass (ReSFU._fuse_blocks)")
    ap.add_argument("--profile", help="2D case N,C,c,h,H: fwd+bwd time of every block of the module on its own")
    args = ap.parse_args()
    if args.profile:
        job = dict(_parse(args.profile, 2), threads=args.threads, repeats=args.repeats)
        res = subprocess.run([sys.executable, "-c", PROFILE, json.dumps(job)], capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr)
        times = json.loads(res.stdout.strip().splitlines()[-1])
        whole = times["whole module"]
        print(f"ReSFU fwd+bwd per block, case {args.profile}, {args.threads} thread(s), median of {args.repeats}")
        print("| block | fwd+bwd ms | share of the module |")
        print("| --- | ---: | ---: |")
        for name, t in times.items():
            print(f"| {name} | {t * 1e3:.1f} | {t / whole:.0%} |")
        return
    cases = [_parse(c, 2) for c in (args.case or ([] if args.case3d else DEFAULT_2D))]
    cases += [_parse(c, 3) for c in (args.case3d or ([] if args.case else DEFAULT_3D))]

    def run(case: dict, ckpt: bool, old: bool) -> dict | str:
        job = dict(case, checkpoint=ckpt, device=args.device, threads=args.threads, repeats=args.repeats, old=old, root=ROOT,
                   fused=args.fused)
        res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], capture_output=True, text=True)
        if res.returncode:
            return res.stderr.strip().splitlines()[-1]
        return json.loads(res.stdout.strip().splitlines()[-1])

    if args.old:
        print("| N | C | c | LR → HR | checkpoint | before s | now s | time now/before | before MiB | now MiB | memory now/before |")
        print("| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    else:
        print("| N | C | c | LR → HR | checkpoint | fwd+bwd s | peak MiB | FNS backend |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in cases:
        shape = "x".join(map(str, case["lr"])) + " → " + "x".join(map(str, case["hr"]))
        for ckpt in ([False, True] if args.checkpoint else [False]):
            head = f"| {case['n']} | {case['c']} | {case['cg']} | {shape} | {ckpt} |"
            if args.old:
                before, now = run(case, ckpt, True), run(case, ckpt, False)
                if isinstance(before, str) or isinstance(now, str):
                    print(f"{head} failed: {before if isinstance(before, str) else now} |")
                    continue
                print(
                    f"{head} {before['seconds']:.3f} | {now['seconds']:.3f} | {now['seconds'] / before['seconds']:.2f} | "
                    f"{before['peak_mib']:.0f} | {now['peak_mib']:.0f} | {now['peak_mib'] / max(before['peak_mib'], 1e-9):.2f} |"
                )
                continue
            r = run(case, ckpt, False)
            if isinstance(r, str):
                print(f"{head} failed: {r} |")
                continue
            print(f"{head} {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['backend']} |")


if __name__ == "__main__":
    main()
