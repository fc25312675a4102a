"""Multi-sequence volumes (4D NIfTI x, y, z, sequence, as MSD Task01) for the 2.5D tumour detector.

The tiny set's tumours show in the second sequence only: a detector that saw only the first could not find
them. The detector trains on every sequence, records them, and refuses a volume without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.engine.test_detection_train import AFFINE, SHAPE, write_detection_config

# The module's training runs in the first test that asks for it: about a minute alone, far more on a busy machine.
pytestmark = pytest.mark.timeout(1200)

NAMES = ["FLAIR", "T1w", "t1gd", "T2w"]
SHOWN = 1  # the tumours show in T1w only


def make_sequence_set(root: Path, *, n: int = 16, seed: int = 0, channels: int = 4) -> Path:
    """4D volumes whose bright cuboid tumours (0-2 each) show in sequence ``SHOWN`` only; MSD layout."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        image = np.stack([rng.normal(100 + 40 * c, 8, SHAPE) for c in range(channels)], axis=-1).astype(np.float32)
        mask = np.zeros(SHAPE, np.uint8)
        for lesion in range([0, 1, 1, 2][i % 4]):
            x = 4 + 18 * lesion + int(rng.integers(0, 10))
            y, z = int(rng.integers(4, 24)), int(rng.integers(3, 12))
            sx, sy, sz = (int(v) for v in rng.integers(5, 9, 3))
            image[x : x + sx, y : y + sy, z : z + sz, SHOWN] += 120
            mask[x : x + sx, y : y + sy, z : z + sz] = lesion + 1
        name = f"CASE_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(mask, AFFINE), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    doc = {"name": "tiny-sequences", "modality": {str(c): NAMES[c] for c in range(channels)}, "training": training}
    (root / "dataset.json").write_text(json.dumps(doc))
    return root / "dataset.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import mlflow

    from medvision.config import load_config
    from medvision.engine.detection import train_detection

    tmp = tmp_path_factory.mktemp("seq")
    datalist = make_sequence_set(tmp / "data")
    config = write_detection_config(tmp, datalist, epochs=3)
    cfg = load_config(config)
    result = train_detection(cfg, progress=False, config_path=config)
    yield {"tmp": tmp, "datalist": datalist, "cfg": cfg, "result": result}
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def test_every_sequence_goes_in_and_the_tumours_of_the_second_are_found(trained) -> None:
    m = trained["result"].metrics
    assert m["test_cpm"] >= 0.75, m
    assert m["test_volume_auroc"] >= 0.75 or np.isnan(m["test_volume_auroc"]), m


def test_the_registered_model_records_its_sequences_and_the_card_names_them(trained) -> None:
    from medvision.engine.detect import load_detector

    bundle = load_detector("models:/tumor-detector@candidate")
    md = bundle.metadata
    assert md.sequences == NAMES and md.n_sequences == 4
    assert md.volume_channels == 4 and md.channels == [0, 1, 2, 3] and md.volume_sequences == NAMES
    assert bundle.model.in_channels == 12 and bundle.model.architecture["sequences"] == 4
    card = (trained["result"].output_dir / "evidence" / "model_card.md").read_text()
    assert "4 MR sequences (FLAIR, T1w, t1gd, T2w), each with its 3 slices, 12 channels in all" in card
    assert "Sequences expected:** 4 per volume" in card


def test_predict_finds_the_tumour_and_refuses_a_volume_without_the_sequences(trained, tmp_path) -> None:
    from medvision.engine.detect import load_detector, predict_volume
    from medvision.errors import SequenceError

    bundle = load_detector("models:/tumor-detector@candidate")
    volume = trained["datalist"].parent / "imagesTr" / "CASE_002.nii.gz"  # one tumour
    pred = predict_volume(bundle, volume)
    assert pred.image.shape == SHAPE and pred.boxes
    single = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(volume).dataobj)[..., SHOWN], AFFINE), single)
    with pytest.raises(SequenceError) as info:
        predict_volume(bundle, single)
    text = info.value.one_line()
    assert info.value.where == str(single)
    assert "has 1 sequence (a 3D volume)" in text
    assert "expects 4 sequence(s) (FLAIR, T1w, t1gd, T2w)" in text and "4D NIfTI (x, y, z, 4)" in text
    three = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(volume).dataobj)[..., :3], AFFINE), three)
    with pytest.raises(SequenceError, match="has 3 sequences"):
        predict_volume(bundle, three)


