"""Scale benchmark (docs/scale.md): parallel prepare, training memory vs dataset size, sharded inference.

Generates a synthetic MSD-format dataset on the fly (small CT-like volumes, several classes), then measures, each
command in its own process (peak RSS = the largest single process of the command, from ``getrusage``):

1. ``resfu-med prepare -np 1`` vs ``-np 2`` on ``--cases`` cases: wall time, peak RSS, files and bytes written
   (and that both outputs are byte-identical); then the same command again on the finished folder (every case
   skipped): the fixed cost of a run (start-up, mostly importing torch and MONAI, the scan and the final files), so
   the speed-up of the per-case work, ``(t1 - fixed) / (t2 - fixed)``, is reported beside the command's;
2. one training epoch (``unet``, fixed ``--cache-gb``) on ``--small`` vs ``--cases`` cases: peak RSS;
3. ``resfu-med infer`` of ``--infer-cases`` volumes with 1 process vs 2 shards run at once: wall time. Threads are
   set as one process per device would have them: the single process keeps torch's default (all cores), each of the
   2 shards gets ``OMP_NUM_THREADS = cores // 2`` (``torchrun`` sets 1 per process), so neither run oversubscribes
   the cores.

``--repeat R`` measures the prepare and inference pairs R times, each pair side by side (for a loaded machine); the
load average is recorded before and after every command. ``--steps`` measures a subset (``--steps prepare`` e.g. at a
realistic volume size, ``--shape 32 128 128``); what a step needs from an earlier one (the prepared data, the small
run's checkpoint for inference) is then made without being measured.

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


def measured(cmds: list[list[str]], env: dict[str, str] | None = None) -> dict:
    """Run ``cmds`` at once, each under a fresh wrapper process (``env``: variables set for each); wall time, the
    largest process's peak RSS and the load average before and after."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    child_env = {**os.environ, **(env or {})}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--_child", "--", *c], stdout=subprocess.PIPE, text=True,
                              env=child_env) for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"failed: {cmds}")
    rss = max(json.loads(o.strip().splitlines()[-1])["max_rss_mb"] for o in outs)
    return {"seconds": round(wall, 2), "peak_rss_mb": round(rss, 1), "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()]}


def child(cmd: list[str]) -> None:
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"rc": rc, "max_rss_mb": ru.ru_maxrss / 1024}))
    sys.exit(rc)


def prepare_cmd(raw: Path, out: Path, np_: int) -> list[str]:
    return [*CLI, "prepare", "--dataset", "msd", "--data-root", str(raw), "--output", str(out), "--no-progress",
            "-np", str(np_)]


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
    args = ap.parse_args()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env_note = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.processor() or
                platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res: dict = {"env": env_note, "args": {k: str(v) for k, v in vars(args).items()}}
    t = time.perf_counter()
    make_msd(work / "raw_big", args.cases, tuple(args.shape))
    if "train" in args.steps or "infer" in args.steps:
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
            # the fixed cost: the same command again, every case finished and skipped
            prep["rerun"] = measured([prepare_cmd(work / "raw_big", work / "prep_np1", 1)])
            print(f"prepare re-run (nothing to do): {prep['rerun']}", file=sys.stderr)
            fixed = prep["rerun"]["seconds"]
            prep["speedup"] = round(prep[1]["seconds"] / prep[2]["seconds"], 2)
            prep["per_case_speedup"] = round((prep[1]["seconds"] - fixed) / max(prep[2]["seconds"] - fixed, 1e-3), 2)
            prep["identical"] = same_tree(work / "prep_np1", work / "prep_np2")
            runs.append(prep)
            res["prepare"] = runs
            save()
    if "train" in args.steps or "infer" in args.steps:
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
        ckpt = work / "run_small" / "last.pt"
        if not ckpt.is_file():
            measured([train_cmd(work / "prep_small", "small")])
        base = [*CLI, "infer", "-i", str(work / "raw_infer" / "imagesTr"), "--checkpoint", str(ckpt), "--device",
                "cpu", "--no-progress"]
        shard_threads = max(1, (os.cpu_count() or 2) // 2)
        runs = []
        for rep in range(args.repeat):
            for d in ("infer1", "infer2"):
                shutil.rmtree(work / d, ignore_errors=True)
            inf = {"1": measured([[*base, "-o", str(work / "infer1")]]),
                   "2": measured([[*base, "-o", str(work / "infer2"), "--shard", f"{i}/2"] for i in range(2)],
                                 env={"OMP_NUM_THREADS": str(shard_threads)})}
            inf["2"]["threads_per_shard"] = shard_threads
            inf["speedup"] = round(inf["1"]["seconds"] / inf["2"]["seconds"], 2)
            inf["identical"] = same_tree(work / "infer1", work / "infer2")
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
