"""The volume pipeline: CT/MR series and NIfTI volumes through the tumour detector, one row per study.

Owns what the detector reads (the NIfTI file, the series folder, or a scratch folder of links to the
series' files), the boxes a row carries (those at or above the operating point), the key slices (the
slices of the highest-scoring boxes, radiological view, boxes drawn in voxel indices of the displayed
volume, or the best candidate said to be below the threshold), the DICOM SR (none for NIfTI) and the
optional secondary capture of the first key slice.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medvision.reporting.cache import _remember
from medvision.reporting.discover import Study
from medvision.reporting.models import _Model
from medvision.reporting.rows import _base_row, _failed, _priority, _reason, _Run, _sc_file, _sr_file

#: Key slices written per volume (the slices of the highest-scoring boxes).
MAX_KEY_SLICES = 3
_NO_SR_NIFTI = "no DICOM SR: a NIfTI file has no DICOM study to reference"


def _series_path(run: _Run, study: Study) -> Path:
    """What the detector reads: the NIfTI file, the series folder, or a folder of links to the series' files."""
    if study.kind == "nifti":
        return study.paths[0]
    folder = study.paths[0].parent
    files = {p.name for p in study.paths}
    if all(p.parent == folder for p in study.paths):
        others = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in files]
        if not others:
            return folder
    assert run.scratch is not None
    target = run.scratch / study.key
    target.mkdir(parents=True, exist_ok=True)
    for n, path in enumerate(study.paths):
        link = target / f"{n:05d}.dcm"
        try:
            link.symlink_to(path.resolve())
        except OSError:
            shutil.copy2(path, link)
    return target


