"""The resfu-med components that exported bundle configs name with ``_target_`` and plain arguments.

MONAI's ConfigParser evaluates every ``$``-string as Python. resfu-med refuses such strings in every file it reads, so
the bundles it writes contain none either: each step that MONAI bundles usually write as an expression (paths under
``bundle_root``, the device, the data list, running the engine) is a small function here, instantiated by
``_target_`` with plain arguments and ``@`` references; the window inference is
:class:`resfu_med.bundle.EngineInferer` (``resfu-med infer``'s own function). ``verify-bundle`` then only has to check that no value is an expression and that every ``_target_`` is one
of these components, a MONAI component resfu-med writes, or a registered network.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import torch
from monai.utils import set_determinism

__all__ = [
    "bundle_path",
    "default_device",
    "on_device",
    "image_list",
    "paired_list",
    "parameters_of",
    "load_weights",
    "run_engine",
    "seed_everything",
]


def bundle_path(root: str, name: str) -> str:
    """``os.path.join(root, name)``: a folder or file under the bundle (``models``, ``models/model.pt``, ...)."""
    return os.path.join(str(root), str(name))


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU (override ``device`` on the command line)."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def on_device(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``module`` moved to ``device``."""
    return module.to(device)


def _nifti_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.nii.gz")) + glob.glob(os.path.join(folder, "*.nii")))


def image_list(folder: str, key: str = "image") -> list[dict[str, str]]:
    """``[{key: path}]`` for every ``*.nii``/``*.nii.gz`` directly in ``folder``, sorted by name."""
    return [{key: path} for path in _nifti_files(str(folder))]


def paired_list(folder: str, images: str, labels: str) -> list[dict[str, str]]:
    """``[{"image": ..., "label": ...}]`` pairing ``folder/images`` and ``folder/labels`` NIfTI files by sorted order.

    Raises:
        ValueError: the two folders hold different numbers of files.
    """
    imgs, labs = _nifti_files(os.path.join(folder, images)), _nifti_files(os.path.join(folder, labels))
    if len(imgs) != len(labs):
        raise ValueError(f"{folder}: {len(imgs)} files in {images} but {len(labs)} in {labels}")
    return [{"image": i, "label": lab} for i, lab in zip(imgs, labs)]


def parameters_of(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of ``module`` (an optimizer's ``params``)."""
    return list(module.parameters())


def load_weights(network: torch.nn.Module, path: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Load a state dict into ``network`` (strict) through resfu-med's one reader: ``weights_only=True``, wrapper
    prefixes (``module.``, ``_orig_mod.``) removed."""
    from resfu_med.engine.checkpoint import read_torch_file, unwrap_state_dict

    network.load_state_dict(unwrap_state_dict(read_torch_file(path, "bundle weights", map_location=device)))
    return network


def run_engine(engine: Any) -> Any:
    """``engine.run()`` (a MONAI ``SupervisedEvaluator``/``SupervisedTrainer``)."""
    return engine.run()


def seed_everything(seed: int = 0) -> None:
    """``monai.utils.set_determinism(seed)``."""
    set_determinism(seed=int(seed))
