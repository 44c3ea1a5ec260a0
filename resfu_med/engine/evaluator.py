"""Volumetric evaluation of a trained model on an evaluation split (docs/evaluation.md).

Per test volume: predict slice by slice at ``img_size`` and zoom back (:func:`resfu_med.engine.inferer.predict_volume`),
then score every foreground class with medpy in two reports — the TransUNet protocol (voxel units, comparable with
the paper) and the spacing-aware one (HD95 in mm, NaN for empty masks). Training's validation
(:func:`resfu_med.engine.validation.validate`) scores the same predictions with the Dice half of the same metrics.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from resfu_med.engine.inferer import predict_volume
from resfu_med.errors import CheckpointError, InputError, ResfuMedError
from resfu_med.metrics import (
    Report,
    build_report,
    drop_ignored,
    report_paths,
    spacing_metrics,
    transunet_metrics,
    write_reports,
)
from resfu_med.outputs import output_folder
from resfu_med.safety import check_case_name, check_inside

__all__ = ["EvaluationResult", "evaluate_model", "run_evaluation", "save_prediction"]


@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate_model`.

    Attributes:
        transunet: the TransUNet-protocol report (voxel units).
        spacing: the spacing-aware report (mm); cases without a known spacing are not in it.
        failures: ``(case, message)`` for every volume that could not be loaded or evaluated.
        no_spacing: cases left out of the spacing-aware report because their voxel spacing is unknown.
        predictions: prediction files written (``save_dir``).
    """

    transunet: Report
    spacing: Report
    failures: list[tuple[str, str]] = field(default_factory=list)
    no_spacing: list[str] = field(default_factory=list)
    predictions: list[Path] = field(default_factory=list)


def save_prediction(
    path: str | Path, labels: np.ndarray, affine: np.ndarray | None = None, spacing: Sequence[float] | None = None,
    values: list[int] | None = None,
) -> Path:
    """Write a ``(Z, Y, X)`` label volume with the case's geometry through :func:`resfu_med.data.io.write_image`.

    Args:
        path: output file; its suffix picks the format (``.nii.gz``, ``.mha``, ``.nrrd``).
        labels: class indices in the evaluation datasets' ``(Z, Y, X)`` layout.
        affine: the case's 4×4 NIfTI affine (for its X, Y, Z voxel axes); default a diagonal of ``spacing``.
        spacing: ``(sz, sy, sx)`` in mm, used when ``affine`` is missing.
        values: the label value written for each class (:func:`resfu_med.data.labels.output_values`); default the
            class indices.

    Returns:
        The path written.
    """
    from resfu_med.data.io import Geometry, write_image
    from resfu_med.data.labels import apply_label_values

    labels = np.asarray(labels)
    if affine is None:
        sz, sy, sx = spacing if spacing is not None else (1.0, 1.0, 1.0)
        affine = np.diag([float(sx), float(sy), float(sz), 1.0])
    num_classes = int(labels.max()) + 1 if values is None else len(values)
    return write_image(path, apply_label_values(labels, values, max(num_classes, 1)),
                       Geometry.from_affine(np.asarray(affine, dtype=np.float64), labels.shape))


