"""The training loop (TransUNet protocol, docs/datasets.md): SGD + poly decay, 0.5·CE + 0.5·Dice, resumable and DDP-ready.

:class:`Trainer` owns one run folder::

    runs/demo/
      config.json    the resolved config (also inside every checkpoint)
      last.pt        latest state: model, optimizer, scheduler, scaler, position, RNG states, config
      best.pt        the state with the best validation mean Dice (or the final model without validation, or of a
                     run stopped by max_iters before any validation)
      history.json   validation results per epoch (``[]`` while there are none; written every epoch)
      train.log      one line per epoch (loss, lr, seconds) and per validation (Dice per class, seconds)
      progress.png   loss/lr curves and validation Dice per class, redrawn every epoch (needs matplotlib)
      tb/            TensorBoard events: train/loss, train/lr, val/dice/<class>, val/mean_dice, val/overlay

Resuming restores everything in ``last.pt`` and continues from the recorded position (epoch, batch in epoch); with
the sampler of :mod:`resfu_med.engine.sampling` the remaining batches are exactly those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from resfu_med.atomic import atomic_write_bytes, atomic_write_json
from resfu_med.engine import distributed as ddp
from resfu_med.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from resfu_med.engine.progress_log import write_progress
from resfu_med.engine.sampling import ResumableSampler, SeededDataset, foreground_index, item_labels
from resfu_med.engine.validation import validate
from resfu_med.errors import InputError, ResfuMedError
from resfu_med.networks.model_registry import build_model, get_model_spec, model_names, saved_model_config, spatial_dims_of

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "AMP_DTYPES"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Iterations timed (after the first, which carries the warm-up) for the expected-time line printed before training.
MEASURED_ITERS = 5


def _deterministic_resfu(model: nn.Module) -> None:
    """Switch every ReSFU upsampler to the atomic-free (bit-reproducible) CUDA backward of the FNS gather."""
    from resfu_med.networks import ReSFU
    for module in model.modules():
        if isinstance(module, ReSFU):
            module.deterministic = True


class TrainingDiverged(ResfuMedError):
    """The loss (or a batch) became NaN/inf; training stopped and the last good checkpoint was kept."""


class TrainingInterrupted(ResfuMedError):
    """SIGINT/SIGTERM: ``last.pt`` was saved at the current iteration; ``--resume`` continues.

    ``exit_code`` is the shell convention for the signal: 130 (SIGINT), 143 (SIGTERM).
    """

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class Trainer:
    """Train one run.

    Args:
        config: a completed config (:func:`resfu_med.engine.preparation.complete_config`), or ignored on resume
            (the checkpoint's config is used, with ``runtime`` overrides).
        run_dir: the run folder (checked by :func:`~resfu_med.engine.preparation.prepare_run_dir`).
        resume: continue from ``run_dir/last.pt``.
        train_data: a map-style dataset of training slice dicts (``{"image": (1, H, W), "label": (1, H, W)}`` after
            its transforms); default: ``resfu_med.data.get_dataset(dataset, root, "train", get_transforms(...))``,
            or for a 3D model the training volumes with ``get_patch_transforms`` (each item a list of
            ``data.patches_per_volume`` patches, so a batch of B items trains on B x that many patches).
        val_data: an iterable of volume dicts for validation; default: the dataset's ``data.val_split`` split if it
            has one.
        runtime: on resume, config values that may change (``device``, ``data.num_workers``, ``train.max_iters``).
        device: the torch device (resolved by the caller).
        dist: the DDP position of this process.
        progress: show a tqdm bar (rank 0 only).
    """

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, resume: bool = False,
                 train_data: Any = None, val_data: Any = None, runtime: dict[str, Any] | None = None,
                 device: torch.device | None = None, dist: ddp.DistInfo | None = None, progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.dist = dist or ddp.DistInfo()
        self.device = device or torch.device("cpu")
        self.progress = progress and self.dist.is_main
        self.writer: Any = None  # TensorBoard, opened by on_train_start on rank 0
        self.ckpt = load_checkpoint(self.run_dir / "last.pt") if resume else None
        if self.ckpt is not None:
            config = self.ckpt["config"]
            config["model"] = saved_model_config(config["model"], self.ckpt["model"])  # earlier releases' nets
            for key, value in (runtime or {}).items():
                section, _, leaf = key.rpartition(".")
                (config[section] if section else config)[leaf] = value
        self.cfg = config
        t, d = config["train"], config["data"]
        self.amp_dtype = AMP_DTYPES[config["amp"]]
        if self.amp_dtype is not None and self.device.type == "cpu" and not torch.amp.is_autocast_available("cpu"):
            raise InputError("--amp: autocast is not available on CPU with this torch")
        self._seed_everything()

        # Data: slices for training, volumes for validation.
        self.train_data = SeededDataset(train_data if train_data is not None else self._default_train_data())
        if len(self.train_data) == 0:
            raise InputError(f"dataset {d['dataset']!r} has no training data under {d.get('root')}")
        self.val_data = val_data if val_data is not None or not t["eval"] else self._default_val_data()
        if t["batch_size"] % self.dist.world_size:
            raise InputError(f"--batch-size {t['batch_size']} must be divisible by the {self.dist.world_size} "
                             "DDP processes (it is the global batch)")
        self.batch_size = t["batch_size"] // self.dist.world_size
        fg = float(t.get("fg_oversample") or 0.0)
        volumes = spatial_dims_of(self.cfg["model"]) == 3  # 3D: the patch crops carry the knob (get_patch_transforms)
        fg_index = foreground_index(item_labels(self.train_data)) if fg > 0 and not volumes else None
        self.sampler = ResumableSampler(self.train_data, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                        shuffle=True, seed=config["seed"], fg_oversample=0.0 if volumes else fg,
                                        fg_index=fg_index, batch_size=t["batch_size"])
        self.iters_per_epoch = math.ceil(self.sampler.num_samples / self.batch_size)
        if t.get("iterations"):  # an iteration budget (--preset quick): exactly that many, whatever the dataset's
            # size; the epochs that hold them are recorded in cfg, the last one cut short
            t["epochs"] = max(1, math.ceil(int(t["iterations"]) / self.iters_per_epoch))
            self.max_iterations = int(t["iterations"])
        else:
            self.max_iterations = t["epochs"] * self.iters_per_epoch

        # Model, optimisation.
        self.model = build_model(config["model"]).to(self.device)
        if config["deterministic"]:
            _deterministic_resfu(self.model)
        pretrained = config["model"].get("pretrained")
        if pretrained and self.ckpt is None:
            self._load_pretrained(pretrained)
        self.net: nn.Module = (DistributedDataParallel(self.model, device_ids=[self.device.index]
                                                       if self.device.type == "cuda" else None)
                               if self.dist.enabled else self.model)
        if t["optimizer"] == "adamw":
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=t["lr"], momentum=t["momentum"],
                                             weight_decay=t["weight_decay"])
        self.scheduler = self._scheduler(t)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config["amp"] == "fp16")
        from resfu_med.engine.loss import segmentation_loss

        # batch=True: Dice over the whole batch per class, as TransUNet's DiceLoss does; an ignore label is left out.
        self.loss_fn = segmentation_loss(t["ce_weight"], t["dice_weight"], d.get("ignore_index"))
        # DynUNet's deep supervision: in training the final map and its heads come stacked on dim 1; MONAI's
        # DeepSupervisionLoss weighs their losses 1, 1/2, 1/4, ... (nnU-Net's halving).
        self.deep_supervision = bool(getattr(self.model, "deep_supervision", False))
        if self.deep_supervision:
            from monai.losses import DeepSupervisionLoss

            self.loss_fn = DeepSupervisionLoss(self.loss_fn, weight_mode="exp")
        self.epoch, self.iteration, self.batch_in_epoch = 0, 0, 0
        self.best_metric: float | None = None
        self.history: list[dict[str, Any]] = []
        self.epoch_log: list[dict[str, Any]] = []  # train.log / progress.png records, one per finished epoch
        self._epoch_loss = [0.0, 0]  # running sum and count of the current epoch's losses
        self._epoch_start = time.perf_counter()
        self._stop_signal: int | None = None
        if self.ckpt is not None:
            self._restore(self.ckpt)

    # -- setup helpers -------------------------------------------------------------------------------------------
    def _scheduler(self, t: dict[str, Any]) -> Any:
        """The per-iteration lr schedule: ``poly`` (TransUNet), ``cosine``, ``constant`` or ``constant-decay``, after
        a linear warm-up."""
        schedule, warmup, total, power = t.get("schedule", "poly"), int(t.get("warmup_iters") or 0), \
            self.max_iterations, t["poly_power"]
        # the decay tail: at least one iteration, so a decay_fraction of 0 is plain constant up to the last step
        tail = max(1, round(float(t.get("decay_fraction", 0.2)) * total))
        if schedule == "poly" and not warmup:
            # Poly decay per iteration: lr = base · (1 − it / max_it)^power (TransUNet).
            return torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=total, power=power)

        def factor(it: int) -> float:
            ramp = min(1.0, (it + 1) / warmup) if warmup else 1.0
            progress = min(1.0, max(0.0, (it - warmup) / max(1, total - warmup)))
            if schedule == "cosine":
                return ramp * 0.5 * (1.0 + math.cos(math.pi * progress))
            if schedule == "poly":
                return ramp * (1.0 - progress) ** power
            if schedule == "constant-decay":
                # warm-up, stable, decay: a constant lr learns fastest on a short budget, and the linear tail lets the
                # weights settle so the run's end state does not depend on where a constant-lr trajectory happened to
                # be at its last step (docs/real_benchmark.md, "Why ReSFU can drop a class")
                return ramp * min(1.0, (total - it) / tail)
            return ramp  # constant

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _seed_everything(self) -> None:
        from monai.utils import set_determinism

        set_determinism(seed=self.cfg["seed"])
        if self.cfg.get("threads"):
            torch.set_num_threads(int(self.cfg["threads"]))
        deterministic = bool(self.cfg["deterministic"])
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic

    def _default_train_data(self) -> Any:
        from resfu_med.data import get_dataset, get_patch_transforms, get_transforms
        d = self.cfg["data"]
        planned = d.get("pipeline") == "plan" and bool(d.get("plan"))  # the plan's spacing (#26)
        if spatial_dims_of(self.cfg["model"]) == 3:  # whole training volumes, random patches drawn per item
            xform = get_patch_transforms("train", d["patch_size"], num_samples=d["patches_per_volume"],
                                         fg_oversample=self.cfg["train"].get("fg_oversample"),
                                         num_classes=int(d["num_classes"]),
                                         target_spacing=d["plan"]["spacing"] if planned else None,
                                         spacings=self._case_spacings() if planned else None)
            return self._budgeted(get_dataset, d["dataset"], d["root"], "train", transform=xform, volumes=True)
        if planned:  # native-resolution patches (#26, data/patch_transforms.py)
            from resfu_med.data import get_slice_patch_transforms

            xform = get_slice_patch_transforms(
                "train", d["plan"]["patch_size"], d["plan"]["spacing"], spacings=self._case_spacings(),
                num_classes=int(d["num_classes"]), fg_fraction=float(self.cfg["train"].get("fg_oversample") or 0.5))
            return self._budgeted(get_dataset, d["dataset"], d["root"], "train", transform=xform)
        return self._budgeted(get_dataset, d["dataset"], d["root"], "train",
                              transform=get_transforms(d["dataset"], "train", img_size=d["img_size"]))

    def _case_spacings(self) -> dict[str, Any]:
        """Case → ``(sz, sy, sx)`` of the training data, from its prepared ``dataset.json`` (a raw root: its copy)."""
        from resfu_med.data import get_dataset
        from resfu_med.data.layout import read_dataset_json

        d = self.cfg["data"]
        prepared = getattr(get_dataset(d["dataset"], d["root"], "train", cache_rate=0.0), "root", d["root"])
        cases = (read_dataset_json(prepared) or {}).get("cases") or {}
        return {c: m.get("spacing") for c, m in cases.items()}

    def _budgeted(self, get_dataset: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """The training set with as many items cached as fit in ``data.cache_gb`` (scale: docs/scale.md)."""
        from resfu_med.data.cache import budget_cache_rate, cache_budget

        d = self.cfg["data"]
        budget = cache_budget(d.get("cache_gb"))  # an impossible request: one line, before any data is loaded
        ds = get_dataset(*args, cache_rate=0.0, **kw)  # the item list only
        rate, per_item = budget_cache_rate(ds.data, ds.transform.transforms[0], budget, float(d["cache_rate"]))
        if self.dist.is_main and self.progress:
            print(f"resfu-med train: caching {int(rate * len(ds.data))} of {len(ds.data)} training items in memory "
                  f"(~{rate * len(ds.data) * per_item / 1e9:.2f} GB of a {budget / 1e9:.1f} GB budget, --cache-gb)",
                  file=sys.stderr)
        return get_dataset(*args, cache_rate=rate, **kw) if rate > 0 else ds

    def _default_val_data(self) -> Any:
        from resfu_med.data import get_dataset

        d = self.cfg["data"]
        try:
            data = get_dataset(d["dataset"], d["root"], d["val_split"])
        except (InputError, ValueError, KeyError, FileNotFoundError) as err:
            if self.dist.is_main:
                print(f"resfu-med train: no {d['val_split']!r} split ({err}); best.pt will be the last epoch",
                      file=sys.stderr)
            return None
        if d.get("val_cases"):
            data = [data[i] for i in range(min(len(data), d["val_cases"]))]
        return data

    def _load_pretrained(self, path: str) -> None:
        if not Path(path).is_file():
            raise InputError(f"--pretrained {path} not found")
        spec = get_model_spec(self.cfg["model"]["name"])
        if spec.pretrained is None:
            with_loader = [n for n in model_names() if get_model_spec(n).pretrained is not None]
            raise InputError(f"--pretrained: model {spec.name!r} has no pretrained weights loader "
                             f"(models with one: {', '.join(with_loader) or 'none'})")
        report = spec.pretrained(self.model, path)
        if self.dist.is_main and isinstance(report, dict) and report.get("note"):
            print(f"resfu-med train: --pretrained {Path(path).name}: {report['note']}", file=sys.stderr)

    # -- state -----------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        rng = ddp.gather_objects(capture_rng(), self.dist)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "position": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "iters_per_epoch": self.iters_per_epoch, "world_size": self.dist.world_size},
            "rng": rng[0],
            "rng_ranks": rng,
            "best_metric": self.best_metric,
            "history": self.history,
            "epoch_log": self.epoch_log,
            "epoch_loss": list(self._epoch_loss),
            "config": self.cfg,
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        pos = ckpt.get("position", {})
        self.epoch = int(ckpt["epoch"])
        self.iteration = int(ckpt["iteration"])
        self.batch_in_epoch = int(pos.get("batch_in_epoch", 0))
        if pos.get("world_size", 1) != self.dist.world_size and self.batch_in_epoch:
            raise InputError(f"--resume: the run stopped mid-epoch with {pos.get('world_size')} processes; resume it "
                             f"with the same number (got {self.dist.world_size})")
        self.best_metric = ckpt["best_metric"]
        self.history = list(ckpt.get("history", []))
        self.epoch_log = list(ckpt.get("epoch_log", []))
        self._epoch_loss = [float(v) for v in ckpt.get("epoch_loss", (0.0, 0))]
        ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
        restore_rng(ranks[self.dist.rank] if self.dist.rank < len(ranks) else ckpt["rng"])

    def _save(self, best: bool = False) -> None:
        state = self._state()  # collective under DDP: every rank calls it
        if self.dist.is_main:
            state = self.on_checkpoint(state)
            save_checkpoint(self.run_dir / "last.pt", state)
            if best:
                save_checkpoint(self.run_dir / "best.pt", state)

    # -- the loop ------------------------------------------------------------------------------------------------
    def _loader(self) -> Any:
        from monai.data import DataLoader

        workers = int(self.cfg["data"]["num_workers"])
        # A private generator keeps the DataLoader from touching (and MONAI from resetting) the global torch RNG.
        return DataLoader(self.train_data, batch_size=self.batch_size, sampler=self.sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.cfg["seed"]))

    def _batches(self) -> Any:
        """An iterator over this epoch's remaining batches whose DataLoader workers never see SIGINT/SIGTERM.

        ``timeout``, SLURM and Ctrl-C signal the whole process group. Workers started with the two signals blocked
        (a forked or spawned process inherits the signal mask) keep running, so the main process stops at the end of
        its iteration, saves it and shuts them down, instead of failing on a worker killed mid-batch.
        """
        stop = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        try:
            return iter(self._loader())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal that came meanwhile is delivered now

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- hooks: override them in a subclass (docs/training.md, "Extending the Trainer") ---------------------------
    def compute_loss(self, outputs: Any, label: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch: ``outputs`` are the logits ``(N, C, *spatial)`` in float32 (a list of them
        with deep supervision), ``label`` the class indices ``(N, 1, *spatial)``. Default: the configured
        ``ce_weight`` × cross-entropy + ``dice_weight`` × Dice."""
        return self.loss_fn(outputs, label)

    def training_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """Forward pass and loss of one batch (``{"image", "label"}``); the loop does the backward pass, the
        optimiser and scheduler steps, the NaN/inf checks and AMP scaling."""
        image = torch.as_tensor(batch["image"]).to(self.device, non_blocking=True).float()
        label = torch.as_tensor(batch["label"]).to(self.device, non_blocking=True).long()
        with self._autocast():
            logits = self.net(image)
        outputs = list(torch.unbind(logits.float(), dim=1)) if self.deep_supervision else logits.float()
        return self.compute_loss(outputs, label)

    def on_train_start(self) -> None:
        """Before the first iteration of :meth:`fit` (also when resuming). Default (rank 0): write ``config.json``,
        ``history.json`` and ``progress.png`` and open the TensorBoard writer (``self.writer``)."""
        if not self.dist.is_main:
            return
        # A kill while saving leaves the temporary file of an atomic write behind (never the final name): tidy up.
        for stale in self.run_dir.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)
        atomic_write_json(self.run_dir / "config.json", self.cfg)
        atomic_write_json(self.run_dir / "history.json", self.history)
        write_progress(self.run_dir, self.epoch_log, self.history, self.cfg["train"]["epochs"])
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after its last checkpoint.
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.iteration or None)

    def on_epoch_start(self) -> None:
        """Before the batches of an epoch (also a resumed, half-done one). Default: position the sampler."""
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.batch_in_epoch * self.batch_size)

    def on_train_batch_end(self, loss: float, lr: float) -> None:
        """After each optimiser step (``self.iteration`` counts it). Default: TensorBoard's ``train/loss`` and
        ``train/lr`` every ``train.log_every`` iterations."""
        if self.writer is not None and self.iteration % self.cfg["train"]["log_every"] == 0:
            self.writer.add_scalar("train/loss", loss, self.iteration)
            self.writer.add_scalar("train/lr", lr, self.iteration)

    def on_validation_end(self, metric: float, result: dict[str, Any]) -> None:
        """After a validation on rank 0: ``metric`` is the mean Dice, ``result`` :func:`validate`'s answer
        (``dice`` per class, ``images``). Default: append to the history and write TensorBoard scalars and overlays.
        A subclass may add its own metric to ``self.history[-1]`` (it is saved in ``history.json``)."""
        d = self.cfg["data"]
        names = list(d.get("label_names") or [str(c) for c in range(1, d["num_classes"])])
        entry = {"epoch": self.epoch, "iteration": self.iteration, "mean_dice": metric,
                 "dice": dict(zip(names, result["dice"]))}
        self.history.append(entry)
        if self.writer is not None:
            self.writer.add_scalar("val/mean_dice", metric, self.iteration)
            for name, value in entry["dice"].items():
                self.writer.add_scalar(f"val/dice/{name}", value, self.iteration)
            for case, img in result["images"]:
                self.writer.add_image(f"val/overlay/{case}", img, self.iteration)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """After an epoch (and its validation), before its checkpoint; ``record`` is its ``epoch_log`` entry (loss,
        lr, seconds). Default (rank 0): rewrite ``history.json`` and the progress plot ``progress.png``."""
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "history.json", self.history)  # also when nothing was validated
            write_progress(self.run_dir, self.epoch_log, self.history, self.cfg["train"]["epochs"])

    def on_checkpoint(self, state: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint about to be written (``last.pt``, and ``best.pt`` when best); return it, with extra entries
        if wanted (tensors and plain values only: checkpoints are read with ``weights_only=True``)."""
        return state

    def should_stop(self) -> str | None:
        """Checked after every iteration (collectively under DDP): a reason to stop early, or ``None``. Default:
        ``"signal"`` after SIGINT/SIGTERM, ``"max_iters"`` at ``train.max_iters``, ``"time_budget"`` once this
        session has trained ``train.time_budget`` seconds. A subclass adding its own rule
        (early stopping on a plateau) should return ``super().should_stop()`` first; the loop then saves
        ``last.pt`` and returns."""
        if not ddp.all_true(self._stop_signal is None, self.dist, self.device):
            return "signal"
        max_iters = self.cfg["train"]["max_iters"]
        if max_iters and self.iteration >= max_iters:
            return "max_iters"
        budget = self.cfg["train"].get("time_budget")
        if budget and not ddp.all_true(time.perf_counter() - self._session_start < budget, self.dist, self.device):
            return "time_budget"
        return None

    # -- the iteration budget, said before training (#26) -----------------------------------------------------------
    def _budget_source(self) -> str:
        """What sets this run's iterations, in words."""
        t, ipe = self.cfg["train"], self.iters_per_epoch
        per_epoch = (f"{ipe} iterations per epoch ({self.sampler.num_samples} items per process / batch "
                     f"{self.batch_size})")
        if t.get("iterations"):
            text = (f"train.iterations {t['iterations']} (exactly, whatever the dataset's size: {t['epochs']} epoch(s) "
                    f"of {per_epoch}, the last cut short; the lr schedule spans the {t['iterations']})")
        else:
            text = f"train.epochs {t['epochs']} x {per_epoch}"
        if t["max_iters"] and t["max_iters"] < self.max_iterations:
            text += f"; stopping at train.max_iters {t['max_iters']}"
        if t.get("time_budget"):
            text += f"; at most {t['time_budget']:g} s of training (train.time_budget)"
        return text

    def _report_budget(self, session_iters: int, total: int) -> None:
        """Rank 0: the iterations and what sets them before training; after :data:`MEASURED_ITERS` iterations
        (the first, with its warm-up, left out) the measured time per iteration and the expected time."""
        if not self.dist.is_main:
            return
        if session_iters == 0:
            print(f"resfu-med train: {total} iterations ({max(0, total - self.iteration)} to go), set by "
                  f"{self._budget_source()}", file=sys.stderr)
        elif session_iters == 1:
            self._measure_start = time.perf_counter()
        elif session_iters == MEASURED_ITERS + 1:
            per_it = (time.perf_counter() - self._measure_start) / MEASURED_ITERS
            left = max(0, total - self.iteration)
            budget = self.cfg["train"].get("time_budget")
            line = (f"resfu-med train: {per_it:.3g} s per iteration (measured over iterations 2-{MEASURED_ITERS + 1} "
                    f"of this session): expected {left * per_it:.0f} s for the {left} iterations to go")
            if budget:
                left_s = budget - (time.perf_counter() - self._session_start)
                line += f"; the time budget leaves {max(0.0, left_s):.0f} s, about {int(max(0.0, left_s) / per_it)} iterations"
            print(line, file=sys.stderr)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """After the loop with its summary (not after a stop by signal, which raises). Default: nothing."""

    # -- the step ------------------------------------------------------------------------------------------------
    def _step(self, batch: dict[str, Any]) -> float:
        finite = bool(torch.isfinite(torch.as_tensor(batch["image"])).all())
        loss = None
        if finite:
            loss = self.training_step(batch)
            finite = bool(torch.isfinite(loss.detach()))
        if not ddp.all_true(finite, self.dist, self.device):
            what = "a training batch contains NaN/inf voxels" if loss is None else "the loss is not finite"
            value = "" if loss is None else f" ({float(loss.detach()):g})"
            raise TrainingDiverged(
                f"{what}{value} at iteration {self.iteration + 1} (epoch {self.epoch + 1}); training stopped, "
                f"the last good checkpoint {self.run_dir / 'last.pt'} is kept"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    def _validate(self) -> float | None:
        """Validate on rank 0 (others wait); returns the mean Dice or ``None`` without validation data."""
        metric = None
        if self.val_data is not None and self.dist.is_main:
            result = validate(self.model, self.val_data, self.cfg, device=self.device,
                              amp_dtype=self.amp_dtype, num_images=self.cfg["train"]["num_images"])
            self.model.train()
            metric = result["mean_dice"]
            self.on_validation_end(metric, result)
        ddp.barrier(self.dist)
        return metric

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        t = self.cfg["train"]
        due = t["eval"] and (self.epoch % t["val_every"] == 0 or self.epoch == t["epochs"])
        total, count = self._epoch_loss
        record = {"epoch": self.epoch, "iteration": self.iteration, "loss": total / max(count, 1),
                  "lr": float(self.optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - self._epoch_start}
        t0 = time.perf_counter()
        metric = self._validate() if due else None
        if metric is not None:
            record["val_seconds"] = time.perf_counter() - t0
        self.epoch_log.append(record)
        self._epoch_loss, self._epoch_start = [0.0, 0], time.perf_counter()
        self.on_epoch_end(record)
        best = False
        if self.val_data is None or not t["eval"]:
            best = self.epoch == t["epochs"]  # no validation: best.pt is the final model
        elif metric is not None and not math.isnan(metric) and (self.best_metric is None or metric > self.best_metric):
            self.best_metric, best = metric, True
        self._save(best=best)  # only rank 0 writes, so only its flag matters

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def fit(self) -> dict[str, Any]:
        """Train until the last epoch or ``train.max_iters``; returns a summary dict.

        Raises:
            TrainingDiverged: NaN/inf loss or batch (``last.pt`` keeps the last good state).
            TrainingInterrupted: SIGINT/SIGTERM (``last.pt`` saved at the current iteration).
        """
        t = self.cfg["train"]
        max_iters = t["max_iters"]
        self.writer = None
        self.on_train_start()
        handlers = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread
            handlers = {}
        from tqdm.auto import tqdm

        total = min(self.max_iterations, max_iters) if max_iters else self.max_iterations
        bar = tqdm(total=total, initial=min(self.iteration, total), disable=not self.progress, unit="it",
                   desc="train", dynamic_ncols=True, file=sys.stderr)
        self.net.train()
        stopped = "max_iters" if max_iters and self.iteration >= max_iters else None
        self._session_start, session_iters = time.perf_counter(), 0
        self._report_budget(session_iters, total)
        try:
            while self.epoch < t["epochs"] and stopped is None:
                self.on_epoch_start()
                if self.batch_in_epoch < self.iters_per_epoch:
                    for batch in self._batches():
                        lr = self.optimizer.param_groups[0]["lr"]
                        loss = self._step(batch)
                        self._epoch_loss[0] += loss
                        self._epoch_loss[1] += 1
                        self.iteration += 1
                        self.batch_in_epoch += 1
                        session_iters += 1
                        self._report_budget(session_iters, total)
                        bar.update(1)
                        bar.set_postfix(epoch=f"{self.epoch + 1}/{t['epochs']}", loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                        refresh=False)
                        self.on_train_batch_end(loss, lr)
                        stopped = self.should_stop()
                        if stopped or self.iteration >= self.max_iterations:
                            break
                        if t["checkpoint_every"] and self.iteration % t["checkpoint_every"] == 0:
                            self._save()
                if self.batch_in_epoch >= self.iters_per_epoch or self.iteration >= self.max_iterations:
                    self._end_epoch()  # the budget's last iteration ends the (last) epoch early
                elif stopped:
                    self._save()
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
            for sig, old in handlers.items():
                signal.signal(sig, old)
        best = self.run_dir / "best.pt"
        if stopped != "signal" and self.dist.is_main and not best.exists() and (self.run_dir / "last.pt").exists():
            # stopped by max_iters before any validation: the documented `--checkpoint runs/x/best.pt` still works
            atomic_write_bytes(best, (self.run_dir / "last.pt").read_bytes())
        if stopped == "time_budget" and self.dist.is_main:
            print(f"resfu-med train: time budget of {t['time_budget']:g} s reached at iteration {self.iteration} of "
                  f"{total}; {self.run_dir / 'last.pt'} saved, continue with --resume", file=sys.stderr)
        if stopped == "signal":
            signum = self._stop_signal or signal.SIGTERM  # under DDP another rank may have received it
            raise TrainingInterrupted(f"interrupted by {signal.Signals(signum).name} at iteration {self.iteration}; "
                                      f"{self.run_dir / 'last.pt'} saved, continue with --resume", signum)
        summary = {"epoch": self.epoch, "iteration": self.iteration, "best_metric": self.best_metric,
                   "finished": self.epoch >= t["epochs"], "history": self.history}
        self.on_train_end(summary)
        return summary
