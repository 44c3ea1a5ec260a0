"""train.log and progress.png: one line per epoch and per validation; the PNG only where matplotlib is installed."""

from __future__ import annotations

import importlib.util

import pytest

from resfu_med.engine import progress_log
from resfu_med.engine.progress_log import NO_MATPLOTLIB, render_log, write_progress

EPOCHS = [{"epoch": 1, "iteration": 80, "loss": 0.91234, "lr": 0.05, "seconds": 12.34},
          {"epoch": 2, "iteration": 160, "loss": 0.5, "lr": 0.045, "seconds": 11.0, "val_seconds": 3.21}]
VALS = [{"epoch": 2, "iteration": 160, "mean_dice": 0.5, "dice": {"liver": 0.75, "spleen": 0.25}}]


def test_log_lines():
    lines = render_log(EPOCHS, VALS, 15).splitlines()
    assert lines == [
        "epoch    1/15  iteration      80  loss 0.9123  lr 5.000e-02  12.3 s",
        "epoch    2/15  iteration     160  loss 0.5000  lr 4.500e-02  11.0 s",
        "validation epoch    2  iteration     160  mean Dice 50.00  liver 75.00  spleen 25.00  3.2 s",
    ]


def test_without_matplotlib_the_png_is_skipped_with_one_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(progress_log.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert write_progress(tmp_path, EPOCHS, VALS, 15) is False
    text = (tmp_path / "train.log").read_text()
    assert text.splitlines()[0] == NO_MATPLOTLIB and text.count("matplotlib") == 1
    assert not (tmp_path / "progress.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is an optional extra")
def test_png_is_drawn(tmp_path):
    assert write_progress(tmp_path, EPOCHS, VALS, 15) is True
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_progress(tmp_path, EPOCHS[:1], [], 15) is True  # before any validation: "no validation" panel
