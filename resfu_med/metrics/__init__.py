"""Segmentation metrics: medpy Dice/HD95 in the TransUNet protocol (voxel units) and a spacing-aware report (mm).

See ``docs/evaluation.md`` for the exact rules and how to read the outputs.
"""

from __future__ import annotations

from resfu_med.metrics.report import (
    PROTOCOLS,
    Report,
    build_report,
    format_table,
    report_paths,
    report_rows,
    report_to_dict,
    write_reports,
)
from resfu_med.metrics.volume import (
    EMPTY_KINDS,
    ClassMetric,
    drop_ignored,
    spacing_metrics,
    transunet_dice,
    transunet_metrics,
)

__all__ = [
    "transunet_metrics",
    "transunet_dice",
    "spacing_metrics",
    "drop_ignored",
    "ClassMetric",
    "EMPTY_KINDS",
    "PROTOCOLS",
    "Report",
    "build_report",
    "format_table",
    "report_to_dict",
    "report_rows",
    "write_reports",
    "report_paths",
]
