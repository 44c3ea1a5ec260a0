"""resfu_med.data.io: every format round-trips an oblique, anisotropic volume; SimpleITK and nibabel are the judges."""

from __future__ import annotations

import locale

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from resfu_med.data.io import Geometry, find_images, output_suffix, read_image, write_image
from resfu_med.errors import InputError

SPACING = (0.7, 0.9, 2.5)  # x, y, z: anisotropic
ORIGIN = (-120.5, 33.25, 7.0)


def _oblique_direction() -> np.ndarray:
    a, b = np.deg2rad(20.0), np.deg2rad(-12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _labels_zyx() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(5, 7, 9))


def _sitk_source(path, array) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(_oblique_direction().ravel().tolist())
    sitk.WriteImage(img, str(path))


def _assert_same_sitk_geometry(a_path, b_path, shape=None):
    a, b = sitk.ReadImage(str(a_path)), sitk.ReadImage(str(b_path))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("suffix, out_suffix", [(".mha", ".mha"), (".mhd", ".mha"), (".nrrd", ".nrrd"),
                                                (".nhdr", ".nrrd")])
def test_itk_formats_round_trip(tmp_path, suffix, out_suffix):
    labels = _labels_zyx()
    src = tmp_path / f"case{suffix}"
    _sitk_source(src, labels)
    arr, geo = read_image(src, dtype=np.uint8)
    np.testing.assert_array_equal(arr, labels)
    assert geo.shape == labels.shape and output_suffix(geo) == out_suffix
    np.testing.assert_allclose(geo.spacing, SPACING, atol=1e-6)
    np.testing.assert_allclose(geo.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(geo.direction, _oblique_direction(), atol=1e-6)
    out = write_image(tmp_path / f"out{output_suffix(geo)}", arr, geo)
    _assert_same_sitk_geometry(src, out)


def test_nifti_round_trip_keeps_header(tmp_path):
    labels = _labels_zyx()
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ _oblique_direction() @ np.diag(SPACING)
    affine[:3, 3] = [10.0, -20.0, 30.0]
    img = nib.Nifti1Image(labels.transpose(2, 1, 0), affine)
    img.header["descrip"] = b"user header"
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    src = tmp_path / "case.nii.gz"
    nib.save(img, str(src))
    arr, geo = read_image(src, dtype=np.uint8)
    np.testing.assert_array_equal(arr, labels)
    out = write_image(tmp_path / f"out{output_suffix(geo)}", arr, geo)
    assert out.name == "out.nii.gz"
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    assert back.header["descrip"].item() == b"user header" and back.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels.transpose(2, 1, 0))
    _assert_same_sitk_geometry(src, out)  # SimpleITK reads both the same way too


@pytest.mark.parametrize("src_suffix, fmt", [(".nii.gz", "mha"), (".nii.gz", "nrrd"), (".mha", "nii.gz"),
                                             (".nrrd", "nii.gz")])
def test_cross_format_keeps_geometry(tmp_path, src_suffix, fmt):
    labels = _labels_zyx()
    src = tmp_path / f"case{src_suffix}"
    _sitk_source(src, labels)  # SimpleITK writes the NIfTI source too: an independent affine/LPS conversion
    arr, geo = read_image(src, dtype=np.uint8)
    out = write_image(tmp_path / f"out{output_suffix(geo, fmt)}", arr, geo)
    _assert_same_sitk_geometry(src, out)


def test_geometry_affine_matches_nibabel(tmp_path):
    src = tmp_path / "case.nii.gz"
    _sitk_source(src, _labels_zyx())
    geo = read_image(tmp_path / "case.nii.gz")[1]
    np.testing.assert_allclose(geo.affine, nib.load(str(src)).affine, atol=1e-5)  # nibabel stores float32
    mha = tmp_path / "case.mha"
    _sitk_source(mha, _labels_zyx())
    np.testing.assert_allclose(read_image(mha)[1].affine, geo.affine, atol=1e-5)
    np.testing.assert_allclose(Geometry.from_affine(geo.affine, geo.shape).direction, _oblique_direction(), atol=1e-6)


def _write_dicom_series(folder, volume_zyx):
    """Write a DICOM series with SimpleITK.

    GDCM's writer sets the C locale to "C" and leaves it there; the pytest process would then decode text as ASCII and
    later tests fail far from here (torch.compile loads its UTF-8 templates with the default encoding). So restore it.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(folder, volume_zyx)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(folder, volume_zyx):
    folder.mkdir()
    direction = _oblique_direction()
    img = sitk.GetImageFromArray(volume_zyx.astype(np.int16))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(direction.ravel().tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orient = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    for z in range(img.GetDepth()):
        sl = img[:, :, z]
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")
        sl.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1.2")
        sl.SetMetaData("0020|0037", orient)
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in img.TransformIndexToPhysicalPoint((0, 0, z))))
        sl.SetMetaData("0020|0013", str(z))
        sl.SetMetaData("0018|0050", str(SPACING[2]))
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_read_and_write_as_nifti(tmp_path):
    vol = _labels_zyx().astype(np.int16) * 100 - 50
    _write_dicom_series(tmp_path / "series", vol)
    arr, geo = read_image(tmp_path / "series")
    np.testing.assert_array_equal(arr, vol.astype(np.float32))
    # the judge: SimpleITK's own series reader
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    ref = reader.Execute()
    np.testing.assert_allclose(geo.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(geo.origin, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(geo.direction.ravel(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(geo.spacing, SPACING, atol=1e-4)
    assert output_suffix(geo) == ".nii.gz"
    out = write_image(tmp_path / "seg.nii.gz", (arr > 0).astype(np.uint8), geo)
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-5)  # NIfTI stores float32
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    images, unsupported = find_images(tmp_path / "series")
    assert images == [tmp_path / "series"] and unsupported == []


def test_reading_a_dicom_series_keeps_the_process_locale(tmp_path):
    # Reading must not do what GDCM's writer does (set the C locale to "C", after which the process decodes text as
    # ASCII): resfu-med only reads DICOM, and a user's process must keep its locale.
    _write_dicom_series(tmp_path / "series", _labels_zyx().astype(np.int16))
    before = (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False))
    assert find_images(tmp_path)[0] == [tmp_path / "series"]
    read_image(tmp_path / "series")
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before


def test_find_images_reports_unsupported(tmp_path):
    _sitk_source(tmp_path / "a.nii.gz", _labels_zyx())
    _sitk_source(tmp_path / "b.mhd", _labels_zyx())  # writes b.mhd + b.raw (data file of the header, not reported)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    images, unsupported = find_images(tmp_path)
    assert [p.name for p in images] == ["a.nii.gz", "b.mhd"]
    assert [p.name for p in unsupported] == ["notes.txt", "scan.png"]


def test_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "broken.mha"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="broken.mha"):
        read_image(bad)
    with pytest.raises(InputError, match="unsupported"):
        read_image(tmp_path / "x.txt") if (tmp_path / "x.txt").write_text("x") else None
    nan = sitk.GetImageFromArray(np.full((2, 3, 4), np.nan, np.float32))
    sitk.WriteImage(nan, str(tmp_path / "nan.nrrd"))
    with pytest.raises(InputError, match="NaN"):
        read_image(tmp_path / "nan.nrrd")
    with pytest.raises(InputError, match="non-integer"):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 3, 4), 0.5, np.float32)), str(tmp_path / "f.mha"))
        read_image(tmp_path / "f.mha", dtype=np.uint8)
