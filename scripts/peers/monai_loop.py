"""A plain MONAI training loop: the peer a MONAI user would write first, on the real T1 benchmark's split.

Nothing of resfu-med trains or predicts here; only the scoring at the end uses ``resfu_med.metrics`` so that the
figures are computed exactly as ``resfu-med evaluate`` computes them. The recipe:

- data: the benchmark's ``dataset.json`` split; each volume ``(Z, Y, X)`` normalised as nnU-Net (and ``resfu-med
  prepare``) do for MRI: non-zero voxels clipped to their 0.5th/99.5th percentiles, then z-scored, background 0;
- network: MONAI ``BasicUNet`` (2D) with the quick preset's widths ``(16, 16, 32, 64, 128, 16)`` and non-trainable
  bilinear upsampling;
- patches: 96 × 96 at the native 1 mm in-plane grid (slices smaller than the patch are zero-padded, never zoomed);
  half of them centred on a voxel of a structure drawn uniformly among the 6 (then a voxel drawn uniformly among that
  structure's training voxels), half centred on a uniformly drawn voxel of a uniformly drawn slice; random flips;
- loss and optimiser: MONAI ``DiceCELoss`` (softmax, one-hot target), AdamW lr 1e-3, weight decay 1e-4, linear
  warm-up over 50 iterations then constant, batch 4;
- stop: after ``--iterations`` or when ``--time-budget`` seconds of training have passed, whichever comes first;
- inference: each whole test slice by MONAI ``SlidingWindowInferer`` (96 × 96 windows, overlap 0.5, Gaussian
  weighting), argmax, written as NIfTI on the test image's own grid, then scored (TransUNet rules, like
  ``resfu-med evaluate``) into ``metrics.json``.

Example:
    python scripts/peers/monai_loop.py --data ~/datasets/real_t1 --out runs/monai_s0 --seed 0 --iterations 1500
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["normalise", "PatchSampler", "train", "predict_volume", "score", "main"]

PATCH = (96, 96)
FEATURES = (16, 16, 32, 64, 128, 16)


def normalise(volume: np.ndarray) -> np.ndarray:
    """nnU-Net's MRI normalisation: non-zero voxels clipped to their 0.5/99.5 percentiles and z-scored; 0 stays 0."""
    out = np.zeros(volume.shape, dtype=np.float32)
    mask = volume != 0
    if not mask.any():
        return out
    values = volume[mask].astype(np.float64)
    lo, hi = np.percentile(values, [0.5, 99.5])
    values = np.clip(values, lo, hi)
    out[mask] = ((values - values.mean()) / max(values.std(), 1e-8)).astype(np.float32)
    return out


def _load_case(root: Path, case: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """(image (Z, Y, X) float32 normalised, label (Z, Y, X) uint8, the label's NIfTI image) of one case."""
    import nibabel as nib

    img = nib.load(str(root / "imagesTr" / f"{case}.nii.gz"))
    lab = nib.load(str(root / "labelsTr" / f"{case}.nii.gz"))
    image = normalise(np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0))
    label = np.asarray(lab.dataobj, dtype=np.uint8).transpose(2, 1, 0)
    return image, label, lab


