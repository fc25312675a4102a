"""The model contract: what travels with every registered model, typed (``ModelMetadata``).

A trained model is only usable with what it was trained behind: its preprocessing (input size, spacing,
normalisation, channels and sequences), its decision (threshold, temperature, false-positive rate) and
its intended use and provenance. The trainers write one of these with every registered model (in the
``medvision`` MLflow flavour's metadata, :mod:`medvision.tracking.flavor`); ``report``, ``predict`` and
``evaluate`` read it back through :func:`parse_metadata`, so the defaults live here, once.

A metadata document that does not fit is refused with a :class:`~medvision.errors.ModelFormatError` naming
the field (never a model run with guessed preprocessing). Keys this version does not know are kept (a newer
medvision may add some). Models registered before a field existed get the value they were always read with
(for example the first sequence of a volume, or the CT window of :class:`~medvision.config.VolumeConfig`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from medvision.config import VolumeConfig

__all__ = [
    "ClassifierMetadata",
    "DetectorMetadata",
    "ModelMetadata",
    "parse_metadata",
]

_VOLUME = VolumeConfig.model_fields


class _Contract(BaseModel):
    """What every model kind records: its use and its provenance."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    backbone: str
    #: What the model is for and what it is not (the draft notice of every report quotes it).
    intended_use: str
    #: ``imagenet:<weights>``, ``none``, ``random-init (...)`` or ``mlflow:<uri>``: never guessed.
    weights_source: str = "unknown"
    medvision_version: str = "unknown"
    #: The MLflow run that trained it (absent in models registered before it was recorded).
    run_id: str | None = None
    dataset_digest: str | None = None
    #: The decision threshold, chosen on validation (probability for a classifier, box score for a detector).
    threshold: float

    def stored(self) -> dict[str, Any]:
        """The document as the registry stores it (plain JSON values)."""
        return self.model_dump(mode="json")


class ClassifierMetadata(_Contract):
    """A radiograph classifier: one logit, calibrated by ``temperature``, flagged at ``threshold``."""

    task: Literal["classification"] = "classification"
    labels: list[str] = ["normal", "pneumonia"]
    in_channels: int = Field(1, ge=1)
    image_size: int = Field(ge=8)
    keep_aspect: bool = True
    mean: float
    std: float = Field(gt=0)
    temperature: float = Field(1.0, gt=0)
    #: How ``threshold`` was chosen (``youden``, ``sensitivity``, ...).
    operating_point: str | None = None

    def transforms(self) -> Any:
        """The MONAI inference chain the model was trained behind (no augmentation)."""
        from medvision.data import classification_transforms

        return classification_transforms(
            image_size=self.image_size, keep_aspect=self.keep_aspect, mean=self.mean, std=self.std, train=False
        )


class DetectorMetadata(_Contract):
    """A 2.5D tumour detector: volumes resampled to ``spacing``, normalised by ``modality``, boxes merged in 3D."""

    task: Literal["detection"]
    labels: list[str] = ["tumour"]
    context: int = Field(1, ge=0)
    spacing: tuple[float, float, float]
    modality: Literal["MR", "CT"] = "MR"
    ct_window: tuple[float, float] = _VOLUME["ct_window"].default
    mr_percentiles: tuple[float, float] = _VOLUME["mr_percentiles"].default
    #: The sequences the model stacks (by name), of a volume with ``volume_channels`` channels named
    #: ``volume_sequences``; ``channels`` are their indices. Absent in models registered before sequences
    #: were recorded: those take the first channel, as they always did.
    sequences: list[str] | None = None
    n_sequences: int | None = None
    channels: list[int] | None = None
    volume_channels: int | None = None
    volume_sequences: list[str] | None = None
    slice_shape: tuple[int, int] | None = None
    fp_rate: float | None = None
    iou_threshold: float = 0.1
    hit: str | None = None
    volume_score: str | None = None
    #: Slice-to-3D merge settings (:data:`medvision.engine.detect.MERGE_DEFAULTS` fill what is missing).
    merge: dict[str, Any] = Field(default_factory=dict)
    box_coordinates: str = "world_mm: RAS millimetres [x0, y0, z0, x1, y1, z1]"

    def transforms(self) -> Any:
        """The deterministic MONAI chain the model was trained behind (RAS, spacing, intensity, sequences)."""
        from medvision.data.detection_transforms import detection_transforms

        return detection_transforms(
            spacing=self.spacing,
            modality=self.modality,
            ct_window=self.ct_window,
            mr_percentiles=self.mr_percentiles,
            train=False,
            **self.sequence_selection(),
        )

    def sequence_selection(self, uri: str = "the model") -> dict[str, Any]:
        """The sequence options of :func:`~medvision.data.detection_transforms.detection_transforms`.

        A volume with another channel count than ``volume_channels`` is refused with a
        :class:`~medvision.errors.SequenceError` that names what the model expects.
        """
        if self.volume_channels is None:
            return {"channels": [0]}
        n = int(self.volume_channels)
        available = [str(v) for v in self.volume_sequences or range(n)]
        used = [str(v) for v in self.sequences or available]
        wanted = f"{uri} expects {n} sequence(s) ({', '.join(available)})"
        if used != available:
            wanted += f" and uses {', '.join(used)}"
        fix = (
            "give a 3D volume (one sequence)"
            if n == 1
            else f"give a 4D NIfTI (x, y, z, {n}) with the sequences {', '.join(available)} in this order"
        )
        return {
            "channels": [int(c) for c in self.channels or range(n)],
            "expect_channels": n,
            "sequences_wanted": wanted,
            "sequences_fix": fix,
        }


#: Either kind, told apart by ``task``.
ModelMetadata = Annotated[ClassifierMetadata | DetectorMetadata, Field(discriminator="task")]
_ADAPTER: TypeAdapter[ClassifierMetadata | DetectorMetadata] = TypeAdapter(ModelMetadata)


def parse_metadata(raw: Mapping[str, Any], where: str) -> ClassifierMetadata | DetectorMetadata:
    """The typed contract of a registered model's metadata (``task`` absent: a classifier, as before).

    Raises:
        ModelFormatError: naming ``where`` and the first field that does not fit, with the fix.
    """
    from medvision.errors import ModelFormatError

    data = {"task": "classification", **dict(raw)}
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"][1:] or first["loc"]) or "metadata"
        raise ModelFormatError(
            f"{where} metadata {field}",
            f"{first['msg'].lower()} ({len(exc.errors())} problem(s) in the model's metadata)",
            "register the model again with `medvision train` (it records the whole contract)",
        ) from None
