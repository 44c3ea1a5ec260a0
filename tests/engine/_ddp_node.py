"""Entry point ``torchrun`` starts on each "node" of the multi-node test: trains the tiny run on CPU (gloo).

Usage: ``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT _ddp_node.py RUN_DIR
CONFIG_JSON``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _train_helpers import make_trainer  # noqa: E402

from resfu_med.engine import distributed as ddp  # noqa: E402

if __name__ == "__main__":
    run_dir, cfg = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    torch.set_num_threads(1)
    info = ddp.init_distributed("cpu")
    assert info.world_size == 2, info
    try:
        make_trainer(cfg, run_dir, dist=info).fit()
    finally:
        ddp.destroy_distributed()
