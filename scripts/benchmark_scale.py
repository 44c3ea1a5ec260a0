"""Scale benchmark (docs/scale.md): parallel prepare, training memory vs dataset size, sharded inference.

Generates a synthetic MSD-format dataset on the fly (small CT-like volumes, several classes), then measures, each
command in its own process (peak RSS = the largest single process of the command, from ``getrusage``; CPU = user +
system seconds of all its processes, which the load of other jobs changes much less than the wall time):

1. ``resfu-med prepare -np 1`` vs ``-np 2`` on ``--cases`` cases: wall time, peak RSS, files and bytes written
   (and that both outputs are byte-identical); then the fixed cost of a run, measured twice: the same command again
   on the finished folder (every case skipped: start-up, the scan, the final files and the exit) and
   ``prepare --help`` (start-up and exit only: importing torch and MONAI). Reported beside the command's speed-up:
   the speed-up of the per-case work, ``(t1 - fixed) / (t2 - fixed)``, and the most any number of processes could
   give with this fixed cost if the per-case work halved exactly, ``t1 / (fixed + (t1 - fixed) / 2)`` (Amdahl);
2. one training epoch (``unet``, fixed ``--cache-gb``) on ``--small`` vs ``--cases`` cases: peak RSS;
3. ``resfu-med infer`` of ``--infer-cases`` volumes: 1 process vs N shards run at once (``--shards``), every process
   with the same ``--shard-threads`` threads (``OMP_NUM_THREADS``), as one process per device would have them: this
   is the sharding's own scaling and what the target is judged on. Beside it, 1 process with torch's default
   threads (all cores), which on a CPU-only machine already uses the cores the shards share out. The fixed cost of a
   shard (start-up, model load, exit) is the same command again on the finished folder (every input skipped).

``--repeat R`` measures the prepare and inference pairs R times, each pair side by side (for a loaded machine); the
load average is recorded before and after every command. ``--steps`` measures a subset (``--steps prepare`` e.g. at a
realistic volume size, ``--shape 32 128 128``); what a step needs from an earlier one (the prepared data, the small
run's checkpoint for inference) is then made without being measured (``--checkpoint`` uses an existing one).

Targets (issue #29): prepare -np 2 >= 1.7x faster; training RSS at --cases within 10 % of --small; 2 shards >= 1.7x.

    python scripts/benchmark_scale.py --work /tmp/scale --cases 1000 --small 100 --infer-cases 200
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

CLI = [sys.executable, "-m", "resfu_med"]


def make_msd(root: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> None:
    """``n`` cases of ``shape`` (Z, Y, X): smooth blobs of 3 organ classes in noisy HU, MSD layout."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    training = []
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        for k in (1, 2, 3):
            c = rng.uniform(-0.5, 0.5, 3)
            lab[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < rng.uniform(0.05, 0.15)] = k
        img = (np.array([-100, 40, 120, 250], np.float32)[lab] + rng.normal(0, 20, shape)).astype(np.int16)
        aff = np.diag([0.8, 0.8, 2.5, 1.0])
        name = f"case_{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(img.transpose(2, 1, 0), aff), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(lab.transpose(2, 1, 0), aff), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "Task99_Scale", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "a", "2": "b", "3": "c"}, "numTraining": n, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))


