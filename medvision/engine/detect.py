"""Detector inference: slice boxes -> 3D boxes, volume scores, and ``predict_volume`` on a file or series.

Merging (written here because neither MONAI nor torchvision links 2D detections across slices):

1. **Linking.** Slices are visited bottom to top; a slice box joins the track whose last box lies at most
   ``max_gap + 1`` slices below and overlaps it best (2D IoU >= ``link_iou``), else it starts a new track.
   Each track takes at most one box per slice (higher scores link first).
2. **3D box.** Of a track's boxes, those scoring at least half the track's best score form the 3D box: the
   union of their 2D boxes in x and y, ``[lowest slice, highest slice + 1)`` in z (voxel indices,
   ``[min, max)``, the same convention as the ground truth).
3. **Score.** The mean of the track's ``top_k`` best slice scores, counting missing ones as 0: a lesion seen
   on several adjacent slices keeps its score, a box on one slice only (typical of false positives) gets a
   third of it.
4. **3D NMS** (MONAI's ``non_max_suppression``) removes tracks that overlap a better one (IoU >=
   ``nms_iou``), and the ``max_boxes`` best are kept.

The volume score (tumour presence, for triage) is the highest box score, 0 without boxes.

Precision: with ``amp`` ``auto`` or ``bf16`` the network runs under bf16 autocast on CUDA (the classifier's rule,
:func:`autocast_for`); the boxes and scores stay float32 (:mod:`medvision.models.detector`). On the CPU it
always runs in float32.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medvision.constants import BOX_LABELS, BOXES, IMAGE
from medvision.data.slices import foreground_slices, slice_stacks
from medvision.engine.distributed import autocast_for
from medvision.errors import InputError
from medvision.models.contract import DetectorMetadata, parse_metadata

__all__ = [
    "MERGE_DEFAULTS",
    "DetectorBundle",
    "VolumePrediction",
    "autocast_for",
    "detect_slices",
    "detect_volume",
    "load_detector",
    "merge_slices",
    "predict_volume",
    "world_boxes",
]

log = logging.getLogger(__name__)

#: Settings of :func:`merge_slices` (recorded with the registered model).
MERGE_DEFAULTS: dict[str, Any] = {"link_iou": 0.3, "max_gap": 1, "top_k": 3, "nms_iou": 0.3, "max_boxes": 10}


def _iou_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` (4,) with boxes ``b`` (M, 4)."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class _Track:
    ks: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def merge_slices(
    slice_detections: Sequence[tuple[int, Any, Any]],
    *,
    link_iou: float = MERGE_DEFAULTS["link_iou"],
    max_gap: int = MERGE_DEFAULTS["max_gap"],
    top_k: int = MERGE_DEFAULTS["top_k"],
    nms_iou: float = MERGE_DEFAULTS["nms_iou"],
    max_boxes: int = MERGE_DEFAULTS["max_boxes"],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-slice 2D detections into 3D boxes (module docstring).

    Args:
        slice_detections: ``(k, boxes (M, 4) [x0, y0, x1, y1], scores (M,))`` per axial slice ``k``.

    Returns:
        ``(boxes (N, 6) xyzxyz voxel [min, max), scores (N,), key_slices (N,))``, best first; the key slice of
        a box is its highest-scoring slice.
    """
    from monai.data.box_utils import non_max_suppression

    tracks: list[_Track] = []
    active: list[int] = []  # tracks whose last slice is close enough to be extended
    for k, boxes, scores in sorted(slice_detections, key=lambda t: int(t[0])):
        k = int(k)
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        active = [t_i for t_i in active if k - tracks[t_i].ks[-1] <= max_gap + 1]
        candidates = [t_i for t_i in active if tracks[t_i].ks[-1] < k]
        last = np.stack([tracks[t_i].boxes[-1] for t_i in candidates]) if candidates else np.zeros((0, 4))
        taken = np.zeros(len(candidates), dtype=bool)
        for i in np.argsort(-s, kind="stable"):
            best = None
            if len(candidates):
                ious = np.where(taken, -1.0, _iou_2d(b[i], last))
                j = int(np.argmax(ious))
                if ious[j] >= link_iou:
                    best, taken[j] = candidates[j], True
            if best is None:
                tracks.append(_Track())
                best = len(tracks) - 1
                active.append(best)
            tracks[best].ks.append(k)
            tracks[best].boxes.append(b[i])
            tracks[best].scores.append(float(s[i]))
    if not tracks:
        return np.zeros((0, 6), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    out_boxes, out_scores, out_keys = [], [], []
    for t in tracks:
        sc = np.asarray(t.scores)
        strong = sc >= 0.5 * sc.max()
        bx = np.stack(t.boxes)[strong]
        ks = np.asarray(t.ks)[strong]
        out_boxes.append([bx[:, 0].min(), bx[:, 1].min(), ks.min(), bx[:, 2].max(), bx[:, 3].max(), ks.max() + 1])
        top = np.sort(sc)[::-1][:top_k]
        out_scores.append(float(top.sum() / top_k))
        out_keys.append(int(t.ks[int(np.argmax(sc))]))
    boxes3d = torch.as_tensor(np.asarray(out_boxes, dtype=np.float32))
    scores3d = torch.as_tensor(np.asarray(out_scores, dtype=np.float32))
    keep = non_max_suppression(boxes3d, scores3d, nms_thresh=nms_iou, max_proposals=max_boxes)
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return boxes3d.numpy()[keep], scores3d.numpy()[keep], np.asarray(out_keys, dtype=np.int64)[keep]


@torch.no_grad()
def detect_slices(
    model: Any,
    image: Tensor | np.ndarray,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    slices: Sequence[int] | None = None,
    amp: str = "off",
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Run the 2.5D detector on the axial slices of a preprocessed volume ``(C, X, Y, Z)`` (C sequences).

    Constant slices (background) are skipped unless ``slices`` names them. ``amp``: ``auto`` or ``bf16`` run
    the network under bf16 autocast on CUDA (:func:`autocast_for`); ``off`` (default) or the CPU: float32.
    """
    ks = np.asarray(foreground_slices(image) if slices is None else slices, dtype=np.int64)
    out: list[tuple[int, np.ndarray, np.ndarray]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(ks), batch_size):
            chunk = ks[start : start + batch_size]
            stacks = slice_stacks(image, chunk.tolist(), model.context).to(device)
            with autocast_for(device, amp):
                found_slices = model.detect(stacks)
            for k, found in zip(chunk, found_slices, strict=True):
                out.append((int(k), found["boxes"].float().cpu().numpy(), found["scores"].float().cpu().numpy()))
    finally:
        model.train(was_training)
    return out


def detect_volume(
    model: Any,
    image: Tensor | np.ndarray,
    *,
    merge: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    amp: str = "off",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3D boxes (voxel ``[min, max)`` of ``image``'s grid), scores and key slices of one preprocessed volume
    (``amp``: as for :func:`detect_slices`)."""
    per_slice = detect_slices(model, image, batch_size=batch_size, device=device, amp=amp)
    return merge_slices(per_slice, **{**MERGE_DEFAULTS, **dict(merge or {})})


def world_boxes(boxes: np.ndarray, affine: Any) -> np.ndarray:
    """Voxel boxes ``[min, max)`` -> RAS millimetre boxes (corners through the affine, sorted per axis).

    The half-voxel shift moves box corners to voxel-centre coordinates, which the affine maps (the same
    convention as the datalists and :mod:`medvision.data.detection_transforms`).
    """
    from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes

    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 6)) - 0.5
    a = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    w = apply_affine_to_boxes(b, a).numpy()
    lo = np.minimum(w[:, :3], w[:, 3:])
    hi = np.maximum(w[:, :3], w[:, 3:])
    return np.concatenate([lo, hi], axis=1)