def _voxel_boxes(prediction: Any, boxes: Sequence[Mapping[str, Any]]) -> list[list[float] | None]:
    """Each box in voxel indices of ``prediction.image`` (``"voxel"`` key, else through ``prediction.affine``)."""
    import numpy as np

    affine = getattr(prediction, "affine", None)
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64)) if affine is not None else None
    out: list[list[float] | None] = []
    for box in boxes:
        voxel = box.get("voxel") or box.get("voxel_box")
        if voxel is not None and len(voxel) == 6:
            out.append([float(v) for v in voxel])
            continue
        if inverse is None or box.get("world_mm") is None:
            out.append(None)
            continue
        w = np.asarray(box["world_mm"], dtype=np.float64).reshape(2, 3)
        corners = np.array([[w[i, 0], w[j, 1], w[k, 2], 1.0] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        idx = (inverse @ corners.T).T[:, :3]
        # Edges in continuous index space (voxel centres at integers) -> index boxes, max corner exclusive.
        lo, hi = idx.min(axis=0) + 0.5, idx.max(axis=0) + 0.5
        out.append([*lo.tolist(), *hi.tolist()])
    return out


def _key_slices(
    run: _Run, key: str, prediction: Any, boxes: list[dict[str, Any]], *, candidate: bool = False
) -> list[dict[str, Any]]:
    """PNG of the slices of the highest-scoring boxes, radiological view, boxes drawn with their scores.

    Args:
        run: the run (its temporary folder).
        key: the study's key (folder of the images).
        prediction: the detector's output (``image``, ``affine``).
        boxes: the boxes to show, best first.
        candidate: the boxes are below the operating point (captions say so).
    """
    import numpy as np

    from medvision.reporting.explain import write_key_slice

    volume = np.asarray(prediction.image, dtype=np.float32)
    if volume.ndim == 4:
        volume = volume[0]
    nz = volume.shape[2]
    voxels = _voxel_boxes(prediction, boxes)
    slices: list[int] = []
    for box in boxes:
        k = int(np.clip(int(box.get("slice") if box.get("slice") is not None else nz // 2), 0, nz - 1))
        if k not in slices:
            slices.append(k)
        if len(slices) == MAX_KEY_SLICES:
            break
    if not slices:
        slices = [nz // 2]
    images = []
    for k in slices:
        drawn, scores, labels = [], [], []
        for box, voxel in zip(boxes, voxels, strict=True):
            if voxel is None or not (voxel[2] <= k < voxel[5] or box.get("slice") == k):
                continue
            drawn.append([voxel[0], voxel[1], voxel[3], voxel[4]])
            scores.append(float(box.get("score") or 0.0))
            size = " x ".join(f"{float(v):.0f}" for v in box.get("size_mm") or [])
            labels.append(f"score {scores[-1]:.2f}, {size} mm")
        rel = f"studies/{key}/slice-{k:03d}{run.suffix}"
        write_key_slice(volume, k, drawn, scores, run.tmp / rel, title=f"axial slice {k}")
        if drawn:
            what = "; ".join(labels)
            if candidate:
                what = f"best candidate, below the threshold {float(prediction.threshold):.2f}: {what}"
        elif any(b.get("slice") == k for b in boxes):
            what = "box position on the slice not available from the detector"
        else:
            what = "no box found; middle slice"
        images.append(
            {
                "path": rel,
                "caption": f"axial slice {k} (radiological view: patient's right on the left, anterior up): {what}",
                "kind": "slice",
            }
        )
    return images


def _public_box(box: Mapping[str, Any]) -> dict[str, Any]:
    """A box as the row carries it: ``world_mm``, ``size_mm``, ``score``, ``slice``."""
    import numpy as np

    world = [round(float(v), 3) for v in box["world_mm"]]
    size = box.get("size_mm")
    if size is None:
        size = np.ptp(np.reshape(world, (2, 3)), axis=0)
    return {
        "world_mm": world,
        "size_mm": [round(float(v), 3) for v in size],
        "score": round(float(box.get("score") or 0.0), 6),
        "slice": int(box["slice"]) if box.get("slice") is not None else None,
    }


def _detect(run: _Run, study: Study, model: _Model) -> None:
    from medvision.io.dicom import read_dataset

    key = run.key_for(study)
    row = _base_row(study, key)
    row["model"] = dict(model.provenance)
    start = time.perf_counter()
    try:
        prediction = model.value.predict(_series_path(run, study))
    except Exception as exc:  # noqa: BLE001 - one bad volume never stops the batch
        run.tick("network", start)
        run.add(_failed(row, _reason(exc, study, run.root)), study)
        return
    start = run.tick("network", start)
    probability = float(prediction.volume_score)
    flagged = bool(prediction.flagged)
    threshold = float(prediction.threshold) if prediction.threshold is not None else None
    found = sorted((dict(b) for b in (prediction.boxes or [])), key=lambda b: -float(b.get("score") or 0.0))
    # The row, the pages and the SR carry the boxes at or above the operating point; when there is none,
    # the key slice shows the best candidate, said to be below it.
    kept = [b for b in found if threshold is None or float(b.get("score") or 0.0) >= threshold]
    boxes = [_public_box(b) for b in kept]
    row.update(
        probability=round(probability, 6),
        flagged=flagged,
        threshold=threshold,
        priority=_priority(probability, flagged),
        boxes=boxes,
    )
    notes = []
    withheld = run.withheld(study)
    if withheld is not None:
        notes.append(withheld)  # de-identified: pixels may carry burned-in identifiers
    else:
        try:
            row["images"] = _key_slices(run, key, prediction, kept or found[:1], candidate=not kept and bool(found))
        except Exception as exc:  # noqa: BLE001 - the finding stands without its pictures
            notes.append(f"key slices not written ({type(exc).__name__}: {exc})")
    if study.kind == "nifti":
        notes.append(_NO_SR_NIFTI)
    else:
        headers: list[Any] = []  # read once, for the SR and the secondary capture
        evidence: list[Any] = []  # as written: de-identified under --deidentify
        try:
            headers.extend(read_dataset(p, stop_before_pixels=True) for p in study.paths)
            evidence.extend(run.deidentified(h) for h in headers)
            row["sr_path"] = _sr_file(run.tmp, key, evidence, "detection", row, boxes=boxes, stamp=run.stamp,
                                      shareable=withheld is None)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the finding stands without its SR
            notes.append(f"no DICOM SR ({type(exc).__name__}: {exc})")
        if run.secondary_capture and row.get("images"):
            from medvision.reporting.sc import KEY_SLICE_ORIENTATION

            try:
                header = evidence[0] if evidence else run.deidentified(
                    headers[0] if headers else read_dataset(study.paths[0], stop_before_pixels=True))  # fmt: skip
                picture = str(row["images"][0]["path"])
                what = "axial key slice in radiological view with the detector's boxes and scores"
                row["secondary_capture_path"] = _sc_file(run.tmp, key, header, picture, KEY_SLICE_ORIENTATION, what,
                                                         row, stamp=run.stamp)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the finding stands without its secondary capture
                notes.append(f"no DICOM secondary capture ({type(exc).__name__}: {exc})")
    if notes:
        row["reason"] = "; ".join(notes)
    run.tick("write", start)
    _remember(run, study, model, [run.add(row, study)])
