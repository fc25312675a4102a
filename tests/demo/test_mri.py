"""Synthetic brain MRI: template without network, NIfTI image and mask, tumour boxes, DICOM geometry."""

from __future__ import annotations

import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from medvision.demo.mri import dicom_frame, load_template, write_mri

SEED = 2  # volumes 1..3 have 1, 0 and 2 tumours
N_VOLUMES = 3
N_DICOM = 2


@pytest.fixture(scope="module")
def mri(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("mri")
    return root / "mri", write_mri(root, seed=SEED, n_volumes=N_VOLUMES, n_dicom=N_DICOM)


def test_template_loads_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    load_template.cache_clear()
    template = load_template()
    assert template.image.shape == template.mask.shape == (99, 117, 95)
    np.testing.assert_allclose(np.diag(template.affine)[:3], [2.0, 2.0, 2.0])
    assert 150_000 < template.mask.sum() < 300_000


def test_variety(mri: tuple[Path, list[dict]]) -> None:
    _, records = mri
    assert [len(r["tumours"]) for r in records] == [1, 0, 2]
    assert [r["dicom"] is not None for r in records] == [True, True, False]


def test_nifti_image_and_mask(mri: tuple[Path, list[dict]]) -> None:
    base, records = mri
    template = load_template()
    for record in records:
        image = nib.load(base / record["image"])
        mask = nib.load(base / record["mask"])
        assert image.shape == mask.shape == template.image.shape
        assert image.get_data_dtype() == np.int16
        assert mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, mask.affine)
        np.testing.assert_allclose(image.affine, np.array(record["affine"]))
        np.testing.assert_allclose(image.affine[:3, :3], template.affine[:3, :3])  # only translated
        assert np.abs(image.affine[:3, 3] - template.affine[:3, 3]).max() <= 4.0
        data = image.get_fdata()
        assert data.min() >= 0
        labels = np.asarray(mask.dataobj)
        assert sorted(np.unique(labels)) == list(range(len(record["tumours"]) + 1))

        brain = template.mask.sum()
        head = data > 0.3 * np.percentile(data, 99)
        assert 0.7 * brain < head.sum() < 1.3 * brain  # the deformed brain keeps its size

        components, n = ndi.label(labels > 0)
        assert n == len(record["tumours"])
        objects = ndi.find_objects(labels)
        voxel_mm3 = abs(np.linalg.det(image.affine[:3, :3]))
        for tumour in record["tumours"]:
            k = tumour.index
            box = objects[k - 1]
            assert [s.start for s in box] + [s.stop for s in box] == tumour.box_voxel
            i0, j0, k0, i1, j1, k1 = tumour.box_voxel
            inside = labels[i0:i1, j0:j1, k0:k1] == k
            assert inside.sum() == (labels == k).sum() == tumour.n_voxels
            # one connected component per tumour
            assert len(np.unique(components[labels == k])) == 1
            assert tumour.volume_mm3 == pytest.approx(tumour.n_voxels * voxel_mm3)
            assert tumour.diameter_mm == pytest.approx((6 * tumour.volume_mm3 / np.pi) ** (1 / 3), abs=1e-3)
            assert 3.0 <= tumour.diameter_mm / 2 <= 17.0  # semi-axes of 4 to 15 mm
            corners = image.affine @ np.array([[i0, j0, k0, 1.0], [i1, j1, k1, 1.0]]).T
            np.testing.assert_allclose(
                tumour.box_world_mm, [*corners[:3].min(axis=1), *corners[:3].max(axis=1)], atol=1e-3
            )
            centroid = image.affine @ np.append(np.argwhere(labels == k).mean(axis=0), 1.0)
            np.testing.assert_allclose(tumour.centre_world_mm, centroid[:3], atol=1e-3)
            # visible: the tumour stands out from the brain around it
            ring = ndi.binary_dilation(labels == k, iterations=3) & ~ndi.binary_dilation(labels > 0) & head
            assert np.percentile(data[labels == k], 90) > np.percentile(data[ring], 90) * 1.1