# ------------------------------------------------------------------------------------- registered models


@dataclass
class DetectorBundle:
    """A registered detector ready for volumes: the network, its contract (preprocessing, operating point,
    intended use) and its provenance. ``report``, ``predict`` and ``evaluate`` all use it."""

    model: Any
    metadata: DetectorMetadata
    uri: str
    device: torch.device
    provenance: dict[str, Any] = field(default_factory=dict)
    _chain: Any = field(default=None, init=False, repr=False)

    @property
    def threshold(self) -> float:
        """The score threshold registered with the model (chosen on validation at ``fp_rate`` FP/volume)."""
        return float(self.metadata.threshold)

    @property
    def merge(self) -> dict[str, Any]:
        """The slice-to-3D merge settings registered with the model (defaults for what it lacks)."""
        return {**MERGE_DEFAULTS, **self.metadata.merge}

    def transforms(self) -> Any:
        """The deterministic MONAI chain the model was trained behind (built once per bundle: it holds the
        readers, and ``predict_volume`` runs it for every volume of a batch)."""
        if self._chain is None:
            self._chain = self.metadata.transforms()
        return self._chain

    def sequence_selection(self) -> dict[str, Any]:
        """The sequence options of the chain (``DetectorMetadata.sequence_selection``)."""
        return self.metadata.sequence_selection(f"the model {self.uri}")

    def predict(self, path: str | os.PathLike[str]) -> VolumePrediction:
        """Same as :func:`predict_volume` (the batch report calls it)."""
        return predict_volume(self, path)


