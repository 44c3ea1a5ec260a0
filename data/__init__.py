"""Datasets and transforms of resfu-med (installed as ``resfu_med.data``): Synapse, ACDC, MSD and the demo phantoms.

Public API (see ``docs/api.md`` and ``docs/datasets.md``): :class:`DatasetInfo`, :func:`dataset_info`,
:func:`get_dataset`, :func:`get_transforms`, :func:`get_patch_transforms`, :func:`make_intensity_transform`, :func:`ensure_demo_data`,
:func:`read_image` / :func:`write_image` (every format; :mod:`.io`, with the exact orientation convention),
:func:`make_demo_dataset`, the ``prepare_*`` converters and the dataset classes.
"""

from __future__ import annotations

from .acdc import ACDC_CLASSES, ACDCDataset, prepare_acdc
from .datasets import PreparedDataset, SynapseDataset
from .demo import make_demo_dataset
from .intensity import RobustZScored, make_intensity_transform
from .msd import MSDDataset, msd_info, prepare_msd
from .plans import PLANS_FILE, read_plans
from .patch_transforms import check_patch_size, get_patch_transforms, get_slice_patch_transforms
from .io import Geometry, from_nifti_array, read_image, spacing_from_affine, to_nifti_array, write_image
from .registry import (
    DATASET_NAMES,
    DatasetInfo,
    dataset_info,
    ensure_demo_data,
    get_dataset,
    prepare_dataset,
    prepared_cache_dir,
    resfu_home,
)
from .synapse import SYNAPSE_CLASSES, SYNAPSE_LABEL_MAP, SYNAPSE_TEST_CASES, prepare_synapse
from .transforms import get_transforms

__all__ = [
    "PLANS_FILE",
    "read_plans",
    "ACDC_CLASSES",
    "Geometry",
    "ACDCDataset",
    "MSDDataset",
    "DATASET_NAMES",
    "DatasetInfo",
    "PreparedDataset",
    "SYNAPSE_CLASSES",
    "SYNAPSE_LABEL_MAP",
    "SYNAPSE_TEST_CASES",
    "SynapseDataset",
    "check_patch_size",
    "dataset_info",
    "ensure_demo_data",
    "from_nifti_array",
    "get_dataset",
    "prepare_dataset",
    "get_patch_transforms",
    "get_slice_patch_transforms",
    "get_transforms",
    "read_image",
    "make_demo_dataset",
    "make_intensity_transform",
    "RobustZScored",
    "msd_info",
    "prepare_acdc",
    "prepare_msd",
    "prepared_cache_dir",
    "prepare_synapse",
    "resfu_home",
    "write_image",
    "spacing_from_affine",
    "to_nifti_array",
]