def measured(cmds: list[list[str]], env: dict[str, str | None] | None = None) -> dict:
    """Run ``cmds`` at once, each under a fresh wrapper process (``env``: variables set for each, ``None`` = unset);
    wall time, the largest process's peak RSS, the CPU seconds of all of them and the load average before and after."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    child_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--_child", "--", *c], stdout=subprocess.PIPE, text=True,
                              env=child_env) for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"failed: {cmds}")
    reports = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    return {"seconds": round(wall, 2), "cpu_seconds": round(sum(r["cpu_s"] for r in reports), 2),
            "peak_rss_mb": round(max(r["max_rss_mb"] for r in reports), 1), "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()]}


def child(cmd: list[str]) -> None:
    # the commands' own lines (infer: one per file) are shown only when a command fails
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rc = done.returncode
    if rc:
        print(done.stderr[-4000:], file=sys.stderr)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its worker processes
    print(json.dumps({"rc": rc, "max_rss_mb": ru.ru_maxrss / 1024, "cpu_s": ru.ru_utime + ru.ru_stime}))
    sys.exit(rc)


def prepare_cmd(raw: Path, out: Path, np_: int) -> list[str]:
    return [*CLI, "prepare", "--dataset", "msd", "--data-root", str(raw), "--output", str(out), "--no-progress",
            "-np", str(np_)]


def speedups(t1: float, t2: float, fixed: float, n: int = 2) -> dict[str, float]:
    """The command's speed-up ``t1 / t2``, that of the per-case work ``(t1 - fixed) / (t2 - fixed)``, and the most
    ``n`` processes can give with this fixed cost (the per-case work divided by ``n`` exactly):
    ``t1 / (fixed + (t1 - fixed) / n)``."""
    return {"speedup": round(t1 / t2, 2), "per_case_speedup": round((t1 - fixed) / max(t2 - fixed, 1e-3), 2),
            "bound": round(t1 / (fixed + max(t1 - fixed, 0.0) / n), 2)}


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    fb = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / f, b / f, shallow=False) for f in fa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (emptied)")
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--infer-cases", type=int, default=200)
    ap.add_argument("--shape", type=int, nargs=3, default=[6, 32, 32], help="training volume size Z Y X")
    ap.add_argument("--infer-shape", type=int, nargs=3, default=[16, 64, 64], help="inference volume size Z Y X")
    ap.add_argument("--cache-gb", type=float, default=0.02, help="training cache budget (the same for both sizes)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (after every step)")
    ap.add_argument("--repeat", type=int, default=1, help="measure the prepare and inference pairs this many times")
    ap.add_argument("--steps", nargs="+", choices=["prepare", "train", "infer"], default=["prepare", "train", "infer"],
                    help="what to measure")
    ap.add_argument("--shards", type=int, nargs="+", default=[2], help="shard counts compared with 1 process")
    ap.add_argument("--shard-threads", type=int, default=1,
                    help="threads of every inference process (1 process and each shard alike)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="checkpoint for the inference step (default: train the small run, not measured)")
    args = ap.parse_args()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env_note = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.processor() or
                platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res: dict = {"env": env_note, "args": {k: str(v) for k, v in vars(args).items()}}
    t = time.perf_counter()
    need_small = "train" in args.steps or ("infer" in args.steps and args.checkpoint is None)
    if "prepare" in args.steps or "train" in args.steps:
        make_msd(work / "raw_big", args.cases, tuple(args.shape))
    if need_small:
        make_msd(work / "raw_small", args.small, tuple(args.shape))
    print(f"generated in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))

    if "prepare" in args.steps:
        runs = []
        for rep in range(args.repeat):
            prep = {}
            for np_ in (1, 2):
                out = work / f"prep_np{np_}"
                shutil.rmtree(out, ignore_errors=True)
                prep[np_] = measured([prepare_cmd(work / "raw_big", out, np_)])
                prep[np_]["files"], prep[np_]["bytes"] = tree_size(out)
                print(f"prepare -np {np_}: {prep[np_]}", file=sys.stderr)
            # the fixed cost: the same command again, every case finished and skipped; and the start-up alone
            prep["rerun"] = measured([prepare_cmd(work / "raw_big", work / "prep_np1", 1)])
            print(f"prepare re-run (nothing to do): {prep['rerun']}", file=sys.stderr)
            prep["startup"] = measured([[*CLI, "prepare", "--help"]])
            print(f"prepare --help (start-up and exit): {prep['startup']}", file=sys.stderr)
            prep.update(speedups(prep[1]["seconds"], prep[2]["seconds"], prep["rerun"]["seconds"]))
            prep["identical"] = same_tree(work / "prep_np1", work / "prep_np2")
            runs.append(prep)
            res["prepare"] = runs
            save()
    if need_small:
        measured([prepare_cmd(work / "raw_small", work / "prep_small", 2)])

    def train_cmd(root: Path, label: str) -> list[str]:
        # the zoom pipeline at a fixed size (the msd preset's default is now the plan pipeline): comparable with the
        # earlier measurements in docs/scale.md
        return [*CLI, "train", "--dataset", "msd", "--data-root", str(root), "--output", str(work / f"run_{label}"),
                "--model", "unet", "--upsampler", "bilinear", "--pipeline", "zoom", "--img-size", "32", "--epochs", "1",
                "--batch-size", "16", "--num-workers", "0", "--no-eval", "--cache-gb", str(args.cache_gb), "--device",
                "cpu", "--no-progress"]

    if "train" in args.steps:
        if not (work / "prep_np1" / "dataset.json").is_file():
            measured([prepare_cmd(work / "raw_big", work / "prep_np1", 2)])
        train = {}
        for label, root in (("small", work / "prep_small"), ("big", work / "prep_np1")):
            shutil.rmtree(work / f"run_{label}", ignore_errors=True)
            train[label] = measured([train_cmd(root, label)])
            train[label]["train_slices"] = sum(1 for _ in (root / "train_npz").glob("*.npz"))
            print(f"train {label}: {train[label]}", file=sys.stderr)
        res["train"] = train
        res["train_rss_ratio"] = round(train["big"]["peak_rss_mb"] / train["small"]["peak_rss_mb"], 3)
        save()

    if "infer" in args.steps:
        make_msd(work / "raw_infer", args.infer_cases, tuple(args.infer_shape), seed=1)
        ckpt = args.checkpoint or work / "run_small" / "last.pt"
        if not ckpt.is_file():
            measured([train_cmd(work / "prep_small", "small")])
        base = [*CLI, "infer", "-i", str(work / "raw_infer" / "imagesTr"), "--checkpoint", str(ckpt), "--device",
                "cpu", "--no-progress"]
        threads = {"OMP_NUM_THREADS": str(args.shard_threads)}

        def infer_cmds(out: Path, n: int) -> list[list[str]]:
            if n == 1:  # --continue-prediction: a re-run skips the finished outputs, as a shard does
                return [[*base, "-o", str(out), "--continue-prediction"]]
            return [[*base, "-o", str(out), "--shard", f"{i}/{n}"] for i in range(n)]

        runs = []
        for rep in range(args.repeat):
            inf: dict = {"threads_per_process": args.shard_threads}
            for n in (1, *args.shards):
                out = work / f"infer{n}"
                shutil.rmtree(out, ignore_errors=True)
                inf[str(n)] = measured(infer_cmds(out, n), env=threads)
                # the fixed cost of this setting: the same processes again, every input finished and skipped
                inf[str(n)]["rerun"] = measured(infer_cmds(out, n), env=threads)
                print(f"infer {n} x {args.shard_threads} thread(s): {inf[str(n)]}", file=sys.stderr)
            for n in args.shards:
                inf[f"speedup_{n}"] = speedups(inf["1"]["seconds"], inf[str(n)]["seconds"],
                                               inf["1"]["rerun"]["seconds"], n)
                inf[f"identical_{n}"] = same_tree(work / "infer1", work / f"infer{n}")
            # beside it: one process with torch's default threads (all cores)
            shutil.rmtree(work / "infer1d", ignore_errors=True)
            inf["1_default_threads"] = measured([[*base, "-o", str(work / "infer1d")]], env={"OMP_NUM_THREADS": None})
            inf["1_default_threads"]["identical"] = same_tree(work / "infer1", work / "infer1d")
            print(f"infer: {inf}", file=sys.stderr)
            runs.append(inf)
            res["infer"] = runs
            save()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_child":
        child(sys.argv[3:])
    else:
        main()
