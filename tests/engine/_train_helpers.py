"""Small stand-ins for the training tests: a tiny registered U-Net and in-memory slice/volume datasets.

They keep the loop tests independent of the real networks and datasets (and fast: 32x32 slices, a few thousand
parameters). Imported by the ``test_train*`` modules and by the subprocesses they start.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

__all__ = ["TINY", "tiny_config", "tiny_plan_config", "slice_dataset", "plan_slice_dataset", "volume_cases",
           "make_trainer", "params_of", "NaNAfter", "free_port"]

TINY = "tiny-test-unet"
NUM_CLASSES = 3


def _register() -> None:
    from monai.networks.nets import BasicUNet

    from resfu_med.networks.model_registry import MODELS, register_model

    if TINY in MODELS:
        return

    def build(out_channels: int, dropout: float = 0.1, nan_after: int = 0, **_: Any) -> nn.Module:
        net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=out_channels, features=(4, 4, 8, 8, 16, 4),
                        dropout=dropout)
        return NaNAfter(net, nan_after) if nan_after else net

    register_model(TINY, build, classes_key="out_channels")


class NaNAfter(nn.Module):
    """Wraps a network so that its ``n``-th training forward pass returns NaN logits."""

    def __init__(self, net: nn.Module, n: int) -> None:
        super().__init__()
        self.net, self.n, self.calls = net, n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.n:
                out = out * float("nan")
        return out


def _slices(n: int, seed: int, size: int = 32) -> list[dict[str, np.ndarray]]:
    rs = np.random.RandomState(seed)
    out = []
    for i in range(n):
        lab = np.zeros((1, size, size), np.int64)
        y, x = rs.randint(2, size - 14, 2)
        lab[0, y:y + 12, x:x + 12] = 1 + i % (NUM_CLASSES - 1)
        img = (lab > 0).astype(np.float32) * (lab / 2.0).astype(np.float32) + 0.2 * rs.randn(1, size, size).astype(np.float32)
        out.append({"image": img, "label": lab})
    return out


def slice_dataset(n: int = 20, seed: int = 0, nan_at: int | None = None) -> Any:
    """A MONAI Dataset of ``n`` random 32x32 slices with a random flip (so augmentation RNG matters)."""
    import monai.transforms as mt
    from monai.data import Dataset

    data = _slices(n, seed)
    if nan_at is not None:
        data[nan_at]["image"][0, 3, 3] = np.nan
    tf = mt.Compose([mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
                     mt.RandRotate90d(["image", "label"], prob=0.5), mt.ToTensord(["image", "label"])])
    return Dataset(data, transform=tf)


#: The 2D plan of the plan-pipeline stand-in: 1 mm pixels, 32² patches; its slices are at 0.8 × 1.25 mm, so every
#: slice is resampled (to 26 × 40) before its patch is cut (padded in Y, cropped in X).
PLAN = {"spacing": [1.0, 1.0], "patch_size": [32, 32], "median_shape": [26, 40], "batch_size": 4, "divisor": 16}


def plan_slice_dataset(n: int = 20, seed: int = 0, nan_at: int | None = None) -> Any:
    """The slices of :func:`slice_dataset` through the plan pipeline's training transform
    (``resfu_med.data.get_slice_patch_transforms``: resampling to :data:`PLAN`'s spacing, padding, class-balanced
    patch centres, flips, quarter turns, rotation, scaling), as the trainer builds it for ``data.pipeline: plan``."""
    from monai.data import Dataset

    from resfu_med.data import get_slice_patch_transforms

    data = [{**item, "case": f"case{i % 4}"} for i, item in enumerate(_slices(n, seed))]
    if nan_at is not None:
        data[nan_at]["image"][0, 3, 3] = np.nan
    tf = get_slice_patch_transforms("train", PLAN["patch_size"], PLAN["spacing"],
                                    spacings={f"case{c}": (3.0, 0.8, 1.25) for c in range(4)},
                                    num_classes=NUM_CLASSES, fg_fraction=0.5)
    return Dataset(data, transform=tf)


def volume_cases(n: int = 2, depth: int = 4) -> list[dict[str, Any]]:
    cases = []
    for c in range(n):
        sl = _slices(depth, 100 + c)
        cases.append({"image": np.stack([s["image"][0] for s in sl]), "label": np.stack([s["label"][0] for s in sl]),
                      "case": f"case{c}"})
    return cases


def tiny_config(**train: Any) -> dict[str, Any]:
    """A completed run config for the tiny model (3 classes, 32x32)."""
    from resfu_med.engine.config import resolve_config

    _register()
    t = {"epochs": 3, "batch_size": 4, "lr": 0.05, "log_every": 1, "checkpoint_every": 0, "num_images": 1, "eval": True}
    t.update(train)
    model_kwargs = {"dropout": 0.1}
    if "nan_after" in t:
        model_kwargs["nan_after"] = t.pop("nan_after")
    cfg = resolve_config("demo", overrides={"model": {"name": TINY, "kwargs": {}}, "data": {"img_size": 32},
                                            "train": t})
    cfg["data"].update(num_classes=NUM_CLASSES, label_names=["square", "other"],
                       intensity={"kind": "mri", "mode": "minmax"}, modality="MRI", root=None)
    cfg["model"]["kwargs"] = {"out_channels": NUM_CLASSES, **model_kwargs}
    return cfg


def tiny_plan_config(**train: Any) -> dict[str, Any]:
    """:func:`tiny_config` for the plan pipeline (``data.pipeline: plan`` with :data:`PLAN`; :func:`make_trainer`
    then trains on :func:`plan_slice_dataset`)."""
    cfg = tiny_config(**train)
    cfg["data"].update(pipeline="plan", plan=copy.deepcopy(PLAN), img_size=max(PLAN["patch_size"]))
    return cfg


def make_trainer(cfg: dict[str, Any], run_dir: Path, resume: bool = False, n: int = 20, nan_at: int | None = None,
                 runtime: dict[str, Any] | None = None, **kw: Any):
    from resfu_med.engine.trainer import Trainer

    _register()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = plan_slice_dataset if cfg["data"].get("pipeline") == "plan" else slice_dataset
    return Trainer(copy.deepcopy(cfg), run_dir, resume=resume, train_data=data(n, nan_at=nan_at),
                   val_data=volume_cases(), runtime=runtime, progress=False, **kw)


def params_of(path_or_model: Any) -> dict[str, torch.Tensor]:
    if isinstance(path_or_model, nn.Module):
        return {k: v.detach().clone() for k, v in path_or_model.state_dict().items()}
    return torch.load(path_or_model, weights_only=True)["model"]


def run_in_subprocess(run_dir: str, cfg_json: str) -> None:
    """Entry for the SIGKILL test: train (or resume) a run described by a JSON config file."""
    import json

    torch.set_num_threads(1)
    cfg = json.loads(Path(cfg_json).read_text())
    resume = (Path(run_dir) / "last.pt").exists()
    make_trainer(cfg, Path(run_dir), resume=resume).fit()


def free_port() -> int:
    """A free local TCP port for a DDP rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world: int, port: int, run_dir: str, cfg: dict[str, Any]) -> None:
    """``torch.multiprocessing.spawn`` entry of the DDP test: one gloo process of a 2-process CPU run."""
    from resfu_med.engine import distributed as ddp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = ddp.init_distributed("cpu")
    try:
        make_trainer(cfg, Path(run_dir), dist=info).fit()
    finally:
        ddp.destroy_distributed()
