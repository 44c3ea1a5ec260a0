"""DDP on CPU: two gloo processes train the same model as one process with the same global batch."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from _train_helpers import ddp_worker, free_port, make_trainer, params_of, tiny_config
from resfu_med.engine.checkpoint import load_checkpoint


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path):
    # Cross-entropy only and no dropout: then the DDP gradient (mean over ranks of per-rank means over 2 samples)
    # equals the single-process gradient over the same 4 samples, because rank r's k-th batch holds the samples at
    # global positions 4k + r and 4k + 2 + r (and their augmentation is seeded by that position).
    cfg = tiny_config(epochs=2, batch_size=4, ce_weight=1.0, dice_weight=0.0)
    cfg["model"]["kwargs"]["dropout"] = 0.0
    mp.spawn(ddp_worker, args=(2, free_port(), str(tmp_path / "ddp"), cfg), nprocs=2, join=True)
    torch.set_num_threads(1)
    make_trainer(cfg, tmp_path / "single").fit()

    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["iteration"] == 10 and ckpt["position"]["world_size"] == 2
    assert len(ckpt["rng_ranks"]) == 2  # each rank's RNG state is kept for an exact resume
    assert (tmp_path / "ddp" / "best.pt").is_file() and list((tmp_path / "ddp" / "tb").iterdir())
    ddp_p, single_p = params_of(tmp_path / "ddp" / "last.pt"), params_of(tmp_path / "single" / "last.pt")
    for k in single_p:
        torch.testing.assert_close(ddp_p[k], single_p[k], rtol=1e-4, atol=1e-5, msg=f"parameter {k}")
