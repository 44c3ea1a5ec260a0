"""The training cache is sized by a memory budget (``--cache-gb``); an impossible request is one line before training."""

from __future__ import annotations

import numpy as np
import pytest

from resfu_med.cli import main
from resfu_med.data.cache import DEFAULT_CACHE_FRACTION, available_memory, budget_cache_rate, cache_budget
from resfu_med.errors import InputError


def test_budget_default_and_refusal():
    assert cache_budget(None, available=8 * 10**9) == int(DEFAULT_CACHE_FRACTION * 8 * 10**9)
    assert cache_budget(1.5, available=8 * 10**9) == 1_500_000_000
    assert cache_budget(0, available=8 * 10**9) == 0
    with pytest.raises(InputError, match=r"--cache-gb 20: only 8\.0 GB of memory is available now"):
        cache_budget(20, available=8 * 10**9)
    assert 0 < available_memory() < 2**50


def test_rate_fits_the_budget_whatever_the_dataset_size():
    def load(i):  # a loaded item: 1,000 bytes of image + 250 of label
        return {"image": np.zeros(250, np.float32), "label": np.zeros(250, np.uint8), "case": "x"}

    for n in (100, 1000, 10_000):
        rate, per_item = budget_cache_rate(list(range(n)), load, budget=50_000)
        assert per_item == 1250 and int(rate * n) == 40  # the same 40 items fit, however many there are
    assert budget_cache_rate(list(range(10)), load, budget=10**9, max_rate=0.5)[0] == 0.5
    assert budget_cache_rate(list(range(10)), load, budget=0)[0] == 0.0


@pytest.mark.slow
def test_train_refuses_an_impossible_cache_in_one_line(tmp_path, capsys):
    too_much = available_memory() / 1e9 * 4
    rc = main(["train", "--preset", "quick", "--dataset", "demo", "--output", str(tmp_path / "run"), "--cache-gb", f"{too_much:.0f}",
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()  # (train first lists the settings it uses)
    errors = [line for line in err if "error" in line.lower() or "Traceback" in line]
    assert rc == 2 and len(errors) == 1 and errors == err[-1:], err
    assert errors[0].startswith("resfu-med train: error: --cache-gb") and "GB of memory is available" in errors[0]
    assert not (tmp_path / "run" / "last.pt").exists()