def _series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def test_dicom_geometry_matches_the_nifti_affine(mri: tuple[Path, list[dict]]) -> None:
    """Every DICOM pixel, placed by its own headers, lands on the NIfTI voxel with the same value."""
    base, records = mri
    for record in [r for r in records if r["dicom"]]:
        image = nib.load(base / record["image"])
        volume = image.get_fdata()
        inverse = np.linalg.inv(image.affine)
        files = _series(base / record["dicom"])
        assert len(files) == volume.shape[2]
        seen = np.zeros(volume.shape, dtype=int)
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        for ds in files:
            position = np.array(ds.ImagePositionPatient, dtype=float)
            cosines = np.array(ds.ImageOrientationPatient, dtype=float)
            row_cos, col_cos = cosines[:3], cosines[3:]
            row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
            r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
            lps = (
                position[None, None, :]
                + c[..., None] * col_spacing * row_cos[None, None, :]
                + r[..., None] * row_spacing * col_cos[None, None, :]
            )
            ras = lps @ lps_to_ras.T
            ijk = ras @ inverse[:3, :3].T + inverse[:3, 3]
            index = np.rint(ijk).astype(int)
            np.testing.assert_allclose(ijk, index, atol=1e-3)  # pixel centres sit on voxel centres
            assert (index >= 0).all() and (index < np.array(volume.shape)).all()
            seen[index[..., 0], index[..., 1], index[..., 2]] += 1
            values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            np.testing.assert_array_equal(values, volume[index[..., 0], index[..., 1], index[..., 2]])
            assert float(ds.SliceThickness) == pytest.approx(abs(image.affine[2, 2]))
            assert float(ds.SpacingBetweenSlices) == pytest.approx(abs(image.affine[2, 2]))
            assert float(ds.SliceLocation) == pytest.approx(float(position @ np.cross(row_cos, col_cos)))
            assert (ds.Rows, ds.Columns) == (volume.shape[1], volume.shape[0])
        assert (seen == 1).all()  # every voxel exactly once


def test_dicom_frame_handles_any_axis_signs() -> None:
    """Flipped and permuted-sign affines give the same world positions as the affine itself."""
    for signs in [(1, 1, 1), (-1, 1, 1), (1, -1, -1), (-1, -1, 1)]:
        affine = np.diag([2.0 * signs[0], 1.5 * signs[1], 3.0 * signs[2], 1.0])
        affine[:3, 3] = [10.0, -20.0, 5.0]
        shape = (7, 5, 4)
        volume = np.arange(np.prod(shape)).reshape(shape)
        frame = dicom_frame(affine, shape)
        assert frame.row_cosine[np.argmax(np.abs(frame.row_cosine))] > 0
        assert frame.column_cosine[np.argmax(np.abs(frame.column_cosine))] > 0
        for k in range(shape[2]):
            pixels = frame.slice_pixels(volume, k)
            for r, c in [(0, 0), (4, 6), (2, 3)]:
                lps = (
                    frame.position(k)
                    + c * frame.pixel_spacing[1] * frame.row_cosine
                    + r * frame.pixel_spacing[0] * frame.column_cosine
                )
                ijk = np.linalg.inv(affine) @ np.append(lps * [-1, -1, 1], 1.0)
                i, j, kk = np.rint(ijk[:3]).astype(int)
                np.testing.assert_allclose(ijk[:3], [i, j, kk], atol=1e-9)
                assert pixels[r, c] == volume[i, j, kk]


