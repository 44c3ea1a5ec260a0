"""The resfu-med components that exported bundle configs name with ``_target_`` and plain arguments.

MONAI's ConfigParser evaluates every ``$``-string as Python. resfu-med refuses such strings in every file it reads, so
the bundles it writes contain none either: each step that MONAI bundles usually write as an expression (paths under
``bundle_root``, the device, the data list, softmax after the network, the slice zooms of the TransUNet protocol,
running the engine) is a small function or class here, instantiated by ``_target_`` with plain arguments and ``@``
references. ``verify-bundle`` then only has to check that no value is an expression and that every ``_target_`` is one
of these components, a MONAI component resfu-med writes, or a registered network.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import set_determinism
from scipy.ndimage import zoom

__all__ = [
    "bundle_path",
    "default_device",
    "on_device",
    "SoftmaxNetwork",
    "image_list",
    "paired_list",
    "parameters_of",
    "load_weights",
    "run_engine",
    "seed_everything",
    "ZoomSlicesd",
    "ZoomSlicesBackd",
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


class SoftmaxNetwork(torch.nn.Module):
    """``softmax(network(x), dim=1)`` in eval mode: resfu-med blends probabilities, not logits, across windows."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return torch.softmax(out, dim=1)


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
    """Load a state dict into ``network`` (strict), reading it with ``weights_only=True``."""
    network.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return network


def run_engine(engine: Any) -> Any:
    """``engine.run()`` (a MONAI ``SupervisedEvaluator``/``SupervisedTrainer``)."""
    return engine.run()


def seed_everything(seed: int = 0) -> None:
    """``monai.utils.set_determinism(seed)``."""
    set_determinism(seed=int(seed))


def _slices(image: torch.Tensor) -> np.ndarray:
    data = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    return np.ascontiguousarray(data[0].detach().cpu().numpy())


def _like(array: np.ndarray, image: Any) -> MetaTensor:
    meta = image.meta if isinstance(image, MetaTensor) else {}
    return MetaTensor(torch.from_numpy(array)[None], meta=meta)


class ZoomSlicesd(MapTransform):
    """Every ``(Y, X)`` slice of a ``(1, Z, Y, X)`` image to ``size x size`` by a cubic spline (``scipy.ndimage.zoom``,
    order 3), as resfu-med trains and infers 2D models under the TransUNet protocol. A slice that already has that size
    is left as is (a cubic zoom by 1 is not exactly the identity). Metadata are kept.

    Args:
        keys: image keys.
        size: the training slice size.
    """

    def __init__(self, keys: KeysCollection, size: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(size) < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.size = int(size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        n = self.size
        for key in self.key_iterator(d):
            slices = _slices(d[key]).astype(np.float32, copy=False)
            out = np.stack([s if s.shape == (n, n) else zoom(s, [n / s.shape[0], n / s.shape[1]], order=3)
                            for s in slices])
            d[key] = _like(out, d[key])
        return d


class ZoomSlicesBackd(MapTransform):
    """Label slices ``(1, Z, n, n)`` back to each loaded slice's own ``(Y, X)`` size, nearest neighbour.

    The size is the loaded image's ``spatial_shape`` metadata (nibabel order ``(X, Y, Z)``), which the prediction
    inherits from its image.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            shape: Sequence[Any] = d[key].meta["spatial_shape"]
            height, width = int(shape[1]), int(shape[0])
            slices = _slices(d[key])
            out = np.stack([s if s.shape == (height, width) else
                            zoom(s, [height / s.shape[0], width / s.shape[1]], order=0) for s in slices])
            d[key] = _like(out, d[key])
        return d