def _as_volume(item: Mapping[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(item["image"])
    lab = np.asarray(item["label"])
    img = img.squeeze(0) if img.ndim == 4 and img.shape[0] == 1 else img
    lab = lab.squeeze(0) if lab.ndim == 4 and lab.shape[0] == 1 else lab
    if img.ndim != 3 or img.shape != lab.shape:
        raise InputError(f"case {name}: expected image and label volumes (Z, H, W) of one shape, "
                         f"got image {img.shape} and label {lab.shape}")
    return img, lab


def evaluate_model(
    model: torch.nn.Module,
    dataset: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    save_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    save_suffix: str = ".nii.gz",
    raw_labels: bool = False,
) -> EvaluationResult:
    """Evaluate ``model`` on every volume of ``dataset`` in both reports.

    Args:
        model: trained network in eval mode (2D or 3D, as ``config`` says).
        dataset: evaluation split yielding volume dicts ``{"image": (Z, H, W), "label": (Z, H, W), "case": str,
            "spacing": (sz, sy, sx) or None, "affine": 4×4 or None}`` (``resfu_med.data.get_dataset(..., "test")``).
        config: the checkpoint's config; ``config["data"]`` gives ``num_classes``, ``label_names``, ``img_size``.
        device: where the network runs.
        batch_size: slices (2D) or windows (3D) per network call.
        save_dir: if given, each prediction is written there as ``<case>_pred<save_suffix>`` with the dataset's own
            label values (:mod:`resfu_med.data.labels`).
        progress: show a tqdm bar over volumes.
        log: where per-case failure lines go (default: stderr).
        save_suffix: ``.nii.gz``, ``.mha`` or ``.nrrd``.
        raw_labels: write the raw release's label values (Synapse: BTCV numbering).

    Returns:
        An :class:`EvaluationResult`; a case that fails is recorded in ``failures`` and the others still run.
    """
    data = config.get("data", {}) or {}
    num_classes = int(data["num_classes"])
    names = list(data.get("label_names") or [f"class{c}" for c in range(1, num_classes)])
    if len(names) != num_classes - 1:
        raise ValueError(f"config data.label_names has {len(names)} names for num_classes={num_classes}")
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    from resfu_med.data.labels import output_values

    values = output_values(data, raw=raw_labels)
    model.eval()
    tu: dict[str, list] = {}
    sp: dict[str, list] = {}
    result = EvaluationResult(build_report("transunet", names, {}), build_report("spacing", names, {}))
    bar = tqdm(range(len(dataset)), desc="evaluate", unit="vol", disable=not progress)
    for i in bar:
        name = f"#{i}"
        try:
            item = dataset[i]
            name = str(item.get("case", name))
            bar.set_postfix_str(name)
            image, label = _as_volume(item, name)
            pred, _ = predict_volume(model, image, config, device=device, batch_size=batch_size,
                                     spacing=item.get("spacing"))
            saved, (pred, label) = pred, drop_ignored(pred, label, data.get("ignore_index"))
            tu[name] = transunet_metrics(pred, label, num_classes)
            spacing = item.get("spacing")
            if spacing is not None:
                sp[name] = spacing_metrics(pred, label, num_classes, spacing)
            else:
                result.no_spacing.append(name)
            if save_dir is not None:
                result.predictions.append(
                    save_prediction(check_inside(f"{check_case_name(name, 'case')}_pred{save_suffix}", save_dir,
                                                 f"case {name!r}", "prediction"),
                                    saved, item.get("affine"), spacing, values)
                )
        except CheckpointError:  # the model itself is wrong: every case would fail the same way
            raise
        except (ResfuMedError, OSError, ValueError, RuntimeError, KeyError) as err:
            msg = str(err) if isinstance(err, ResfuMedError) else f"{type(err).__name__}: {err}"
            result.failures.append((name, msg))
            log(f"resfu-med evaluate: error: case {name}: {msg}")
    result.transunet = build_report("transunet", names, tu)
    result.spacing = build_report("spacing", names, sp)
    return result


def run_evaluation(
    checkpoint: str | Path,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    split: str = "test",
    output: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    save_predictions: bool = False,
    sw_batch_size: int = 8,
    device: str | None = "auto",
    overwrite: bool = False,
    progress: bool = True,
    output_format: str = "nii.gz",
    raw_labels: bool = False,
) -> tuple[EvaluationResult, dict[str, Path]]:
    """``resfu-med evaluate``: score a checkpoint on a dataset split and write the reports.

    Args:
        checkpoint: a ``resfu-med train`` checkpoint.
        dataset: a data registry name; default the checkpoint's.
        data_root: the dataset folder; default the checkpoint's data root when evaluating its own dataset, else the
            dataset's default location.
        split: the evaluation split.
        output: folder for ``metrics.json`` and the CSVs; default ``<checkpoint folder>/eval-<dataset>-<split>``.
        class_names: foreground class names for the tables; default those the checkpoint was trained with
            (``--class-names``), else the dataset's.
        save_predictions: also write ``<case>_pred.nii.gz`` into ``<output>/predictions``.
        sw_batch_size: slices (2D) or windows (3D) per network call.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        overwrite: replace the reports of an earlier evaluation.
        progress: show a progress bar.
        output_format: file format of saved predictions: ``nii.gz``, ``mha`` or ``nrrd``.
        raw_labels: saved predictions use the raw release's label values (Synapse: BTCV numbering).

    Returns:
        ``(result, report files)``.

    Raises:
        CheckpointError: the checkpoint is unusable or trained for another class count.
        InputError: unknown dataset, bad class names, existing reports without ``overwrite``, an empty split.
    """
    from resfu_med.data import dataset_info, get_dataset
    from resfu_med.engine.device import resolve_device
    from resfu_med.engine.predictor import load_for_inference

    dev = resolve_device(device)
    model, config = load_for_inference(checkpoint, dev)
    data_cfg = dict(config.get("data") or {})
    name = dataset or data_cfg.get("dataset")
    if not name:
        raise InputError("--dataset: not given and the checkpoint's config names no dataset")
    if data_root is None and name == data_cfg.get("dataset") and data_cfg.get("root") and name != "demo":
        data_root = str(data_cfg["root"])
        if not Path(data_root).exists():
            raise InputError(f"the checkpoint's data root {data_root} does not exist (moved or deleted?); "
                             "pass --data-root")
        print(f"resfu-med evaluate: --data-root not given; using the checkpoint's {data_root}", file=sys.stderr)
    try:
        info = dataset_info(name, data_root)
    except InputError:
        raise
    except ValueError as err:  # unknown dataset name: the message lists the valid ones
        raise InputError(f"--dataset: {err}") from None
    if int(info.num_classes) != int(data_cfg["num_classes"]):
        raise CheckpointError(
            f"checkpoint {checkpoint}: trained for {data_cfg['num_classes']} classes, "
            f"dataset {name!r} has {info.num_classes}"
        )
    # names given at training (--class-names, a copy labelled in another order) stay unless overridden here
    names = class_names or data_cfg.get("class_names") or list(info.label_names)
    if len(names) != int(data_cfg["num_classes"]) - 1:
        raise InputError(f"--class-names: {len(names)} name(s) given, the checkpoint has "
                         f"{int(data_cfg['num_classes']) - 1} foreground classes")
    data_cfg["label_names"] = list(names)
    if getattr(info, "ignore_index", None) is not None:  # nnU-Net "ignore" voxels are not scored
        data_cfg.setdefault("ignore_index", int(info.ignore_index))
    config = {**config, "data": data_cfg}
    out = Path(output) if output else Path(checkpoint).resolve().parent / f"eval-{name}-{split}"
    existing = [p for p in report_paths(out).values() if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} exists; pass --overwrite to replace it or choose another --output")
    with output_folder(out, "evaluate", inputs=[info.root or data_root], overwrite=overwrite):
        cases = get_dataset(name, data_root, split)
        if len(cases) == 0:
            raise InputError(f"dataset {name!r} split {split!r}: no volumes found")
        result = evaluate_model(model, cases, config, device=dev, batch_size=sw_batch_size,
                                save_dir=(out / "predictions") if save_predictions else None, progress=progress,
                                save_suffix=f".{output_format}", raw_labels=raw_labels)
        meta = {
            "checkpoint": str(checkpoint), "dataset": name, "data_root": str(info.root) if info.root else None,
            "split": split, "img_size": data_cfg.get("img_size"), "model": config.get("model"),
            "failures": [{"case": c, "error": m} for c, m in result.failures], "no_spacing": result.no_spacing,
        }
        paths = write_reports(out, [result.transunet, result.spacing], meta)
    return result, paths
