"""Experiment configuration: YAML validated by pydantic, ``--set a.b=c`` overrides, resolved YAML out.

Unknown keys are errors, and every error names the key, the bad value and what is allowed.

Example:
    >>> cfg = parse_config({"task": "classification", "experiment": "x",
    ...                     "data": {"format": "csv", "path": "m.csv"}}, overrides=["train.epochs=2"])
    >>> cfg.train.epochs
    2
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from medvision.errors import ConfigError
from medvision.pacs.store import RetryPolicy
from medvision.pacs.uris import DEFAULT_CALLING_AET, check_ae_title, parse_address, parse_query

INTENDED_USE_CXR = (
    "Research and triage support: flags adult and paediatric frontal chest radiographs that may show "
    "pneumonia so that a radiologist can read them first. Not a diagnosis; not for diagnostic use "
    "without review by a radiologist."
)

INTENDED_USE_TUMOUR = (
    "Research and triage support: marks brain MR (or CT) volumes that may contain a tumour and draws boxes "
    "around candidate lesions so that a radiologist can read them first. Boxes are not segmentations. Not a "
    "diagnosis; not for diagnostic use without review by a radiologist."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Strict):
    """How items are split into train, validation and test."""

    by: Literal["patient", "given"] = "patient"
    val: float = Field(0.15, ge=0.0, lt=1.0)
    test: float = Field(0.15, ge=0.0, lt=1.0)
    seed: int = 0


class AugmentConfig(_Strict):
    """Training-time augmentation (affine and intensity).

    ``where: batch`` (default) runs it batched on the training device after the cached pipeline
    (:class:`medvision.data.augment.BatchAugment`); ``where: sample`` uses MONAI's per-sample random
    transforms in the DataLoader workers.
    """

    enabled: bool = True
    where: Literal["batch", "sample"] = "batch"
    prob: float = Field(0.5, ge=0.0, le=1.0)
    rotate_deg: float = Field(10.0, ge=0.0, le=45.0)
    scale: float = Field(0.1, ge=0.0, le=0.5)
    translate: float = Field(0.05, ge=0.0, le=0.3)
    noise_std: float = Field(0.02, ge=0.0)
    contrast: tuple[float, float] = (0.9, 1.1)


class VolumeConfig(_Strict):
    """Detection only: how CT/MR volumes are resampled, normalised and sampled into slices."""

    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    modality: Literal["MR", "CT"] = "MR"
    ct_window: tuple[float, float] = (-1000.0, 400.0)
    mr_percentiles: tuple[float, float] = (1.0, 99.0)
    #: Slices without a lesion drawn per slice with one, each epoch.
    negatives_per_positive: float = Field(1.0, ge=0.0)
    #: Train on square crops of this many pixels (lesion-centred for slices with a lesion, anywhere for the
    #: others) instead of whole slices: several times fewer pixels per sample. ``null``: whole slices.
    train_crop: int | None = Field(96, ge=16)
    #: Connected components of a label mask smaller than this many voxels are not lesions.
    min_lesion_voxels: int = Field(1, ge=1)
    augment: bool = True
    #: A DICOM series (or multi-frame file) whose slices are unevenly spaced along the normal (a missing slice,
    #: uneven steps): ``refuse`` it with an error naming the slices, or ``resample`` it onto a regular grid
    #: (linear along the normal, step = the median step; the metadata notes say so). Duplicate positions, gantry
    #: tilt and mixed slice sizes are refused either way.
    irregular: Literal["refuse", "resample"] = "refuse"
    #: Multi-sequence volumes (4D NIfTI x, y, z, c, as MSD Task01 / BraTS): the sequences given to the detector,
    #: by name (the ``modality`` dict of the datalist JSON, e.g. ``[FLAIR, t1gd]``) or by index (``[0, 2]``), in
    #: this order. ``null`` (default): every sequence. A 3D volume is one sequence.
    channels: list[int | str] | None = None


class DataConfig(_Strict):
    """Where the images are and how they become tensors.

    Classification formats: ``csv``, ``decathlon`` (image + label), ``kermany``, ``rsna``. Detection formats:
    ``detection`` (MONAI's detection JSON), ``decathlon`` (images + label masks, boxes from connected
    components), ``csv`` (image + boxes columns).
    """

    format: Literal["csv", "decathlon", "kermany", "rsna", "detection"] = "csv"
    path: str
    split: SplitConfig = SplitConfig()
    image_size: int = Field(224, ge=16, le=2048)
    keep_aspect: bool = True
    cache_dir: str | None = ".cache/medvision"
    skip_unreadable: bool = False
    num_workers: int = Field(0, ge=0)
    augment: AugmentConfig = AugmentConfig()
    volume: VolumeConfig = VolumeConfig()


class ModelConfig(_Strict):
    """Backbone, weights and input adaptation."""

    backbone: str = "densenet121"
    weights: str = "imagenet"
    allow_random_fallback: bool = False
    in_channels: int = Field(1, ge=1, le=4)
    first_conv: Literal["sum", "replicate"] = "sum"
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    # Detection only (medvision.models.detector): slices on each side of the centre slice, pyramid width,
    # anchor base sizes (network-input pixels, one per pyramid level), the finest level (3: P3-P6 from layer2-4;
    # 2: P2-P5 from layer1-3), slice enlargement.
    context: int = Field(1, ge=0, le=4)
    fpn_channels: int = Field(128, ge=16, le=512)
    anchor_sizes: tuple[float, float, float, float] = (8.0, 16.0, 32.0, 64.0)
    min_level: Literal[2, 3] = 3
    upsample: float = Field(1.0, ge=0.25, le=4.0)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from medvision.models import list_models

        if value not in list_models():
            raise ValueError(f"unknown backbone {value!r}; allowed: {', '.join(list_models())}")
        return value


class EarlyStopConfig(_Strict):
    """Stop when the validation metric has not improved for ``patience`` epochs."""

    #: The validation metric that picks the best epoch too: classification val_auroc (default) or val_loss,
    #: detection val_cpm (default).
    metric: Literal["val_auroc", "val_loss", "val_cpm"] = "val_auroc"
    patience: int = Field(3, ge=1)


class TrainConfig(_Strict):
    """Optimisation, precision, checkpoints."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1.0e-4, gt=0.0)
    weight_decay: float = Field(1.0e-4, ge=0.0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    scheduler: Literal["cosine", "none"] = "cosine"
    amp: Literal["auto", "off", "bf16"] = "auto"
    seed: int = 0
    imbalance: Literal["pos_weight", "sampler", "none"] = "pos_weight"
    warmup_frozen_epochs: int = Field(0, ge=0)
    early_stop: EarlyStopConfig | None = EarlyStopConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "outputs"
    max_batches_per_epoch: int | None = Field(None, ge=1)
    #: Detection: validate (the CPM over whole volumes) every this many epochs and after the last one;
    #: early-stopping patience counts validations.
    val_every: int = Field(1, ge=1)


class EvaluateConfig(_Strict):
    """Clinical evaluation on the held-out test split."""

    operating_point: Literal["youden", "sensitivity"] = "youden"
    target_sensitivity: float = Field(0.9, gt=0.0, le=1.0)
    bootstrap: int = Field(1000, ge=0)
    #: Detection: the score threshold registered with the model is read on validation at this many
    #: false positives per volume; a hit is a 3D IoU of at least ``iou_threshold``.
    fp_rate: float = Field(1.0, ge=0.0)
    iou_threshold: float = Field(0.1, gt=0.0, le=1.0)


class TrackingConfig(_Strict):
    """MLflow: where, and under which registered name.

    ``delivery_wait_s``: when the server goes away during a run, training goes on and what it logs
    waits in memory; at the end of the run medvision waits this long for the server to come back
    before it gives up (and says what was not delivered).
    """

    uri: str | None = None
    register_as: str | None = "pneumonia-classifier"
    alias: str = "candidate"
    required: bool = True
    delivery_wait_s: float = Field(120.0, ge=0.0)


class ExperimentConfig(_Strict):
    """One experiment, as written in ``configs/*.yaml``."""

    task: Literal["classification", "detection"] = "classification"
    experiment: str = "pneumonia"
    intended_use: str = INTENDED_USE_CXR
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Detection gets its own defaults for what the YAML leaves out: intended use, model name, stop metric."""
        if not isinstance(data, dict) or data.get("task") != "detection":
            return data
        data = dict(data)
        data.setdefault("intended_use", INTENDED_USE_TUMOUR)
        tracking = data.get("tracking")
        if tracking is None or isinstance(tracking, dict):
            data["tracking"] = {"register_as": "tumor-detector", **(tracking or {})}
        train = data.get("train")
        if train is None or isinstance(train, dict):
            train = dict(train or {})
            stop = train.get("early_stop", {})
            if isinstance(stop, dict):
                train["early_stop"] = {"metric": "val_cpm", **stop}
            data["train"] = train
        return data


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source} {dotted}", f"'{key}' is a value, not a section", "check the key path")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a copy of ``tree``."""
    import copy

    out = copy.deepcopy(tree)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}", "expected key=value", "write e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key.strip(), value, "--set")
    return out


