"""The upsampler study: BasicUNet with each upsampler, TransUNet-lite bilinear vs ReSFU, and ReSFU's §5.3 ablations,
trained on the demo data with identical seeds and schedule, evaluated with the medpy (TransUNet) protocol.

Every run trains with :class:`resfu_med.engine.trainer.Trainer` (the ``resfu-med train`` engine), validates each epoch
on the first ``--val-cases`` demo test volumes (the demo has no separate validation split, so NO checkpoint is
selected on them: the run's final ``last.pt`` is evaluated), then is evaluated on all demo test volumes with
:func:`resfu_med.engine.evaluator.evaluate_model`. Each run's result is written atomically to
``OUT/results/<run>.json`` as soon as it finishes; a rerun skips finished runs and resumes an interrupted one from its
``last.pt``. Several processes may run the same command on one ``OUT`` at once: each run is claimed with a file lock
(``OUT/locks``), so they share the work (on 2 cores, two 1-thread processes use both cores; the demo's small convs do
not scale to 2 threads in one process). Finally it writes ``OUT/study.md`` (per-class Dice/HD95, mean ± std over
seeds), ``OUT/dice_curves.png`` and ``OUT/montage.png`` (image, ground truth, bilinear and ReSFU predictions, and the last decoder upsampler's output
feature, first principal component over channels, like paper Fig. 19).

Examples:
    python scripts/upsampler_study.py --output runs/study                       # the full study, one process
    python scripts/upsampler_study.py --output runs/study & \\
        python scripts/upsampler_study.py --output runs/study; wait   # two processes share the runs (2 cores, ~1 h)
    python scripts/upsampler_study.py --output runs/study --report-only          # tables and figures only
    python scripts/upsampler_study.py --output runs/study-r --seeds 0 --groups unet --upsamplers bilinear resfu \\
        --epochs 3 --train-stride 10 --batch-size 4 --img-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from resfu_med.engine.config import PRESETS
from resfu_med.networks import upsampler_names

__all__ = ["UPSAMPLERS", "ABLATIONS", "TRANSUNET_LITE", "plan_runs", "run_one", "summarise", "plot_curves",
           "montage", "main"]

#: The upsampler registry's names, baselines first and ReSFU last (the order of tables and plots).
UPSAMPLERS = tuple(sorted(upsampler_names(), key=lambda name: name == "resfu"))
#: paper §5.3 on the BasicUNet (ReSFU constructor switches)
ABLATIONS = {
    "no-qGF": {"use_guided_filter": False},
    "no-qGS": {"use_gaussian": False},
    "inner-product": {"similarity": "inner_product"},
    "no-FNS": {"fine_grained": False},
}
_DEMO_NET = PRESETS["demo"]["model"]["kwargs"]
UNET_FEATURES = list(_DEMO_NET["features"])  # the demo preset's BasicUNet widths
#: ReSFU widths per ``--resfu-width``. "slim" is the demo preset's ReSFU, sized for decoder features of 16-64
#: channels (the defaults are sized for TransUNet's 256-channel features: at 96x96 on 1 CPU thread they cost 4x a
#: slim ReSFU step, which would leave the hour-long study ~100 iterations per run).
RESFU_WIDTHS = {"slim": dict(_DEMO_NET["upsampler_kwargs"]), "default": {}}
#: A TransUNet small enough for 2 CPU cores: 2 ViT blocks of width 128, one bottleneck per ResNet stage.
TRANSUNET_LITE = {"vit_depth": 2, "hidden_size": 128, "mlp_dim": 256, "num_heads": 4, "resnet_layers": [1, 1, 1],
                  "resnet_width": 32, "head_channels": 64, "decoder_channels": [64, 32, 16, 16], "stem_channels": 16}
GROUPS = ("unet", "transunet", "ablation")


def plan_runs(seeds, groups, upsamplers, resfu_width: str = "slim") -> list[dict[str, Any]]:
    """The runs of the study: ``{"id", "variant", "seed", "model": {...}}``, same order for every seed.

    Every ReSFU run (BasicUNet, TransUNet-lite and the ablations) gets the widths ``RESFU_WIDTHS[resfu_width]``; an
    ablation adds its switch on top.
    """
    width = RESFU_WIDTHS[resfu_width]

    def kwargs(base: dict[str, Any], up: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        up_kw = {**width, **(extra or {})} if up == "resfu" else {}
        return {**base, "upsampler_kwargs": up_kw} if up_kw else dict(base)

    def every_step(up: str) -> dict[str, Any]:
        # Like for like: every upsampler at all four BasicUNet steps (ReSFU's default keeps MONAI's transposed
        # convolution at the full-resolution step, docs/networks.md), as the study was designed and measured.
        return {"features": UNET_FEATURES, "final_upsampler": up}

    runs = []
    for seed in seeds:
        if "unet" in groups:
            for up in upsamplers:
                runs.append({"variant": f"unet/{up}", "model": {
                    "name": "unet", "upsampler": up, "kwargs": kwargs(every_step(up), up)}})
        if "transunet" in groups:
            for up in ("bilinear", "resfu"):
                runs.append({"variant": f"transunet-lite/{up}",
                             "model": {"name": "transunet", "upsampler": up, "kwargs": kwargs(TRANSUNET_LITE, up)}})
        if "ablation" in groups:
            for name, kw in ABLATIONS.items():
                runs.append({"variant": f"unet/resfu {name}", "model": {
                    "name": "unet", "upsampler": "resfu", "kwargs": kwargs(every_step("resfu"), "resfu", kw)}})
        for r in runs:
            r.setdefault("seed", seed)
    for r in runs:
        r["id"] = f"{r['variant'].replace('/', '-').replace(' ', '-')}-s{r['seed']}"
    return runs


def run_one(run: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; returns its result dict (also written to ``out/results``)."""
    import torch

    from resfu_med.atomic import atomic_write_json
    from resfu_med.data import get_dataset
    from resfu_med.engine.checkpoint import load_model
    from resfu_med.engine.config import resolve_config
    from resfu_med.engine.evaluator import evaluate_model
    from resfu_med.engine.preparation import complete_config, prepare_run_dir
    from resfu_med.engine.trainer import Trainer

    run_dir = out / "runs" / run["id"]
    resume = (run_dir / "last.pt").exists()
    overrides = {
        "seed": run["seed"], "device": "cpu", "model": run["model"],
        "data": {"img_size": args.img_size, "num_workers": 0, "val_split": "test", "val_cases": args.val_cases},
        "train": {"epochs": args.epochs, "max_iters": args.max_iters, "batch_size": args.batch_size,
                  "lr": args.lr, "num_images": 0, "checkpoint_every": 0, "eval": True, "val_every": 1},
    }
    config = resolve_config("demo", overrides=overrides)
    # The run's model exactly: the demo preset's kwargs (e.g. its slim ReSFU options) must not leak into other
    # upsamplers or change the study's ReSFU (full default widths).
    config["model"] = {**config["model"], **json.loads(json.dumps(run["model"]))}
    config = complete_config(config)
    prepare_run_dir(run_dir, resume=resume, overwrite=not resume)
    torch.set_num_threads(args.threads)
    train_data = None
    if args.train_stride > 1:  # every k-th training slice: shorter epochs, so reduced runs still get val curves
        from torch.utils.data import Subset

        from resfu_med.data import get_transforms

        d = config["data"]
        full = get_dataset("demo", d["root"], "train", get_transforms("demo", "train", img_size=d["img_size"]),
                           progress=False)
        train_data = Subset(full, range(0, len(full), args.train_stride))
    t0 = time.perf_counter()
    trainer = Trainer(config, run_dir, resume=resume, train_data=train_data, progress=not args.no_progress)
    trainer.fit()
    train_s = time.perf_counter() - t0
    model, cfg = load_model(run_dir / "last.pt")
    test = get_dataset("demo", cfg["data"]["root"], "test", progress=False)
    t0 = time.perf_counter()
    res = evaluate_model(model, test, cfg, progress=not args.no_progress)
    dice, hd95 = res.transunet.class_means()
    history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else []
    result = {
        **{k: run[k] for k in ("id", "variant", "seed", "model")},
        "label_names": list(cfg["data"]["label_names"]), "dice": dice.tolist(), "hd95": hd95.tolist(),
        "mean_dice": float(np.nanmean(dice)), "mean_hd95": float(np.nanmean(hd95)),
        "params": sum(p.numel() for p in model.parameters()), "iterations": trainer.iteration,
        "train_s": train_s, "eval_s": time.perf_counter() - t0, "failures": res.failures, "history": history,
        "schedule": {k: getattr(args, k) for k in ("epochs", "max_iters", "batch_size", "lr", "img_size", "threads",
                                                   "train_stride", "val_cases", "resfu_width")},
    }
    atomic_write_json(out / "results" / f"{run['id']}.json", result)
    return result