@dataclass
class VolumePrediction:
    """What the detector found in one volume (boxes best first).

    ``boxes``: dicts with ``world_mm`` (RAS ``[x0, y0, z0, x1, y1, z1]``), ``voxel`` (the same box in
    ``image``'s grid, ``[min, max)``), ``size_mm``, ``score``, ``slice`` (axial index into
    ``image[:, :, k]``) and ``above_threshold``. ``image`` is the preprocessed volume ``(X, Y, Z)``
    (RAS, at the model's spacing; of a multi-sequence volume the first sequence the model uses) for display;
    ``affine`` maps its voxels to RAS mm.
    """

    boxes: list[dict[str, Any]]
    volume_score: float
    threshold: float
    flagged: bool
    image: np.ndarray
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]
    timings: dict[str, float]


def load_detector(uri: str, *, device: str | torch.device = "cpu", tracking_uri: str | None = None) -> DetectorBundle:
    """Load a registered detector (``models:/tumor-detector@champion``, ``models:/NAME/VERSION``, ``runs:/...``).

    Raises:
        TrackingError: the model does not exist or is not a detector.
    """
    from medvision.errors import TrackingError
    from medvision.tracking.registry import load_model_with_metadata, model_provenance

    module, raw, pinned = load_model_with_metadata(uri, tracking_uri=tracking_uri)
    if raw.get("task") != "detection" or not hasattr(module, "detect"):
        raise TrackingError(
            uri,
            f"is a {raw.get('task') or 'non-medvision'} model, not a tumour detector",
            "pass a model registered by `medvision train` with task: detection (e.g. models:/tumor-detector@candidate)",
        )
    dev = torch.device(device)
    module.to(dev).eval()
    try:
        provenance = model_provenance(pinned, tracking_uri=tracking_uri)
    except Exception as exc:  # provenance is for display; a registry hiccup must not stop inference
        log.warning("no provenance for %s: %s", pinned, exc)
        provenance = {"uri": pinned}
    metadata = parse_metadata(raw, pinned)
    assert isinstance(metadata, DetectorMetadata)
    return DetectorBundle(module, metadata, pinned, dev, provenance)


def predict_volume(bundle: DetectorBundle, path: str | os.PathLike[str]) -> VolumePrediction:
    """Detect tumours in one volume: a NIfTI file or a DICOM series folder.

    Raises:
        InputError: the path cannot be read as a 3D volume (2D image, missing spacing, ...).
        SequenceError: the volume lacks the sequences the model expects (its channel count differs).
    """
    from medvision.errors import MedvisionError

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if not Path(path).exists():
        raise InputError(str(path), "file not found", "check the path")
    chain = bundle.transforms()
    sample = {IMAGE: str(path), BOXES: np.zeros((0, 6), np.float32), BOX_LABELS: np.zeros((0,), np.int64)}
    try:
        data = chain(sample)  # MedvisionCompose re-raises the medvision error behind MONAI's wrapper
    except MedvisionError:
        raise
    except Exception as exc:
        raise InputError(str(path), f"cannot be read as a volume: {type(exc).__name__}: {exc}", None) from exc
    image = data[IMAGE]
    timings["load_preprocess_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    per_slice = detect_slices(bundle.model, image, device=bundle.device)
    timings["network_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    boxes, scores, keys = merge_slices(per_slice, **bundle.merge)
    affine = np.asarray(image.affine, dtype=np.float64)
    world = world_boxes(boxes, affine)
    timings["merge_s"] = time.perf_counter() - t2
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    threshold = bundle.threshold
    found = [
        {
            "world_mm": [round(float(v), 2) for v in w],
            "voxel": [round(float(v), 2) for v in b],
            "size_mm": [round(float(w[i + 3] - w[i]), 2) for i in range(3)],
            "score": round(float(s), 4),
            "slice": int(k),
            "above_threshold": bool(s >= threshold),
        }
        for b, w, s, k in zip(boxes, world, scores, keys, strict=True)
    ]
    volume_score = float(scores.max()) if len(scores) else 0.0
    timings["total_s"] = time.perf_counter() - t0
    return VolumePrediction(
        boxes=found,
        volume_score=volume_score,
        threshold=threshold,
        flagged=volume_score >= threshold,
        image=np.asarray(image[0], dtype=np.float32),
        affine=affine,
        spacing_mm=(spacing[0], spacing[1], spacing[2]),
        timings=timings,
    )