class PatchSampler:
    """Draws ``(image, label)`` 96 × 96 patches from the training slices (see the module docstring)."""

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], num_classes: int, fg_fraction: float = 0.5,
                 seed: int = 0) -> None:
        self.slices = [(im[z], lab[z]) for im, lab in zip(images, labels) for z in range(im.shape[0])]
        self.fg_fraction = fg_fraction
        self.rng = np.random.default_rng(seed)
        # every training voxel of each class as (slice index, y, x)
        self.voxels = {}
        for c in range(1, num_classes):
            where = [np.c_[np.full(int((lab == c).sum()), i), np.argwhere(lab == c)]
                     for i, (_, lab) in enumerate(self.slices) if (lab == c).any()]
            if where:
                self.voxels[c] = np.concatenate(where)

    def _crop(self, index: int, cy: int, cx: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.slices[index]
        pad = [(max(0, (p - s + 1) // 2), max(0, p - s - (p - s + 1) // 2)) for s, p in zip(image.shape, PATCH)]
        image, label = np.pad(image, pad), np.pad(label, pad)
        cy, cx = cy + pad[0][0], cx + pad[1][0]
        y0 = int(np.clip(cy - PATCH[0] // 2, 0, image.shape[0] - PATCH[0]))
        x0 = int(np.clip(cx - PATCH[1] // 2, 0, image.shape[1] - PATCH[1]))
        return image[y0:y0 + PATCH[0], x0:x0 + PATCH[1]], label[y0:y0 + PATCH[0], x0:x0 + PATCH[1]]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        if self.voxels and self.rng.random() < self.fg_fraction:
            cls = list(self.voxels)[self.rng.integers(len(self.voxels))]
            index, cy, cx = self.voxels[cls][self.rng.integers(len(self.voxels[cls]))]
        else:
            index = int(self.rng.integers(len(self.slices)))
            shape = self.slices[index][0].shape
            cy, cx = int(self.rng.integers(shape[0])), int(self.rng.integers(shape[1]))
        image, label = self._crop(int(index), int(cy), int(cx))
        for axis in (0, 1):
            if self.rng.random() < 0.5:
                image, label = np.flip(image, axis), np.flip(label, axis)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def batch(self, size: int) -> tuple[Any, Any]:
        import torch

        pairs = [self.sample() for _ in range(size)]
        return (torch.from_numpy(np.stack([p[0] for p in pairs])[:, None]),
                torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.int64)))


def _network(num_classes: int):
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=num_classes, features=FEATURES,
                     upsample="nontrainable")


def train(sampler: PatchSampler, num_classes: int, iterations: int, time_budget: float | None, batch_size: int = 4,
          lr: float = 1e-3, warmup: int = 50, log=print) -> tuple[Any, dict[str, Any]]:
    """Train; return (model, record of iterations done, seconds, stop reason, last losses)."""
    import torch
    from monai.losses import DiceCELoss

    model = _network(num_classes)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / warmup))
    model.train()
    t0, cpu0, losses, stop = time.perf_counter(), time.process_time(), [], "iterations"
    done = 0
    for it in range(iterations):
        if time_budget is not None and time.perf_counter() - t0 >= time_budget:
            stop = "time budget"
            break
        image, label = sampler.batch(batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(image), label)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        done = it + 1
        if done % 100 == 0:
            log(f"monai_loop: iteration {done}, loss {np.mean(losses[-100:]):.4f}, "
                f"{time.perf_counter() - t0:.0f} s")
    seconds = time.perf_counter() - t0
    return model, {"iterations": done, "train_s": round(seconds, 1),
                   "train_cpu_s": round(time.process_time() - cpu0, 1), "stop": stop,
                   "final_loss": float(np.mean(losses[-50:])) if losses else None}


def predict_volume(model, image: np.ndarray, batch_slices: int = 8) -> np.ndarray:
    """Labels (Z, Y, X) of a normalised volume: every whole slice by Gaussian sliding windows of 96 × 96."""
    import torch
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=PATCH, sw_batch_size=4, overlap=0.5, mode="gaussian")
    model.eval()
    out = np.zeros(image.shape, dtype=np.uint8)
    with torch.no_grad():
        for z0 in range(0, image.shape[0], batch_slices):
            x = torch.from_numpy(np.ascontiguousarray(image[z0:z0 + batch_slices]))[:, None]
            out[z0:z0 + batch_slices] = inferer(x, model).argmax(1).numpy().astype(np.uint8)
    return out


def score(preds: dict[str, np.ndarray], labels: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
    """``{"reports": {"transunet": ...}}`` as ``resfu-med evaluate`` writes it (TransUNet rules, voxels)."""
    from resfu_med.metrics import transunet_metrics
    from resfu_med.metrics.report import build_report, report_to_dict

    per_case = {case: transunet_metrics(preds[case], labels[case], len(names) + 1) for case in preds}
    return {"reports": {"transunet": report_to_dict(build_report("transunet", names, per_case))}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="benchmark folder (MSD layout with a split)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (predictions/, metrics.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import nibabel as nib
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    meta = json.loads((args.data / "dataset.json").read_text())
    names = [meta["labels"][k] for k in sorted(meta["labels"], key=int) if int(k) > 0]
    train_cases = [_load_case(args.data, c) for c in meta["split"]["train"]]
    sampler = PatchSampler([c[0] for c in train_cases], [c[1] for c in train_cases], len(names) + 1, seed=args.seed)
    model, record = train(sampler, len(names) + 1, args.iterations, args.time_budget)
    (args.out / "predictions").mkdir(parents=True, exist_ok=True)
    preds, labels = {}, {}
    t0 = time.perf_counter()
    for case in meta["split"]["test"]:
        image, label, ref = _load_case(args.data, case)
        preds[case], labels[case] = predict_volume(model, image), label
        nii = nib.Nifti1Image(preds[case].transpose(2, 1, 0), ref.affine, ref.header)
        nii.set_data_dtype(np.uint8)
        nib.save(nii, str(args.out / "predictions" / f"{case}_pred.nii.gz"))
    record["predict_s"] = round(time.perf_counter() - t0, 1)
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    record.update(score(preds, labels, names), seed=args.seed, threads=args.threads,
                  command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    (args.out / "metrics.json").write_text(json.dumps(record, indent=1))
    rep = record["reports"]["transunet"]
    print("monai_loop:", record["iterations"], "iterations in", record["train_s"], "s; Dice",
          {c["name"]: round(100 * c["dice"], 1) for c in rep["classes"]}, "mean", round(100 * rep["mean"]["dice"], 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
