"""nnU-Net v2 on the real T1 benchmark, on a CPU, stopped at a time budget: the peer users would pick first.

Runs in nnU-Net's own environment (docs/real_benchmark.md: ``nnunetv2`` pulls a ``torchvision`` that must match its
``torch``), never in resfu-med's. Steps, all nnU-Net's own except the stop:

1. the benchmark's training cases become an nnU-Net raw dataset (``Dataset991_RealT1``: ``imagesTr/<case>_0000``,
   ``labelsTr``, ``imagesTs``; channel ``T1``), the test cases its ``imagesTs``;
2. ``nnUNetv2_plan_and_preprocess -c 2d`` makes nnU-Net's own fingerprint, 2D plan and preprocessed data;
3. :class:`nnUNetTrainer_TimeBudget` trains fold ``all`` on the CPU exactly as ``nnUNetTrainer`` does (SGD lr 0.01,
   Nesterov momentum 0.99, poly decay, its augmentation, Dice + CE with deep supervision), except that it stops when
   the process has used ``--cpu-budget`` CPU seconds (1 thread: close to wall seconds on an idle core), and its poly
   schedule spans the epochs that fit: after the first epoch the epoch count is set to budget ÷ that epoch's time, so
   the learning rate decays over the budget as it would over nnU-Net's 1000 epochs. Epochs are 25 iterations
   (nnU-Net: 250) and validate on 2 batches (nnU-Net: 50), so the budget is met within one short epoch;
4. ``nnUNetPredictor`` (Gaussian sliding windows, step 0.5; mirroring only with ``--tta``: nnU-Net's default is on,
   its ``--disable_tta`` off, which is used here to keep prediction on a shared CPU short) predicts the test cases into
   ``OUT/predictions/<case>_pred.nii.gz`` on the image's own grid; ``OUT/metrics.json`` holds the run's record and,
   when resfu-med is importable here, the scores (``real_study.py`` scores the predictions itself otherwise).

Example (nnU-Net's environment):
    /work/venvs/nnunet/bin/python scripts/peers/nnunet_budget.py --data ~/datasets/real_t1 --out runs/nnunet_s0 \\
        --work runs/nnunet_work_s0 --seed 0 --cpu-budget 900
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["DATASET", "to_nnunet_raw", "make_trainer_class", "main"]

DATASET = "Dataset991_RealT1"


def to_nnunet_raw(data: Path, raw: Path) -> tuple[list[str], list[str]]:
    """Write the benchmark as nnU-Net raw data (links to the benchmark's files); return (train, test) case names."""
    meta = json.loads((data / "dataset.json").read_text())
    folder = raw / DATASET
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    train, test = list(meta["split"]["train"]), list(meta["split"]["test"])
    for case in train + test:
        image = folder / ("imagesTr" if case in train else "imagesTs") / f"{case}_0000.nii.gz"
        if not image.exists():
            shutil.copyfile(data / "imagesTr" / f"{case}.nii.gz", image)
        if case in train and not (folder / "labelsTr" / f"{case}.nii.gz").exists():
            shutil.copyfile(data / "labelsTr" / f"{case}.nii.gz", folder / "labelsTr" / f"{case}.nii.gz")
    labels = {name: int(k) for k, name in meta["labels"].items()}
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": meta["modality"]["0"]}, "labels": labels, "numTraining": len(train),
        "file_ending": ".nii.gz", "name": meta.get("name", DATASET)}, indent=1))
    return train, test


