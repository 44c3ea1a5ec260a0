"""TorchScript and ONNX export of a network, checked against the eager model on an example input.

TorchScript: ``torch.jit.script`` first (keeps shape-generic control flow, so the file accepts any input size the
network does); a network that cannot be scripted (those with ReSFU) is traced on the example input instead (the trace
is then specific to that input size — the size the bundle's sliding-window inferer feeds). ONNX: the TorchScript-based
exporter (``torch.onnx.export(..., dynamo=False)``) at a fixed spatial size with a dynamic batch axis.

Both trace the FNS gather through its pure-PyTorch reference (``resfu_med.ops.use_backend("reference")``): plain torch / ONNX
ops, so the files load without resfu-med's compiled extension, and the custom op needs no ONNX symbolic. The check
against the eager model runs with the same backend, so a traced file equals the model exactly on the example.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from resfu_med.atomic import atomic_path, atomic_write_bytes
from resfu_med.errors import InputError
from resfu_med.outputs import claim_output_file
from resfu_med.ops import use_backend

__all__ = ["script_or_trace", "export_torchscript", "export_onnx", "onnx_available", "run_onnx"]


def _reference_backend() -> contextlib.AbstractContextManager[None]:
    """Force the pure-PyTorch FNS reference (plain torch ops, exportable) for the duration of an export."""
    return use_backend("reference")


def script_or_trace(model: torch.nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """Compile ``model`` (in eval mode) to TorchScript.

    Args:
        model: the network.
        example: an input batch, used by the fallback trace.

    Returns:
        ``(module, "script" | "trace")``.
    """
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        try:
            return torch.jit.script(model), "script"
        except Exception as err:  # noqa: BLE001 - any scripting failure falls back to tracing
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        with torch.no_grad(), _reference_backend():
            traced = torch.jit.trace(model, example, check_trace=False)
    warnings.warn(f"{type(model).__name__} cannot be scripted ({reason}); traced at input shape {tuple(example.shape)}")
    return traced, "trace"


def export_torchscript(
    model: torch.nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    meta_values: dict[str, Any] | None = None,
    extra_files: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model`` as TorchScript to ``path`` (atomically) and check it against the eager model.

    Args:
        model: the network.
        path: destination ``.ts`` / ``.pt`` file.
        example: an input batch to check the exported model on.
        meta_values: bundle metadata stored in the archive (MONAI ``save_net_with_metadata``), if given.
        extra_files: more files stored in the archive's ``extras`` (e.g. ``inference.json``).

    Returns:
        ``{"path", "method": "script" | "trace", "max_abs_diff"}`` on the example (0.0 when identical).
    """
    from monai.data import save_net_with_metadata

    model = model.eval()
    jit_model, method = script_or_trace(model, example)
    buffer = io.BytesIO()
    save_net_with_metadata(jit_model, buffer, include_config_vals=True, append_timestamp=False,
                           meta_values=meta_values or {}, more_extra_files=extra_files or {})
    atomic_write_bytes(path, buffer.getvalue())
    with torch.no_grad(), _reference_backend():
        loaded = torch.jit.load(str(path), map_location=example.device)
        diff = (loaded(example) - model(example)).abs().max().item()
    return {"path": str(path), "method": method, "max_abs_diff": diff}


def _register_onnx_symbolics(opset: int) -> None:
    """Symbolics the TorchScript-based ONNX exporter lacks for ops our networks use.

    ``aten::exp2`` (ReSFU's power-of-two prescale before GroupNorm) becomes ``Pow(2, x)``.
    """
    def exp2(g, x):
        two = g.op("Constant", value_t=torch.tensor(2.0))
        return g.op("Pow", g.op("CastLike", two, x), x)

    torch.onnx.register_custom_op_symbolic("aten::exp2", exp2, opset)


def onnx_available() -> bool:
    """True when ``onnx`` and ``onnxruntime`` import (the ``onnx`` extra of resfu-med)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def run_onnx(path: str | os.PathLike, example: torch.Tensor) -> torch.Tensor:
    """Run an exported ONNX model on ``example`` with onnxruntime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: example.detach().cpu().numpy()})[0])


def export_onnx(
    model: torch.nn.Module, path: str | os.PathLike, example: torch.Tensor, opset: int = 17
) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``path`` (atomically) and check it through onnxruntime against the eager model.

    Args:
        model: the network.
        path: destination ``.onnx`` file.
        example: an input batch; its spatial size is fixed in the graph, the batch axis is dynamic.
        opset: ONNX opset version.

    Returns:
        ``{"path", "method": "onnx", "max_abs_diff"}`` on the example.

    Raises:
        ImportError: ``onnx``/``onnxruntime`` are not installed (``pip install resfu-med[onnx]``).
    """
    if not onnx_available():
        raise ImportError("ONNX export needs onnx and onnxruntime: pip install 'resfu-med[onnx]'")
    model = model.eval().cpu()
    example = example.cpu()
    path = Path(path)
    _register_onnx_symbolics(opset)
    with _reference_backend(), torch.no_grad(), warnings.catch_warnings(), atomic_path(path, suffix=".onnx") as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["pred"],
                          dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    with torch.no_grad(), _reference_backend():
        diff = (run_onnx(path, example) - model(example)).abs().max().item()
    return {"path": str(path), "method": "onnx", "max_abs_diff": diff}


def export_model(
    checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "torchscript", roi_size: list[int] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the network of a ``resfu-med train`` checkpoint to TorchScript or ONNX and check it.

    Args:
        checkpoint: the checkpoint.
        out: destination file.
        fmt: ``"torchscript"`` or ``"onnx"``.
        roi_size: spatial size of the check input (and of the ONNX graph); default the inferer's patch.
        overwrite: replace an existing ``out`` (the output policy, :func:`resfu_med.outputs.claim_output_file`).

    Returns:
        ``{"path", "method", "max_abs_diff"}`` (see :func:`export_torchscript` / :func:`export_onnx`).

    Raises:
        ValueError: unknown ``fmt``.
        InputError: ONNX asked for without ``onnx``/``onnxruntime``.
        CheckpointError: unreadable checkpoint or weights of another architecture.
    """
    from resfu_med.bundle.checkpoint_io import example_input, load_for_bundle

    if fmt not in ("torchscript", "onnx"):
        raise ValueError(f"fmt must be 'torchscript' or 'onnx', got {fmt!r}")
    if fmt == "onnx" and not onnx_available():
        raise InputError("--format onnx needs onnx and onnxruntime: pip install 'resfu-med[onnx]'")
    claim_output_file(out, inputs=[checkpoint], overwrite=overwrite)
    trained = load_for_bundle(checkpoint)
    net, config = trained.model, trained.config
    example = example_input(config, roi_size)
    if fmt == "onnx":
        return export_onnx(net, out, example)
    return export_torchscript(net, out, example)