def _fmt(values: list[float], digits: int) -> str:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return "–"
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}" if a.size > 1 else f"{a[0]:.{digits}f}"


def summarise(results: list[dict[str, Any]]) -> str:
    """Markdown: per variant, per-class Dice (%) and HD95 (voxels), mean ± std (population) over seeds."""
    if not results:
        return "(no finished runs)\n"
    names = results[0]["label_names"]
    variants: dict[str, list[dict]] = {}
    for r in results:
        variants.setdefault(r["variant"], []).append(r)
    head = "| variant | seeds | params | mean Dice % | mean HD95 | " + " | ".join(names) + " |"
    lines = ["Dice % per class (HD95 in voxels below), mean ± std over seeds:", "", head,
             "| --- " * (5 + len(names)) + "|"]
    for v, rs in variants.items():
        cells = [_fmt([100 * r["dice"][j] for r in rs], 1) for j in range(len(names))]
        lines.append(f"| {v} | {len(rs)} | {rs[0]['params']} | {_fmt([100 * r['mean_dice'] for r in rs], 1)} | "
                     f"{_fmt([r['mean_hd95'] for r in rs], 1)} | " + " | ".join(cells) + " |")
    lines += ["", "HD95 (voxels) per class:", "", "| variant | " + " | ".join(names) + " |",
              "| --- " * (1 + len(names)) + "|"]
    for v, rs in variants.items():
        lines.append(f"| {v} | " + " | ".join(_fmt([r["hd95"][j] for r in rs], 1) for j in range(len(names))) + " |")
    lines += ["", "| variant | train s (mean) | iterations |", "| --- | ---: | ---: |"]
    for v, rs in variants.items():
        lines.append(f"| {v} | {np.mean([r['train_s'] for r in rs]):.0f} | {rs[0]['iterations']} |")
    return "\n".join(lines) + "\n"