def make_trainer_class(cpu_budget: float):
    """``nnUNetTrainer_TimeBudget``: nnUNetTrainer stopped after ``cpu_budget`` CPU seconds of training."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainer_TimeBudget(nnUNetTrainer):  # noqa: N801  nnU-Net's naming convention for trainers
        budget_s = cpu_budget

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = 25
            self.num_val_iterations_per_epoch = 2
            self.iterations_done = 0
            self.train_cpu_s = 0.0

        def run_training(self):
            self.on_train_start()
            start = time.process_time()
            used = lambda: time.process_time() - start  # noqa: E731
            stop = False
            while not stop:
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    self.iterations_done += 1
                    if used() >= self.budget_s:
                        stop = True
                        break
                self.on_train_epoch_end(outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                    self.on_validation_epoch_end(val)
                if self.current_epoch == 0:  # the poly schedule spans the epochs that fit in the budget
                    self.num_epochs = max(2, int(self.budget_s / max(used(), 1e-6)))
                    self.lr_scheduler.max_steps = self.num_epochs
                    self.print_to_log_file(f"time budget {self.budget_s:.0f} CPU s: {self.num_epochs} epochs of "
                                           f"{self.num_iterations_per_epoch} iterations")
                self.on_epoch_end()
                stop = stop or self.current_epoch >= self.num_epochs
            self.train_cpu_s = used()
            self.on_train_end()

    return nnUNetTrainer_TimeBudget


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="benchmark folder (MSD layout with a split)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (predictions/, metrics.json)")
    parser.add_argument("--work", type=Path, required=True, help="nnU-Net's raw/preprocessed/results folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-budget", type=float, required=True, help="training CPU seconds")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (nnU-Net's default)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    env = {"nnUNet_raw": work / "raw", "nnUNet_preprocessed": work / "preprocessed", "nnUNet_results": work / "results"}
    for key, value in env.items():
        value.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(value)
    os.environ.update(nnUNet_n_proc_DA="0", nnUNet_compile="false", OMP_NUM_THREADS="1")
    train, test = to_nnunet_raw(args.data, env["nnUNet_raw"])
    plans_file = env["nnUNet_preprocessed"] / DATASET / "nnUNetPlans.json"
    if not (env["nnUNet_preprocessed"] / DATASET / "nnUNetPlans_2d").is_dir():
        subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", DATASET.split("_")[0][7:],
                        "-c", "2d", "-np", "1", "-npfp", "1", "--verify_dataset_integrity"], check=True,
                       env={**os.environ, "nnUNet_n_proc_DA": "1"})  # its planner calls set_num_threads(n_proc_DA)

    import torch

    torch.set_num_threads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    plans = json.loads(plans_file.read_text())
    plans["continue_training"] = False  # what nnunetv2.run.run_training.get_trainer_from_args sets for a new run
    dataset_json = json.loads((env["nnUNet_preprocessed"] / DATASET / "dataset.json").read_text())
    trainer_class = make_trainer_class(args.cpu_budget)
    trainer = trainer_class(plans, "2d", "all", dataset_json, torch.device("cpu"))
    t0 = time.perf_counter()
    trainer.run_training()
    train_s = time.perf_counter() - t0
    record = {"iterations": trainer.iterations_done, "epochs": trainer.current_epoch, "train_s": round(train_s, 1),
              "train_cpu_s": round(trainer.train_cpu_s, 1), "cpu_budget": args.cpu_budget, "seed": args.seed, "tta": args.tta,
              "patch_size": list(trainer.configuration_manager.patch_size),
              "batch_size": trainer.configuration_manager.batch_size,
              "peak_rss_train_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "nnunetv2": __import__("importlib.metadata").metadata.version("nnunetv2"), "torch": torch.__version__}

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=args.tta,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    trainer.set_deep_supervision_enabled(False)  # as nnU-Net's own validation does: one full-resolution output
    network = trainer.network
    network.eval()
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager,
                                    [network.state_dict()], trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    out = args.out.resolve()
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    folder = env["nnUNet_raw"] / DATASET / "imagesTs"
    predictor.predict_from_files_sequential([[str(folder / f"{case}_0000.nii.gz")] for case in test],
                                            [str(out / "predictions" / f"{case}_pred") for case in test],
                                            save_probabilities=False, overwrite=True)
    record["predict_s"] = round(time.perf_counter() - t1, 1)
    record["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    try:  # scores as `resfu-med evaluate` computes them, when resfu-med is importable in this environment
        import nibabel as nib

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from monai_loop import score

        meta = json.loads((args.data / "dataset.json").read_text())
        names = [meta["labels"][k] for k in sorted(meta["labels"], key=int) if int(k) > 0]
        preds = {c: np.asarray(nib.load(str(out / "predictions" / f"{c}_pred.nii.gz")).dataobj).transpose(2, 1, 0)
                 for c in test}
        labels = {c: np.asarray(nib.load(str(args.data / "labelsTr" / f"{c}.nii.gz")).dataobj).transpose(2, 1, 0)
                  for c in test}
        record.update(score(preds, labels, names))
    except ImportError:
        pass
    (out / "metrics.json").write_text(json.dumps(record, indent=1))
    print("nnunet_budget:", json.dumps({k: v for k, v in record.items() if k != "reports"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