def _format_error(err: dict[str, Any]) -> tuple[str, str]:
    key = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return key, "unknown key"
    if kind == "missing":
        return key, "required key is missing"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    message = err["msg"].removeprefix("Value error, ")
    return key, f"bad value {shown}: {message}"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    node: Any = model
    for part in loc[:-1]:
        field = node.model_fields.get(str(part)) if isinstance(node, type) and issubclass(node, BaseModel) else None
        if field is None:
            return ""
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        node = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if node is None:
            return ""
    return ", ".join(node.model_fields) if isinstance(node, type) else ""


def parse_config(
    tree: dict[str, Any], *, overrides: list[str] | None = None, source: str = "config"
) -> ExperimentConfig:
    """Validate a config mapping (after overrides) into an :class:`ExperimentConfig`."""
    if not isinstance(tree, dict):
        raise ConfigError(source, "the config must be a YAML mapping", "see configs/pneumonia_demo.yaml")
    merged = apply_overrides(tree, overrides)
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        message = _validation_message(ExperimentConfig, exc)
        raise ConfigError(source, message, "fix the key or value in the YAML or the --set override") from None


def _read_yaml(path: Path, what: str, example: str) -> Any:
    """The YAML tree of ``path``; a missing file or bad YAML is a ConfigError naming the file."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(path, f"{what} not found", f"pass a YAML file such as {example}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"not valid YAML ({' '.join(str(exc).split())})", "fix the YAML syntax") from None


def _validation_message(model: type[BaseModel], exc: ValidationError) -> str:
    """Each bad key of a pydantic error with its reason, and the allowed keys for an unknown one."""
    parts = []
    for err in exc.errors():
        key, reason = _format_error(err)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, tuple(err["loc"]))
            reason += f" (allowed here: {allowed})" if allowed else ""
        parts.append(f"{key}: {reason}")
    return "; ".join(parts)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config file and validate it.

    Raises:
        ConfigError: naming the file, each bad key and what is allowed.
    """
    path = Path(path)
    tree = _read_yaml(path, "config file", "configs/pneumonia_demo.yaml")
    return parse_config(tree, overrides=overrides, source=str(path))


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (saved with every run)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------- reports


