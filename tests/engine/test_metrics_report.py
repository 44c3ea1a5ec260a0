"""Aggregation (mean over volumes, then classes), tables and the JSON/CSV files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from resfu_med.metrics import ClassMetric, build_report, format_table, write_reports

NAN = float("nan")


def test_transunet_means_over_volumes_then_classes():
    per_case = {
        "c1": [(0.9, 2.0), (0.5, 10.0)],
        "c2": [(0.7, 4.0), (1.0, 0.0)],
        "c3": [(0.8, 6.0), (0.0, 0.0)],
    }
    r = build_report("transunet", ["liver", "spleen"], per_case)
    d, h = r.class_means()
    np.testing.assert_allclose(d, [0.8, 0.5])
    np.testing.assert_allclose(h, [4.0, 10.0 / 3])
    md, mh = r.mean()
    assert md == pytest.approx(0.65)
    assert mh == pytest.approx((4.0 + 10.0 / 3) / 2)


def test_spacing_report_skips_nan_and_counts_them():
    per_case = {
        "c1": [ClassMetric(0.9, 2.0, ""), ClassMetric(0.0, NAN, "pred")],
        "c2": [ClassMetric(0.5, 6.0, ""), ClassMetric(NAN, NAN, "both")],
        "c3": [ClassMetric(0.0, NAN, "gt"), ClassMetric(0.6, 3.0, "")],
    }
    r = build_report("spacing", ["a", "b"], per_case)
    d, h = r.class_means()
    np.testing.assert_allclose(d, [(0.9 + 0.5 + 0.0) / 3, (0.0 + 0.6) / 2])
    np.testing.assert_allclose(h, [4.0, 3.0])
    assert r.mean()[1] == pytest.approx(3.5)
    c = r.counts()
    assert c == {"scored": [2, 1], "gt_empty": [1, 0], "pred_empty": [0, 1], "both_empty": [0, 1]}


def test_tables_are_labelled():
    t = build_report("transunet", ["aorta"], {"x": [(0.5, 3.0)]})
    s = build_report("spacing", ["aorta"], {"x": [ClassMetric(0.5, 3.0, "")]})
    tt, st = format_table(t), format_table(s)
    assert tt.startswith("TransUNet protocol (voxel units)") and "HD95 (vox)" in tt and "50.00" in tt
    assert st.startswith("spacing-aware (mm)") and "HD95 (mm)" in st and "gt-empty" in st


def test_written_files(tmp_path):
    t = build_report("transunet", ["a", "b"], {"x": [(1.0, 0.0), (0.5, 2.0)], "y": [(0.0, 0.0), (0.5, 4.0)]})
    s = build_report("spacing", ["a", "b"], {"x": [ClassMetric(1.0, 0.0, ""), ClassMetric(0.5, 3.0, "")],
                                              "y": [ClassMetric(0.0, NAN, "pred"), ClassMetric(0.5, 5.0, "")]})
    paths = write_reports(tmp_path, [t, s], {"dataset": "demo"})
    doc = json.loads(paths["json"].read_text())
    assert doc["meta"] == {"dataset": "demo"}
    tj, sj = doc["reports"]["transunet"], doc["reports"]["spacing"]
    assert tj["title"] == "TransUNet protocol (voxel units)" and tj["distance_unit"] == "vox"
    assert sj["title"] == "spacing-aware (mm)" and sj["distance_unit"] == "mm"
    assert tj["num_cases"] == 2
    assert tj["classes"][0] == {"index": 1, "name": "a", "dice": 0.5, "hd95": 0.0}
    assert tj["mean"]["dice"] == pytest.approx(0.5) and tj["mean"]["hd95"] == pytest.approx(1.5)
    assert sj["cases"]["y"][0] == {"name": "a", "dice": 0.0, "hd95": None, "empty": "pred"}
    assert sj["classes"][0]["hd95"] == 0.0 and sj["classes"][0]["pred_empty"] == 1
    assert sj["mean"]["hd95"] == pytest.approx(2.0)
    rows = list(csv.DictReader(paths["transunet"].open()))
    assert len(rows) == 2 * 2 + 2 + 1
    assert rows[0]["protocol"] == "TransUNet protocol (voxel units)" and rows[0]["hd95_unit"] == "vox"
    assert rows[-1]["case"] == "mean" and rows[-1]["class"] == "mean" and float(rows[-1]["dice"]) == pytest.approx(0.5)
    srows = list(csv.DictReader(paths["spacing"].open()))
    assert srows[2]["empty"] == "pred" and math.isnan(float(srows[2]["hd95"]))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes left no temporaries


def test_build_report_rejects_wrong_class_count():
    with pytest.raises(ValueError, match="class values"):
        build_report("transunet", ["a", "b"], {"x": [(1.0, 0.0)]})
    with pytest.raises(ValueError, match="protocol"):
        build_report("nope", ["a"], {})