def _save_png(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from resfu_med.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(results: list[dict[str, Any]], path: Path) -> None:
    """Validation mean Dice against iteration, one line per variant (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants: dict[str, list[dict]] = {}
    for r in results:
        variants.setdefault(r["variant"], []).append(r)
    # Two panels so 14 curves stay readable: the U-Net upsamplers; ReSFU's ablations and TransUNet-lite next to the
    # U-Net's bilinear and ReSFU runs (ablation variants carry a space: "unet/resfu no-FNS").
    unets = [v for v in variants if v.startswith("unet/") and " " not in v]
    others = [v for v in variants if v in ("unet/bilinear", "unet/resfu") or " " in v or not v.startswith("unet/")]
    panels = {"BasicUNet: upsamplers": unets}
    if not set(others) <= set(unets):  # only when it adds an ablation or TransUNet curve
        panels["ReSFU ablations, TransUNet-lite"] = others
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (title, names) in zip(axes, panels.items()):
        for j, v in enumerate(names):
            hs = [r["history"] for r in variants[v] if r["history"]]
            if not hs:
                continue
            n = min(len(h) for h in hs)
            its = [e["iteration"] for e in hs[0][:n]]
            ax.plot(its, [100 * np.mean([h[i]["mean_dice"] for h in hs]) for i in range(n)], marker="o", markersize=3,
                    color=plt.cm.tab10(j % 10), linestyle="--" if v.startswith("transunet") else "-", label=v)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation mean Dice (%), mean over seeds")
    fig.tight_layout()
    _save_png(fig, path)


def montage(out: Path, results: list[dict[str, Any]], path: Path) -> None:
    """Image, ground truth, bilinear and ReSFU predictions (BasicUNet, first seed), and the last upsampler's output
    feature (first principal component over channels) of each, on the test slice with the most foreground."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from scipy.ndimage import zoom

    from resfu_med.data import get_dataset
    from resfu_med.engine.checkpoint import load_model
    from resfu_med.engine.inferer import predict_volume

    pick = {}
    for up in ("bilinear", "resfu"):
        rs = sorted((r for r in results if r["variant"] == f"unet/{up}"), key=lambda r: r["seed"])
        if rs:
            pick[up] = rs[0]
    if not pick:
        return
    models = {up: load_model(out / "runs" / r["id"] / "last.pt") for up, r in pick.items()}
    cfg0 = next(iter(models.values()))[1]
    item = get_dataset("demo", cfg0["data"]["root"], "test", progress=False)[0]
    image, label = np.asarray(item["image"]), np.asarray(item["label"])
    z = int(np.argmax((label > 0).reshape(len(label), -1).sum(1)))
    fig, axes = plt.subplots(1, 2 + 2 * len(models), figsize=(2.4 * (2 + 2 * len(models)), 2.6))
    cmap = "tab10"
    axes[0].imshow(image[z], cmap="gray")
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(label[z], cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
    axes[1].set_title("ground truth", fontsize=9)
    for i, (up, (model, cfg)) in enumerate(models.items()):
        pred, _ = predict_volume(model, image[z:z + 1], cfg, device="cpu", batch_size=1)
        feats = {}
        hook = model.upcat_1.upsample.register_forward_hook(lambda m, a, o: feats.__setitem__("f", o.detach()))
        s = cfg["data"]["img_size"]
        sl = zoom(image[z], (s / image.shape[1], s / image.shape[2]), order=3).astype(np.float32)
        with torch.no_grad():
            model(torch.from_numpy(sl)[None, None])
        hook.remove()
        f = feats["f"][0].flatten(1).T.numpy()  # (HW, C)
        f = f - f.mean(0)
        pc = (f @ np.linalg.svd(f, full_matrices=False)[2][0]).reshape(feats["f"].shape[2:])
        axes[2 + i].imshow(pred[0], cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
        axes[2 + i].set_title(f"{up} prediction", fontsize=9)
        axes[2 + len(models) + i].imshow(pc, cmap="viridis")
        axes[2 + len(models) + i].set_title(f"{up}: upsampled feature", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    _save_png(fig, path)


@contextlib.contextmanager
def _claim(out: Path, run_id: str):
    """Hold an exclusive lock on ``out/locks/<run_id>.lock`` for the block, or yield False if another process holds it.

    The lock dies with its process, so a killed study leaves no stale claims and a rerun resumes the run.
    """
    import fcntl

    path = out / "locks" / f"{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", default="runs/upsampler-study", help="study folder (default: runs/upsampler-study)")
    parser.add_argument("--out", dest="output", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the earlier spelling, kept for one release
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS,
                        help="unet (each upsampler), transunet (lite, bilinear vs resfu), ablation (default: all)")
    parser.add_argument("--upsamplers", nargs="+", default=list(UPSAMPLERS), choices=UPSAMPLERS,
                        help="BasicUNet upsamplers (default: all)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (default: 8, 640 iterations at batch 4)")
    parser.add_argument("--max-iters", type=int, default=None, help="stop each run after N iterations (default: none)")
    parser.add_argument("--batch-size", type=int, default=4, help="batch size (default: 4, the demo preset)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default: 0.05, the demo preset)")
    parser.add_argument("--img-size", type=int, default=96, help="slice size (default: 96, the demo preset)")
    parser.add_argument("--train-stride", type=int, default=1,
                        help="train on every k-th demo slice (default: 1, all 320; reduced runs use more)")
    parser.add_argument("--val-cases", type=int, default=1, help="test volumes validated each epoch (default: 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (default: 1; on 2 cores run the command twice at once)")
    parser.add_argument("--resfu-width", default="slim", choices=sorted(RESFU_WIDTHS),
                        help="ReSFU widths of every ReSFU run: slim = the demo preset's embed 8 / PCDC 16 / "
                             "compressor 16, default = the module defaults (default: slim)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the tables and figures")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures (no matplotlib needed)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from resfu_med.atomic import atomic_write_text

    out = Path(args.output)
    runs = plan_runs(args.seeds, args.groups, args.upsamplers, args.resfu_width)
    if not args.report_only:
        for run in tqdm(runs, desc="study", unit="run", disable=args.no_progress):
            with _claim(out, run["id"]) as mine:
                # another process of the same command is training this run, or it is finished
                if not mine or (out / "results" / f"{run['id']}.json").exists():
                    continue
                r = run_one(run, out, args)
                tqdm.write(f"{run['id']}: mean Dice {100 * r['mean_dice']:.1f}%, HD95 {r['mean_hd95']:.1f}, "
                           f"{r['train_s']:.0f} s")
    ids = {r["id"] for r in runs}
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json")) if p.stem in ids]
    text = summarise(results)
    atomic_write_text(out / "study.md", text)
    print(text)
    if not args.no_figures:
        try:
            plot_curves(results, out / "dice_curves.png")
            montage(out, results, out / "montage.png")
        except ImportError:
            print("figures skipped: matplotlib is not installed (pip install .[bench])", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