def test_the_report_lists_a_volume_without_the_sequences_as_a_failure_and_goes_on(trained, tmp_path) -> None:
    from medvision.config import ReportConfig
    from medvision.engine.detect import load_detector
    from medvision.reporting import run_report

    bundle = load_detector("models:/tumor-detector@candidate")
    studies = tmp_path / "in"
    studies.mkdir()
    source = trained["datalist"].parent / "imagesTr" / "CASE_002.nii.gz"
    (studies / "four.nii.gz").write_bytes(source.read_bytes())
    nib.save(nib.Nifti1Image(np.asarray(nib.load(source).dataobj)[..., 0], AFFINE), studies / "one.nii.gz")
    summary = run_report(ReportConfig(input=studies, out=tmp_path / "out"), detector=bundle, progress=False)
    assert summary["failed"] == 1 and summary["studies"] == 1  # studies reported; the failure listed apart
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    failed = [r for r in rows if r.get("status") == "failed"]
    assert len(failed) == 1 and "one.nii.gz" in failed[0]["reason"]
    assert "has 1 sequence" in failed[0]["reason"] and "FLAIR, T1w, t1gd, T2w" in failed[0]["reason"]
    assert any(r.get("status") == "ok" and "four" in json.dumps(r) for r in rows)


def test_sequences_asked_for_by_name_or_index_and_those_a_volume_lacks(tmp_path, mlflow_globals) -> None:
    from medvision.config import load_config
    from medvision.data.detection import check_volumes, load_detection_datalist, resolve_sequences, sequence_names
    from medvision.engine.detection import train_detection
    from medvision.errors import DataError, SequenceError

    datalist = make_sequence_set(tmp_path / "data", n=4)
    items, _ = check_volumes(load_detection_datalist("decathlon", datalist))
    names = sequence_names("decathlon", datalist)
    assert names == NAMES and {i["n_channels"] for i in items} == {4}
    picked = resolve_sequences(items, ["t1gd", 0, "t2W"], names)
    assert (picked.channels, picked.names, picked.count) == ([2, 0, 3], ["t1gd", "FLAIR", "T2w"], 3)
    assert resolve_sequences(items, None, names).channels is None
    config = write_detection_config(tmp_path, datalist, epochs=1, max_batches_per_epoch=1)
    with pytest.raises(SequenceError) as info:
        train_detection(load_config(config, ["data.volume.channels=[ADC, 1]"]), progress=False)
    text = info.value.one_line()
    assert "CASE_000.nii.gz" in info.value.where
    assert "has 4 sequence(s) (0 FLAIR, 1 T1w, 2 t1gd, 3 T2w)" in text and "'ADC' not among them" in text
    with pytest.raises(SequenceError, match="'7' not among them|7 not among them"):
        train_detection(load_config(config, ["data.volume.channels=[7]"]), progress=False)
    # a 3D volume among 4D ones: the data set is refused, the volumes listed by channel count
    one = tmp_path / "data" / "imagesTr" / "CASE_001.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(one).dataobj)[..., 0], AFFINE), one)
    with pytest.raises(DataError) as info:
        train_detection(load_config(config), progress=False)
    assert "different numbers of sequences" in info.value.reason
    assert "1 in 1 volume(s) (CASE_001.nii.gz)" in info.value.reason
    assert "4 in 3 volume(s) (CASE_000.nii.gz, CASE_002.nii.gz, CASE_003.nii.gz)" in info.value.reason
    assert not (tmp_path / "outputs").exists()  # refused before any training or tracking