class DeidentifyConfig(_Strict):
    """``deidentify:`` of a report: DICOM PS3.15 Basic Profile and its options (:mod:`medvision.reporting.deid`)."""

    enabled: bool = False
    retain_dates: bool = Field(True, description="Retain Longitudinal Temporal Information with Modified Dates.")
    clean_descriptors: bool = Field(False, description="Keep descriptions and comments, cleaned of identifiers.")
    retain_device_identity: bool = Field(False, description="Keep station names, serial numbers and device ids.")
    salt: SecretStr | None = Field(
        None,
        exclude=True,
        description="The de-identification secret (default: a new random one, so pseudonyms differ per run and"
        " nothing is reused); never written. `medvision report` takes it from $MEDVISION_REPORT_SALT, never from a"
        " config file.",
    )

    @field_validator("salt", mode="before")
    @classmethod
    def _no_empty_salt(cls, value: Any) -> Any:
        return value or None  # an empty salt is no salt: a random one is drawn


class ReportConfig(_Strict):
    """Everything a report run takes (:func:`medvision.reporting.batch.run_report`), validated once.

    ``medvision report`` builds it from its ``--config`` file and its options (an option given wins over the
    file's key): :func:`load_report_config`. Bad values raise :class:`~medvision.errors.ConfigError` naming
    the option (``--device``, ``--image-format``, ``--batch-size``) or the key.

    Example:
        >>> cfg = ReportConfig(input="incoming", out="report", image_format="jpeg")
        >>> cfg.batch_size, cfg.out.is_absolute()
        (8, True)
    """

    input: Path | str = Field(
        description="The folder of studies (walked recursively), or a PACS address: dicomweb+http(s)://host:port/path"
        " or dimse://AET@host:port (with `query`)."
    )
    out: Path = Field(
        description="The report folder: replaced when it holds an earlier report, refused when it holds anything else."
    )
    classifier: str | None = Field(
        None, description="Pneumonia classifier URI (default models:/pneumonia-classifier@champion, else @candidate)."
    )
    detector: str | None = Field(
        None, description="Tumour detector URI (default models:/tumor-detector@champion, else @candidate)."
    )
    tracking_uri: str | None = Field(
        None,
        description="The MLflow store holding the models (default: MLflow's current one, then $MLFLOW_TRACKING_URI,"
        " then ./mlflow.db).",
    )
    device: str = Field("cpu", description="cpu, cuda or cuda:N.")
    image_format: Literal["png", "jpeg"] = Field(
        "png",
        description="png (lossless) or jpeg (quality 90) for the overlays and key slices: jpeg makes the report about"
        " five times smaller and its rendering about four times faster (benchmarks/bench_report.py).",
    )
    batch_size: int = Field(8, description="Radiographs per forward pass.")
    secondary_capture: bool = Field(
        False,
        description="Also file each DICOM study's key picture (overlay or key slice) into its study as a DICOM"
        " Secondary Capture (sc/<key>.dcm; medvision.reporting.sc).",
    )
    title: str = Field("medvision batch report", description="The report's title.")
    deidentify: DeidentifyConfig = Field(default_factory=DeidentifyConfig)
    query: str | None = Field(
        None,
        description="With a PACS input: the studies to report, as DICOM matching keys"
        " (StudyDate=20261125-20261126&ModalitiesInStudy=CR).",
    )
    calling_aet: str = Field(DEFAULT_CALLING_AET, description="medvision's AE title towards a DIMSE PACS.")
    ca_bundle: Path | None = Field(None, description="PEM file of the certificate authorities to trust (TLS).")
    credentials: Path | None = Field(
        None,
        description="PACS credentials file ({username, password} or {token}, chmod 600); default: the environment"
        " (MEDVISION_PACS_USER and MEDVISION_PACS_PASSWORD, or MEDVISION_PACS_TOKEN).",
    )
    pacs_cache: Path | None = Field(
        None, description="Where studies retrieved from a PACS are kept (default: <out>.pacs-cache beside the report)."
    )
    pacs_workers: int = Field(
        4, ge=1, le=32, description="Studies retrieved from a PACS at once (each with its own connection)."
    )
    store: str | None = Field(
        None,
        description="Send each study's SR (and secondary capture) to this PACS as soon as its row is written:"
        " dicomweb+http(s)://host:port/path or dimse://AET@host:port.",
    )
    store_attempts: int = Field(
        RetryPolicy.attempts, ge=1, description="Sends per object, the first included (backoff between)."
    )
    store_base_delay: float = Field(
        RetryPolicy.base_delay, ge=0.0, description="Seconds before the second attempt (then doubled)."
    )
    store_max_delay: float = Field(RetryPolicy.max_delay, ge=0.0, description="The longest wait between two attempts.")

    @field_validator("input", mode="before")
    @classmethod
    def _folder_or_pacs(cls, value: Any) -> Any:
        if isinstance(value, str) and "://" in value:
            parse_address(value, "--input")  # a ConfigError naming --input when it is not a PACS address
            return value.strip()
        return Path(value).expanduser().resolve() if isinstance(value, str | Path) else value

    @model_validator(mode="after")
    def _pacs_input_has_a_query(self) -> ReportConfig:
        if isinstance(self.input, str) and not self.query:
            raise ConfigError(
                "--query", f"a PACS input ({self.input}) needs a query naming the studies to report",
                "e.g. --query 'StudyDate=20261125-20261126&ModalitiesInStudy=CR'",
            )  # fmt: skip
        return self

    @model_validator(mode="after")
    def _no_deidentified_store(self) -> ReportConfig:
        # A de-identified SR or SC references pseudonymised UIDs: filed into the PACS it would start new
        # studies that belong to no patient there. Sharing is the report folder's job, not the PACS's.
        if self.store and self.deidentify.enabled:
            raise ConfigError(
                "--store", "a de-identified report's SR and secondary capture belong to no study in the PACS",
                "store the report without --deidentify, and share a de-identified copy made apart",
            )  # fmt: skip
        return self

    @field_validator("store")
    @classmethod
    def _store_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_address(value, "--store")
        return value.strip()

    @field_validator("calling_aet")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value, "--calling-aet")

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_query(value, "--query")
        return value.strip()

    @field_validator("out", "ca_bundle", "credentials", "pacs_cache")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise ConfigError("--device", f"unknown device {device!r}", "use cpu or cuda")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    "--device", f"{device} was asked for but no CUDA device is available", "use --device cpu"
                )
        return device

    @field_validator("image_format", mode="before")
    @classmethod
    def _known_format(cls, value: Any) -> Any:
        if not isinstance(value, str) or value not in ("png", "jpeg"):
            raise ConfigError("--image-format", f"unknown format {value!r}", "use png or jpeg")
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _positive_batch(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("--batch-size", f"must be an integer >= 1, got {value!r}", "use e.g. 8")
        return value


def load_report_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> ReportConfig:
    """Read a report config (YAML), put ``overrides`` over it and validate the result once.

    Args:
        path: the YAML file (``None``: no file, only ``overrides``).
        overrides: keys that win over the file's (``deidentify`` key by key); ``None`` values are ignored.
        defaults: top-level keys used where neither the file nor ``overrides`` gives one (``None`` values are
            ignored), e.g. ``tracking_uri`` from ``$MLFLOW_TRACKING_URI``.

    Example:
        >>> cfg = load_report_config(None, {"input": "in", "out": "report", "device": None})
        >>> cfg.device, cfg.deidentify.enabled
        ('cpu', False)

    Raises:
        ConfigError: a missing file, bad YAML, an unknown key, a salt in the file or a bad value.
    """
    tree: dict[str, Any] = {}
    source = "report options"
    if path is not None:
        path = Path(path)
        source = str(path)
        read = _read_yaml(path, "report config", "configs/report_deidentified.yaml")
        if not isinstance(read, dict):
            raise ConfigError(path, "the report config must be a YAML mapping", "see configs/report_deidentified.yaml")
        deid = read.get("deidentify")
        if isinstance(deid, dict) and "salt" in deid:
            raise ConfigError(
                path,
                "deidentify.salt: the salt is never read from a config file (the file may travel with the report)",
                "remove the key and set $MEDVISION_REPORT_SALT",
            )
        tree = dict(read)
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping):
            base = tree.get(key, {})
            if not isinstance(base, Mapping):
                continue  # the file's bad value: validation names it
            value = {**base, **{k: v for k, v in value.items() if v is not None}}
        if value is not None:
            tree[key] = value
    for key, value in (defaults or {}).items():
        if value is not None:
            tree.setdefault(key, value)
    fix = "fix the key or value in the YAML" if path is not None else "fix the key or value"
    try:
        return ReportConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(source, _validation_message(ReportConfig, exc), fix) from None
