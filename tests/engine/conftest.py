"""A tiny labelled chest-radiograph set (DICOM, CSV manifest) and a fast config around it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import write_dicom

N_PATIENTS = 16


def make_cxr_set(root: Path, *, n_patients: int = N_PATIENTS, seed: int = 0, size: int = 48) -> Path:
    """Positives carry a bright blob in the pixels; nothing in the header or path tells the class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    rows = []
    for p in range(n_patients):
        for s in range(2):
            label = int((p + s) % 2 == 0) if p % 3 else int(s == 0)
            img = rng.normal(1500, 120, (size, size))
            if label:
                cy, cx = rng.integers(12, size - 12, 2)
                img += 900 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
            photometric = "MONOCHROME1" if (p * 2 + s) % 5 == 0 else "MONOCHROME2"
            if photometric == "MONOCHROME1":
                img = 4095 - img
            rel = Path(f"P{p:03d}") / f"S{s}.dcm"
            study_uid = f"1.2.826.0.1.3680043.10.999.{seed}.{p}.{s}"
            write_dicom(
                root / rel,
                img.clip(0, 4095).astype(np.uint16),
                bits_stored=12,
                photometric=photometric,
                study_uid=study_uid,
            )
            rows.append(
                {
                    "image": str(rel),
                    "label": label,
                    "patient_id": f"PAT-{seed}-{p:03d}",
                    "study_uid": study_uid,
                    "sex": "MF"[p % 2],
                    "age": 30 + p,
                    "view": "PA",
                }
            )
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def write_config(tmp: Path, manifest: Path, **overrides) -> Path:
    cfg = {
        "task": "classification",
        "experiment": "test-pneumonia",
        "data": {
            "format": "csv",
            "path": str(manifest),
            "split": {"by": "patient", "val": 0.25, "test": 0.25},
            "image_size": 32,
            "cache_dir": str(tmp / "cache"),
            "augment": {"enabled": True},
        },
        "model": {"backbone": "resnet18", "weights": "none", "in_channels": 1},
        "train": {
            "epochs": 3,
            "batch_size": 8,
            "lr": 1e-3,
            "seed": 0,
            "output_dir": str(tmp / "outputs"),
            "early_stop": None,
        },
        "evaluate": {"bootstrap": 50},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "register_as": "pneumonia-classifier"},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def cxr_manifest(tmp_path_factory) -> Path:
    return make_cxr_set(tmp_path_factory.mktemp("cxr"))


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric of a run, in step order."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
