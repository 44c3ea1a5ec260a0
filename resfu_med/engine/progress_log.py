"""A training run a user can watch without TensorBoard: ``train.log`` and ``progress.png`` in the run folder.

``train.log`` has one line per epoch (mean training loss, learning rate, seconds) and one per validation (mean and
per-class Dice, seconds); ``progress.png`` (in the spirit of nnU-Net's) is redrawn after every epoch: training loss and
learning rate against the epoch, validation Dice per class and their mean. Both are rendered from the records kept in
the checkpoint, so a resumed run's files are exactly those of an uninterrupted one, and written atomically.
matplotlib is an optional extra (``pip install "resfu-med[bench]"``): without it the PNG is skipped, said once in
``train.log``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resfu_med.atomic import atomic_path, atomic_write_text

__all__ = ["render_log", "write_progress", "NO_MATPLOTLIB"]

NO_MATPLOTLIB = 'progress.png skipped: matplotlib is not installed (pip install "resfu-med[bench]")'


def render_log(epochs: Sequence[dict[str, Any]], validations: Sequence[dict[str, Any]], total_epochs: int,
               note: str | None = None) -> str:
    """The text of ``train.log``: epoch and validation lines in the order they happened.

    Args:
        epochs: ``{"epoch", "iteration", "loss", "lr", "seconds"}`` per finished epoch, with ``"val_seconds"`` when
            it was validated.
        validations: history entries ``{"epoch", "iteration", "mean_dice", "dice": {name: value}}``.
        total_epochs: the run's planned epochs.
        note: a line written first (e.g. that progress.png is skipped).
    """
    lines = [note] if note else []
    by_epoch = {int(v["epoch"]): v for v in validations}
    for e in epochs:
        lines.append(f"epoch {e['epoch']:>4}/{total_epochs}  iteration {e['iteration']:>7}  loss {e['loss']:.4f}  "
                     f"lr {e['lr']:.3e}  {e['seconds']:.1f} s")
        v = by_epoch.pop(int(e["epoch"]), None)
        if v is not None:
            lines.append(_validation_line(v, e.get("val_seconds")))
    lines.extend(_validation_line(v) for v in by_epoch.values())
    return "\n".join(lines) + ("\n" if lines else "")


def _validation_line(v: dict[str, Any], seconds: float | None = None) -> str:
    per_class = "  ".join(f"{name} {100 * value:.2f}" for name, value in v["dice"].items())
    secs = f"  {seconds:.1f} s" if seconds is not None else ""
    return f"validation epoch {v['epoch']:>4}  iteration {v['iteration']:>7}  mean Dice {100 * v['mean_dice']:.2f}  " \
           f"{per_class}{secs}"


def write_progress(run_dir: str | Path, epochs: Sequence[dict[str, Any]], validations: Sequence[dict[str, Any]],
                   total_epochs: int) -> bool:
    """Rewrite ``train.log`` and redraw ``progress.png``; returns whether the PNG was drawn."""
    run_dir = Path(run_dir)
    can_plot = importlib.util.find_spec("matplotlib") is not None
    atomic_write_text(run_dir / "train.log", render_log(epochs, validations, total_epochs,
                                                         None if can_plot else NO_MATPLOTLIB))
    if not can_plot or not epochs:
        return False
    _draw(run_dir / "progress.png", epochs, validations)
    return True


def _draw(path: Path, epochs: Sequence[dict[str, Any]], validations: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; and never pop a window from a training run
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    x = [e["epoch"] for e in epochs]
    ax_loss.plot(x, [e["loss"] for e in epochs], color="tab:blue", label="training loss")
    ax_loss.set_ylabel("loss")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(x, [e["lr"] for e in epochs], color="tab:orange", linestyle="--", label="learning rate")
    ax_lr.set_ylabel("learning rate")
    handles = ax_loss.get_legend_handles_labels()[0] + ax_lr.get_legend_handles_labels()[0]
    ax_loss.legend(handles, [h.get_label() for h in handles], loc="upper right")
    if validations:
        vx = [v["epoch"] for v in validations]
        for name in validations[-1]["dice"]:
            ax_dice.plot(vx, [100 * v["dice"].get(name, float("nan")) for v in validations], marker=".", label=name)
        ax_dice.plot(vx, [100 * v["mean_dice"] for v in validations], color="black", linewidth=2, label="mean")
        ax_dice.legend(loc="lower right", fontsize="small", ncol=2)
    else:
        ax_dice.text(0.5, 0.5, "no validation", ha="center", va="center", transform=ax_dice.transAxes)
    ax_dice.set_ylabel("validation Dice (%)")
    ax_dice.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
