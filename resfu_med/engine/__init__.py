"""Training, evaluation and inference loops of resfu-med.

Modules (imported directly; nothing heavy is imported here so ``resfu-med --help`` stays fast):

- :mod:`resfu_med.engine.config` — run configuration: paper defaults, dataset presets, config files, validation.
- :mod:`resfu_med.engine.checkpoint` — ``save_checkpoint`` (atomic), ``load_checkpoint``, ``load_model``.
- :mod:`resfu_med.engine.trainer` — the resumable training loop (TensorBoard, AMP, DDP).
- :mod:`resfu_med.engine.inferer` — window-level inference (MONAI sense): slice-wise (2D) and sliding-window (3D) prediction of arrays.
- :mod:`resfu_med.engine.evaluator` — volumetric Dice/HD95 evaluation of a dataset split.
- :mod:`resfu_med.engine.predictor` — file-level prediction (nnU-Net sense): image files in, label files out with their geometry.
"""

from __future__ import annotations

__all__: list[str] = []
