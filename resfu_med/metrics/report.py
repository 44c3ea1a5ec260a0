"""Aggregate per-volume metrics into per-class and mean tables, print them, and write JSON + CSV.

Means follow TransUNet: first over volumes per class, then over classes. Two reports exist and are always labelled:
``"transunet"`` — *TransUNet protocol (voxel units)*, every case counts (empty-mask rules give 0/1 values); and
``"spacing"`` — *spacing-aware (mm)*, NaN values (undefined distances) are left out of the means and counted instead.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resfu_med.atomic import atomic_write_json, atomic_write_text
from resfu_med.metrics.volume import ClassMetric

__all__ = [
    "PROTOCOLS",
    "Report",
    "build_report",
    "format_table",
    "report_to_dict",
    "report_rows",
    "write_reports",
    "report_paths",
]

#: protocol key → (title, distance unit)
PROTOCOLS = {
    "transunet": ("TransUNet protocol (voxel units)", "vox"),
    "spacing": ("spacing-aware (mm)", "mm"),
}


@dataclass
class Report:
    """Metrics of one protocol over a set of volumes.

    Attributes:
        protocol: ``"transunet"`` or ``"spacing"`` (see :data:`PROTOCOLS`).
        label_names: foreground class names, index 0 is class 1.
        cases: volume names, one per row of ``dice``/``hd95``.
        dice: ``(n_cases, n_classes)`` Dice in [0, 1] (NaN allowed in the spacing report).
        hd95: ``(n_cases, n_classes)`` HD95 in voxels or mm.
        empty: ``(n_cases, n_classes)`` empty-mask tags (spacing report; "" everywhere for TransUNet's).
    """

    protocol: str
    label_names: list[str]
    cases: list[str] = field(default_factory=list)
    dice: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    hd95: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    empty: list[list[str]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return PROTOCOLS[self.protocol][0]

    @property
    def unit(self) -> str:
        return PROTOCOLS[self.protocol][1]

    def _nanmean(self, a: np.ndarray, axis: int | None) -> np.ndarray:
        with warnings.catch_warnings():  # an all-NaN column is a legitimate "no value", not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, axis=axis)

    def class_means(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class means over volumes (NaN-skipping for the spacing report): ``(dice, hd95)``, each ``(n_classes,)``."""
        if not self.cases:
            n = len(self.label_names)
            return np.full(n, np.nan), np.full(n, np.nan)
        return self._nanmean(self.dice, 0), self._nanmean(self.hd95, 0)

    def mean(self) -> tuple[float, float]:
        """Mean over classes of the per-class means: ``(mean_dice, mean_hd95)``."""
        d, h = self.class_means()
        return float(self._nanmean(d, None)), float(self._nanmean(h, None))

    def counts(self) -> dict[str, list[int]]:
        """Per class: how many volumes were scored and how many had each kind of empty mask."""
        tags = np.array(self.empty, dtype=object).reshape(len(self.cases), len(self.label_names))
        return {
            "scored": [int(np.isfinite(self.hd95[:, j]).sum()) for j in range(len(self.label_names))],
            "gt_empty": [int((tags[:, j] == "gt").sum()) for j in range(len(self.label_names))],
            "pred_empty": [int((tags[:, j] == "pred").sum()) for j in range(len(self.label_names))],
            "both_empty": [int((tags[:, j] == "both").sum()) for j in range(len(self.label_names))],
        }


def build_report(
    protocol: str,
    label_names: Sequence[str],
    per_case: Mapping[str, Sequence[tuple[float, float] | ClassMetric]],
) -> Report:
    """Collect per-case results of :func:`transunet_metrics` or :func:`spacing_metrics` into a :class:`Report`.

    Args:
        protocol: ``"transunet"`` or ``"spacing"``.
        label_names: foreground class names (``num_classes - 1`` of them).
        per_case: case name → the per-class list returned by the metric function.

    Returns:
        The report, cases in the mapping's order.

    Raises:
        ValueError: unknown protocol, or a case whose class count differs from ``label_names``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    names = [str(n) for n in label_names]
    dice, hd, empty = [], [], []
    for case, values in per_case.items():
        if len(values) != len(names):
            raise ValueError(f"case {case!r} has {len(values)} class values, expected {len(names)} ({names})")
        dice.append([float(v[0]) for v in values])
        hd.append([float(v[1]) for v in values])
        empty.append([v.empty if isinstance(v, ClassMetric) else "" for v in values])
    shape = (len(dice), len(names))
    return Report(
        protocol=protocol,
        label_names=names,
        cases=[str(c) for c in per_case],
        dice=np.asarray(dice, dtype=np.float64).reshape(shape),
        hd95=np.asarray(hd, dtype=np.float64).reshape(shape),
        empty=empty,
    )


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def report_to_dict(report: Report) -> dict[str, Any]:
    """A JSON-able summary: title, units, per-class means, overall mean, counts and every per-case value.

    Dice is a fraction in [0, 1]; NaN becomes ``null``.
    """
    d, h = report.class_means()
    md, mh = report.mean()
    counts = report.counts()
    classes = []
    for j, name in enumerate(report.label_names):
        entry = {"index": j + 1, "name": name, "dice": _num(d[j]), "hd95": _num(h[j])}
        if report.protocol == "spacing":
            entry.update({k: v[j] for k, v in counts.items()})
        classes.append(entry)
    return {
        "title": report.title,
        "distance_unit": report.unit,
        "num_cases": len(report.cases),
        "mean": {"dice": _num(md), "hd95": _num(mh)},
        "classes": classes,
        "cases": {
            case: [
                {"name": name, "dice": _num(report.dice[i, j]), "hd95": _num(report.hd95[i, j])}
                | ({"empty": report.empty[i][j]} if report.protocol == "spacing" else {})
                for j, name in enumerate(report.label_names)
            ]
            for i, case in enumerate(report.cases)
        },
    }


def report_rows(report: Report) -> list[dict[str, Any]]:
    """CSV rows: one per case and class, then ``case == "mean"`` rows per class and one ``class == "mean"`` row."""
    rows = []
    for i, case in enumerate(report.cases):
        for j, name in enumerate(report.label_names):
            rows.append({"case": case, "class_index": j + 1, "class": name, "dice": report.dice[i, j],
                         "hd95": report.hd95[i, j], "empty": report.empty[i][j]})
    d, h = report.class_means()
    for j, name in enumerate(report.label_names):
        rows.append({"case": "mean", "class_index": j + 1, "class": name, "dice": d[j], "hd95": h[j], "empty": ""})
    md, mh = report.mean()
    rows.append({"case": "mean", "class_index": "", "class": "mean", "dice": md, "hd95": mh, "empty": ""})
    return rows


def _csv_text(report: Report) -> str:
    buf = io.StringIO()
    # The protocol and unit travel in every row so a concatenated or renamed file still says what it measures.
    writer = csv.DictWriter(buf, fieldnames=["protocol", "case", "class_index", "class", "dice", "hd95", "hd95_unit",
                                             "empty"], lineterminator="\n")
    writer.writeheader()
    for row in report_rows(report):
        row = {"protocol": report.title, "hd95_unit": report.unit, **row}
        for k in ("dice", "hd95"):
            row[k] = "nan" if not math.isfinite(row[k]) else f"{row[k]:.6f}"
        writer.writerow(row)
    return buf.getvalue()


def format_table(report: Report) -> str:
    """A fixed-width table: one row per class and a mean row; Dice in %, HD95 in the report's unit."""
    d, h = report.class_means()
    md, mh = report.mean()
    width = max([len("class")] + [len(n) for n in report.label_names])
    spacing = report.protocol == "spacing"
    head = f"{'class':<{width}}  {'Dice (%)':>9}  {'HD95 (' + report.unit + ')':>10}"
    counts = report.counts() if spacing else {}
    if spacing:
        head += f"  {'scored':>6}  {'gt-empty':>8}  {'pred-empty':>10}  {'both-empty':>10}"
    note = "; NaN (empty-mask) cases left out of means" if spacing else ""
    lines = [f"{report.title} - {len(report.cases)} case(s){note}", head, "-" * len(head)]

    def fmt(x: float, scale: float = 1.0) -> str:
        return "nan" if not math.isfinite(x) else f"{x * scale:.2f}"

    for j, name in enumerate(report.label_names):
        line = f"{name:<{width}}  {fmt(d[j], 100):>9}  {fmt(h[j]):>10}"
        if spacing:
            line += "".join(f"  {counts[k][j]:>{w}}" for k, w in
                            (("scored", 6), ("gt_empty", 8), ("pred_empty", 10), ("both_empty", 10)))
        lines.append(line)
    lines.append("-" * len(head))
    lines.append(f"{'mean':<{width}}  {fmt(md, 100):>9}  {fmt(mh):>10}")
    return "\n".join(lines)


def report_paths(output_dir: str | os.PathLike) -> dict[str, Path]:
    """The files :func:`write_reports` writes in ``output_dir``: keys ``json``, ``transunet``, ``spacing``."""
    out = Path(output_dir)
    return {"json": out / "metrics.json", "transunet": out / "metrics_transunet_voxel.csv",
            "spacing": out / "metrics_spacing_mm.csv"}


def write_reports(
    output_dir: str | os.PathLike, reports: Sequence[Report], meta: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``metrics.json`` (all reports + ``meta``) and one CSV per report, each atomically.

    Args:
        output_dir: folder, created if missing.
        reports: the reports to write (usually the TransUNet and the spacing-aware one).
        meta: extra JSON-able fields stored under ``"meta"`` (checkpoint, dataset, split, failures, ...).

    Returns:
        The paths written, keyed as in :func:`report_paths`.
    """
    paths = report_paths(output_dir)
    written = {}
    doc = {"meta": dict(meta or {}), "reports": {r.protocol: report_to_dict(r) for r in reports}}
    atomic_write_json(paths["json"], doc)
    written["json"] = paths["json"]
    for r in reports:
        atomic_write_text(paths[r.protocol], _csv_text(r))
        written[r.protocol] = paths[r.protocol]
    return written