def test_dicom_order_traps(mri: tuple[Path, list[dict]]) -> None:
    """Neither InstanceNumber nor the file names follow the spatial order; positions do."""
    base, records = mri
    for record in [r for r in records if r["dicom"]]:
        folder = base / record["dicom"]
        names = sorted(folder.glob("*.dcm"))
        files = [pydicom.dcmread(p) for p in names]
        normal = np.cross(*np.array(files[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
        height = np.array([np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal) for ds in files])
        spatial = np.argsort(height)
        by_instance = np.argsort([int(ds.InstanceNumber) for ds in files])
        assert not np.array_equal(by_instance, spatial)
        assert not np.array_equal(np.arange(len(files)), spatial)  # file-name order
        assert sorted(int(ds.InstanceNumber) for ds in files) == list(range(1, len(files) + 1))
        assert np.allclose(np.diff(np.sort(height)), 2.0)


def test_dicom_headers(mri: tuple[Path, list[dict]]) -> None:
    base, records = mri
    for record in [r for r in records if r["dicom"]]:
        files = _series(base / record["dicom"])
        assert len({ds.StudyInstanceUID for ds in files}) == 1
        assert len({ds.SeriesInstanceUID for ds in files}) == 1
        assert len({ds.FrameOfReferenceUID for ds in files}) == 1
        assert len({ds.SOPInstanceUID for ds in files}) == len(files)
        for ds in files[:3]:
            assert ds.SOPClassUID == pydicom.uid.MRImageStorage == ds.file_meta.MediaStorageSOPClassUID
            assert ds.Modality == "MR"
            assert ds.PatientID == record["patient_id"]
            assert ds.PatientSex == record["sex"] and ds.PatientAge == f"{record['age']:03d}Y"
            assert ds.StudyInstanceUID == record["study_uid"]
            assert ds.Manufacturer == "medvision-demo" and ds.InstitutionName == "Demo Hospital"
            assert ds.BitsAllocated == 16 and ds.PixelRepresentation in (0, 1)
            assert ds.pixel_array.dtype in (np.int16, np.uint16)
            assert "RescaleSlope" in ds and "RescaleIntercept" in ds


@pytest.fixture(scope="module")
def mri4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    from medvision.demo.datalists import write_mri_datalists
    from medvision.demo.mri import SEQUENCES

    root = tmp_path_factory.mktemp("mri4")
    records = write_mri(root, seed=SEED, n_volumes=N_VOLUMES, n_dicom=1, n_sequences=4)
    write_mri_datalists(root, records, SEED, SEQUENCES)
    return root / "mri", records


def _contrast(volume: np.ndarray, inside: np.ndarray) -> float:
    """Mean inside a tumour over the mean of a shell 2-4 voxels around it."""
    shell = ndi.binary_dilation(inside, iterations=4) & ~ndi.binary_dilation(inside, iterations=2)
    return float(volume[inside].mean() / volume[shell].mean())


def test_multi_sequence_volumes_are_4d_and_show_each_tumour_where_the_datalists_say(
    mri4: tuple[Path, list[dict]],
) -> None:
    import json

    base, records = mri4
    names = ["FLAIR", "T1w", "t1gd", "T2w"]
    for doc in ("dataset.json", "detection.json"):
        meta = json.loads((base / doc).read_text())
        assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
        assert meta["tensorImageSize"] == "4D"
    detection = json.loads((base / "detection.json").read_text())["training"]
    shown = {name: 0 for name in names}
    for record, entry in zip(records, detection, strict=True):
        image = nib.load(base / record["image"])
        assert image.shape == (99, 117, 95, 4) and image.get_data_dtype() == np.int16
        data = np.asarray(image.dataobj, dtype=np.float64)  # real values (scl_slope)
        mask = np.asarray(nib.load(base / record["mask"]).dataobj)
        assert [t["shown_in"] for t in entry["tumours"]] == [t.shown_in for t in record["tumours"]]
        for tumour in record["tumours"]:
            assert "t1gd" in tumour.shown_in and "T1w" not in tumour.shown_in
            inside = mask == tumour.index
            for c, name in enumerate(names):
                ratio = _contrast(data[..., c], inside)
                if name in tumour.shown_in:
                    shown[name] += 1
                    assert ratio > (1.15 if name == "t1gd" else 1.5), (record["name"], tumour.index, name, ratio)
                else:
                    assert ratio < 1.3, (record["name"], tumour.index, name, ratio)
    assert shown["t1gd"] == sum(len(r["tumours"]) for r in records) == 3 and shown["T1w"] == 0


def test_the_t1gd_sequence_is_the_single_sequence_volume_and_the_dicom_series_holds_it(
    mri: tuple[Path, list[dict]], mri4: tuple[Path, list[dict]]
) -> None:
    from medvision.demo.mri import synth_brain

    base1, records1 = mri
    base4, records4 = mri4
    for r1, r4 in zip(records1, records4, strict=True):
        assert [t.box_voxel for t in r1["tumours"]] == [t.box_voxel for t in r4["tumours"]]
        one = np.asarray(nib.load(base1 / r1["image"]).dataobj, dtype=np.float64)
        t1gd = np.asarray(nib.load(base4 / r4["image"]).dataobj, dtype=np.float64)[..., 2]
        slope = max(nib.load(base1 / r1["image"]).dataobj.slope, nib.load(base4 / r4["image"]).dataobj.slope)
        assert np.abs(one - t1gd).max() <= slope / 2 + 1e-9  # the same signal, quantised with its own slope
        np.testing.assert_array_equal(
            np.asarray(nib.load(base1 / r1["mask"]).dataobj), np.asarray(nib.load(base4 / r4["mask"]).dataobj)
        )
    case = synth_brain(SEED, 1, 4)
    frame = dicom_frame(case.affine, case.stored.shape)
    np.testing.assert_array_equal(case.stored, case.sequences[..., 2])
    for ds in _series(base4 / records4[0]["dicom"])[::20]:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        k = int(np.argmin([np.abs(frame.position(i) - position).max() for i in range(case.stored.shape[2])]))
        np.testing.assert_array_equal(ds.pixel_array.astype(np.int64), frame.slice_pixels(case.stored, k))
