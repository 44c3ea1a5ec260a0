"""Multi-node DDP: 2 "nodes" x 1 process on one machine, joined by torchrun's c10d rendezvous (gloo), train the same
model as one process with the same global batch (the recipe of docs/scale.md); the run resumes in another world size
at an epoch boundary and is refused, in one line, mid-epoch."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_helpers import free_port, make_trainer, params_of, tiny_config
from resfu_med.engine.checkpoint import load_checkpoint, save_checkpoint
from resfu_med.errors import InputError

NODE = Path(__file__).parent / "_ddp_node.py"


@pytest.mark.slow
def test_two_nodes_c10d_rendezvous_then_one_process_match_single_process(tmp_path):
    cfg = tiny_config(epochs=2, batch_size=4, ce_weight=1.0, dice_weight=0.0)
    cfg["model"]["kwargs"]["dropout"] = 0.0
    first = copy.deepcopy(cfg)
    first["train"]["max_iters"] = 5  # the 2 nodes train epoch 1 of 2 (5 iterations); one process does epoch 2
    (tmp_path / "cfg.json").write_text(json.dumps(first))
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "resfu-test",
                               "--max-restarts", "0", str(NODE), str(tmp_path / "ddp"), str(tmp_path / "cfg.json")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(logs)[-4000:]
    torch.set_num_threads(1)
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["position"]["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert ckpt["iteration"] == 5 and ckpt["position"]["batch_in_epoch"] == 0

    # a run stopped mid-epoch cannot change its world size (the epoch's sample split depends on it): one line
    midway = tmp_path / "midway"
    shutil.copytree(tmp_path / "ddp", midway)
    ckpt["position"]["batch_in_epoch"] = 2
    save_checkpoint(midway / "last.pt", ckpt)
    with pytest.raises(InputError, match="stopped mid-epoch with 2 processes; resume it with the same number"):
        make_trainer(first, midway, resume=True, runtime={"train.max_iters": None}).fit()

    # at an epoch boundary it can: epoch 2 on one process gives the single-process run
    done = make_trainer(first, tmp_path / "ddp", resume=True, runtime={"train.max_iters": None}).fit()
    assert done["finished"] and done["iteration"] == 10
    make_trainer(cfg, tmp_path / "single").fit()
    ddp_p, single_p = params_of(tmp_path / "ddp" / "last.pt"), params_of(tmp_path / "single" / "last.pt")
    for k in single_p:
        torch.testing.assert_close(ddp_p[k], single_p[k], rtol=1e-4, atol=1e-5, msg=f"parameter {k}")
