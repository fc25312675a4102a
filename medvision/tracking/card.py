"""A Markdown model card for a registered classifier.

:func:`render_model_card` takes one dict and never fails on a missing or odd value: whatever is
absent reads "not recorded". Every key may sit at the top level of ``info`` or in the section
named below; the model facts may also come from ``info["metadata"]`` (the metadata logged with
the model by :func:`medvision.tracking.registry.log_classifier`), and the metrics may be the dict
:func:`medvision.metrics.evaluate_binary` returns, unchanged.

Keys read (``section.key``; a bare key is looked up at the top level, then in ``metadata``):

* ``name``, ``version``, ``alias``, ``model_uri``, ``backbone``, ``weights_source``, ``task``,
  ``in_channels``, ``image_size``, ``intended_use``
* ``data.source``, ``data.format``, ``data.digest``, ``data.splits`` =
  ``{split: {"images", "patients", "positives"}}`` (also ``n``, ``n_patients``, ``n_pos``)
* ``metrics.test_auroc``, ``test_auroc_ci_low``/``high``, ``test_auprc``, ``test_sensitivity``,
  ``test_specificity``, ``test_ppv``, ``test_npv``, ``test_ece``/``test_ece_uncalibrated``,
  ``test_brier``/``test_brier_uncalibrated`` (or the short names ``auroc``, ``auroc_ci``
  ``[low, high]``, ``ece_before``/``ece_after``, ``brier_before``/``brier_after``), ``test_n``,
  ``test_n_pos``
* ``operating_point`` = ``{"method", "threshold", "sensitivity", "specificity", "target_sensitivity"}``
  (or ``metrics.operating_point``; ``threshold`` also from metadata)
* ``calibration.temperature`` (or ``metrics.temperature``, ``metadata.temperature``)
* ``subgroups``: rows of :func:`medvision.metrics.subgroup_auroc` (or ``metrics.subgroups``)
* ``limitations``: a string or a list of strings
* ``provenance.run_id``, ``git_commit``, ``medvision_version``, ``tracking_uri``, ``config_digest``

Example:
    >>> card = render_model_card({"name": "pneumonia", "version": 3, "weights_source": "none"})
    >>> "random initialisation" in card and "not recorded" in card
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from medvision.constants import DRAFT_NOTICE

__all__ = ["NOT_RECORDED", "render_detector_card", "render_model_card"]

#: What a missing value reads as.
NOT_RECORDED = "not recorded"

_SPLITS = ("train", "val", "test")
_DEFAULT_LIMITATIONS = (
    "Trained and evaluated on the data described above only; performance on other hospitals, scanners,"
    " populations or prevalences is unknown until measured there.",
    "The operating point was chosen on the validation set; its sensitivity and specificity shift when the"
    " prevalence or the image source changes.",
    "Subgroups with few cases have wide intervals; absent subgroups were not evaluated.",
)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _section(info: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = info.get(name)
    return value if isinstance(value, Mapping) else {}


def _first(*candidates: Any) -> Any:
    for value in candidates:
        if not _missing(value):
            return value
    return None


def _get(mapping: Mapping[str, Any], *keys: str) -> Any:
    return _first(*(mapping.get(key) for key in keys))


def _text(value: Any) -> str:
    """A value as one table-safe line of Markdown."""
    if _missing(value):
        return NOT_RECORDED
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value) or NOT_RECORDED
    return " ".join(str(value).split()).replace("|", "\\|")


def _num(value: Any, digits: int = 3) -> str:
    if _missing(value):
        return NOT_RECORDED
    if isinstance(value, bool):
        return str(value).lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _text(value)
    if math.isnan(number):
        return "undefined (NaN)"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if number.is_integer() and abs(number) >= 1 and not isinstance(value, float):
        return str(int(number))
    return f"{number:.{digits}f}"


def _count(value: Any) -> str:
    if _missing(value):
        return NOT_RECORDED
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return _text(value)


def _interval(low: Any, high: Any) -> str:
    if _missing(low) or _missing(high):
        return NOT_RECORDED
    if _num(low).startswith("undefined") or _num(high).startswith("undefined"):
        return "undefined"
    return f"{_num(low)}–{_num(high)}"


def _ci(low: Any, high: Any) -> str:
    return f"95% CI {_interval(low, high)}"


def _weights_text(source: Any) -> str:
    if _missing(source):
        return NOT_RECORDED
    text = _text(source)
    lowered = str(source).strip().lower()
    if lowered.startswith("random-init"):
        return (
            "**random initialisation, NOT ImageNet weights**: ImageNet weights were asked for but were not"
            f" available, so training started from random weights (`{text}`)"
        )
    if lowered == "none":
        return "**random initialisation** (trained from scratch by choice; not ImageNet weights)"
    if lowered.startswith("imagenet"):
        return f"ImageNet pretrained (`{text}`)"
    if lowered.startswith("checkpoint:"):
        return f"fine-tuned from a checkpoint file (`{text}`)"
    if lowered.startswith("mlflow:"):
        return f"fine-tuned from an MLflow model (`{text}`)"
    return f"`{text}`"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _model_section(info: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    def pick(key: str) -> Any:
        return _first(info.get(key), _section(info, "model").get(key), meta.get(key))

    architecture = meta.get("medvision_architecture") if isinstance(meta.get("medvision_architecture"), Mapping) else {}
    backbone = _first(pick("backbone"), architecture.get("backbone"))
    size = pick("image_size")
    return [
        "## Model",
        "",
        f"- **Name:** {_text(pick('name'))}",
        f"- **Version:** {_text(pick('version'))}" + (f" (alias `{_text(pick('alias'))}`)" if pick("alias") else ""),
        f"- **Task:** {_text(pick('task'))}",
        f"- **Backbone:** {_text(backbone)}",
        f"- **Input channels:** {_text(_first(pick('in_channels'), architecture.get('in_channels')))}",
        f"- **Image size:** {_text(size)}",
        f"- **Weights source:** {_weights_text(pick('weights_source'))}",
        f"- **Model URI:** {_text(pick('model_uri'))}",
    ]


def _intended_use_section(info: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    use = _first(info.get("intended_use"), meta.get("intended_use"))
    return [
        "## Intended use",
        "",
        _text(use) if not _missing(use) else f"Intended use: {NOT_RECORDED}.",
        "",
        f"**{DRAFT_NOTICE}** Decision support for research and triage only; every prediction must be confirmed"
        " by a qualified reader.",
    ]


def _data_section(info: Mapping[str, Any]) -> list[str]:
    data = _section(info, "data")
    lines = [
        "## Data",
        "",
        f"- **Source:** {_text(_get(data, 'source', 'path'))}",
        f"- **Format:** {_text(data.get('format'))}",
        f"- **Digest:** {_text(_get(data, 'digest', 'sha256'))}",
        "",
        _row("Split", "Images", "Patients", "Positives"),
        _row("---", "---:", "---:", "---:"),
    ]
    splits = data.get("splits") if isinstance(data.get("splits"), Mapping) else {}
    names = [*_SPLITS, *(k for k in splits if k not in _SPLITS)]
    for name in names:
        split = splits.get(name) if isinstance(splits.get(name), Mapping) else {}
        lines.append(
            _row(
                _text(name),
                _count(_get(split, "images", "n", "n_images")),
                _count(_get(split, "patients", "n_patients")),
                _count(_get(split, "positives", "n_pos", "n_positives")),
            )
        )
    return lines


def _metrics_section(info: Mapping[str, Any], op: Mapping[str, Any]) -> list[str]:
    m = _section(info, "metrics")
    ci = m.get("auroc_ci") if isinstance(m.get("auroc_ci"), Sequence) and not isinstance(m.get("auroc_ci"), str) else ()
    low = _first(m.get("test_auroc_ci_low"), m.get("auroc_ci_low"), ci[0] if len(ci) == 2 else None)
    high = _first(m.get("test_auroc_ci_high"), m.get("auroc_ci_high"), ci[1] if len(ci) == 2 else None)
    threshold = _num(op.get("threshold"), 4)
    n = _get(m, "test_n", "n")
    n_pos = _get(m, "test_n_pos", "n_pos")
    sens = _get(m, "test_sensitivity", "sensitivity")
    ece_before, ece_after = _get(m, "test_ece_uncalibrated", "ece_before"), _get(m, "test_ece", "ece_after")
    brier_before = _get(m, "test_brier_uncalibrated", "brier_before")
    brier_after = _get(m, "test_brier", "brier_after")
    return [
        "## Metrics",
        "",
        f"Test set images: {_count(n)}; positives: {_count(n_pos)}.",
        "",
        _row("Metric", "Value"),
        _row("---", "---"),
        _row("AUROC", f"{_num(_get(m, 'test_auroc', 'auroc'))} ({_ci(low, high)})"),
        _row("AUPRC", _num(_get(m, "test_auprc", "auprc"))),
        _row(f"Sensitivity at the operating point (threshold {threshold})", _num(sens)),
        _row("Specificity at the operating point", _num(_get(m, "test_specificity", "specificity"))),
        _row("PPV at the operating point", _num(_get(m, "test_ppv", "ppv"))),
        _row("NPV at the operating point", _num(_get(m, "test_npv", "npv"))),
        _row("ECE before / after temperature scaling", f"{_num(ece_before)} / {_num(ece_after)}"),
        _row("Brier score before / after temperature scaling", f"{_num(brier_before)} / {_num(brier_after)}"),
    ]


def _operating_point(info: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {}
    for source in (_section(_section(info, "metrics"), "operating_point"), _section(info, "operating_point")):
        op.update({k: v for k, v in source.items() if not _missing(v)})
    if isinstance(info.get("operating_point"), str):
        op.setdefault("method", info["operating_point"])
    if isinstance(meta.get("operating_point"), str):
        op.setdefault("method", meta["operating_point"])
    elif isinstance(meta.get("operating_point"), Mapping):
        for key, value in meta["operating_point"].items():
            op.setdefault(key, value)
    if _missing(op.get("threshold")):
        op["threshold"] = _first(info.get("threshold"), meta.get("threshold"))
    return op


def _operating_point_section(op: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Operating point",
        "",
        f"- **Method:** {_text(op.get('method'))} (chosen on the validation set)",
        f"- **Threshold:** {_num(op.get('threshold'), 4)} (on the calibrated probability)",
    ]
    if not _missing(op.get("target_sensitivity")):
        lines.append(f"- **Target sensitivity:** {_num(op.get('target_sensitivity'))}")
    if not _missing(op.get("sensitivity")) or not _missing(op.get("specificity")):
        lines.append(
            f"- **On validation:** sensitivity {_num(op.get('sensitivity'))}, specificity {_num(op.get('specificity'))}"
        )
    return lines


def _calibration_section(info: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    calibration = _section(info, "calibration")
    temperature = _first(
        calibration.get("temperature"),
        _section(info, "metrics").get("temperature"),
        info.get("temperature"),
        meta.get("temperature"),
    )
    return [
        "## Calibration",
        "",
        f"- **Temperature:** {_num(temperature, 4)} (fitted on the validation set; probabilities are"
        " sigmoid(logit / T))",
    ]


def _subgroups_section(info: Mapping[str, Any]) -> list[str]:
    rows = info.get("subgroups")
    if _missing(rows):
        rows = _section(info, "metrics").get("subgroups")
    lines = ["## Subgroups", ""]
    if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
        return [*lines, f"Subgroup results: {NOT_RECORDED}."]
    lines += [_row("Attribute", "Group", "N", "Positives", "AUROC", "95% CI", "Note"), _row(*["---"] * 7)]
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        interval = _interval(row.get("ci_low"), row.get("ci_high"))
        lines.append(
            _row(
                _text(_get(row, "attribute", "subgroup")),
                _text(row.get("group")),
                _count(_get(row, "n", "images")),
                _count(_get(row, "n_pos", "positives")),
                _num(row.get("auroc")),
                interval,
                _text(row.get("note")) if not _missing(row.get("note")) else "",
            )
        )
    return lines


def _limitations_section(info: Mapping[str, Any], weights_source: Any) -> list[str]:
    given = info.get("limitations")
    items: list[str]
    if isinstance(given, str) and given.strip():
        items = [given.strip()]
    elif isinstance(given, Sequence) and not isinstance(given, str) and given:
        items = [_text(item) for item in given]
    else:
        items = list(_DEFAULT_LIMITATIONS)
    if isinstance(weights_source, str) and weights_source.strip().lower().startswith("random-init"):
        items.insert(
            0,
            "The backbone was NOT pretrained on ImageNet (random initialisation); expect lower accuracy"
            " than an ImageNet-initialised model.",
        )
    return ["## Limitations", "", *(f"- {item}" for item in items)]


def _provenance_section(info: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    prov = _section(info, "provenance")

    def pick(key: str) -> Any:
        return _first(prov.get(key), info.get(key), meta.get(key))

    return [
        "## Provenance",
        "",
        f"- **MLflow run:** {_text(pick('run_id'))}",
        f"- **Git commit:** {_text(pick('git_commit'))}",
        f"- **medvision version:** {_text(pick('medvision_version'))}",
        f"- **Tracking store:** {_text(pick('tracking_uri'))}",
        f"- **Config digest:** {_text(pick('config_digest'))}",
    ]


def render_model_card(info: Mapping[str, Any]) -> str:
    """Render a model card as Markdown.

    Sections: Model, Intended use, Data, Metrics, Operating point, Calibration, Subgroups,
    Limitations, Provenance. A randomly initialised backbone is said to be one, plainly.

    Args:
        info: What is known about the model (see the module notes for the keys read).

    Returns:
        The Markdown text, ending in a newline.
    """
    info = info if isinstance(info, Mapping) else {}
    meta = _section(info, "metadata")
    name = _first(info.get("name"), meta.get("name"))
    version = _first(info.get("version"), meta.get("version"))
    title = f"# Model card: {_text(name)}" + (f" v{_text(version)}" if not _missing(version) else "")
    weights_source = _first(
        info.get("weights_source"), _section(info, "model").get("weights_source"), meta.get("weights_source")
    )
    op = _operating_point(info, meta)
    sections = [
        [title],
        _model_section(info, meta),
        _intended_use_section(info, meta),
        _data_section(info),
        _metrics_section(info, op),
        _operating_point_section(op),
        _calibration_section(info, meta),
        _subgroups_section(info),
        _limitations_section(info, weights_source),
        _provenance_section(info, meta),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _detection_metrics_section(info: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    m = _section(info, "metrics")
    at_fp = [k for k in m if isinstance(k, str) and k.startswith("test_sens_at_")]
    lines = [
        "## Metrics (test split)",
        "",
        f"Test volumes: {_count(m.get('test_n_volumes'))}; lesions: {_count(m.get('test_n_lesions'))}.",
        "",
        _row("Metric", "Value"),
        _row("---", "---"),
        _row("CPM (mean sensitivity at 1/8 ... 8 FP per volume)", _num(m.get("test_cpm"))),
        *(_row(f"Sensitivity at {k.removeprefix('test_sens_at_')} per volume", _num(m.get(k))) for k in at_fp),
        _row(f"mAP at IoU {_num(m.get('iou_threshold'), 2)} (COCO, MONAI)", _num(m.get("test_map"))),
        _row(
            "Volume-level AUROC (tumour present)",
            f"{_num(m.get('test_volume_auroc'))}"
            f" ({_ci(m.get('test_volume_auroc_ci_low'), m.get('test_volume_auroc_ci_high'))})",
        ),
        _row("Validation CPM", _num(m.get("val_cpm"))),
    ]
    threshold = _first(m.get("threshold"), meta.get("threshold"))
    lines += [
        "",
        "## Operating point",
        "",
        f"- **Score threshold:** {_num(threshold, 4)}, chosen on validation at {_num(m.get('fp_rate'), 3)}"
        " false positives per volume; a volume is flagged when its highest box score reaches it.",
        f"- **Test sensitivity at the threshold:** {_num(m.get('test_sensitivity'))}"
        f" ({_ci(m.get('test_sensitivity_ci_low'), m.get('test_sensitivity_ci_high'))});"
        f" false positives per volume: {_num(m.get('test_fp_per_volume'))}.",
        "",
        "**Definition of a hit.** A predicted 3D box finds a lesion when its 3D intersection over union with the"
        f" lesion's true box is at least {_num(m.get('iou_threshold'), 2)} (the lenient LUNA16-style criterion used"
        " with MONAI's detection metrics). Each lesion is found at most once (the highest-scoring box that hits"
        " it); further boxes on a found lesion are ignored; every other box is a false positive.",
    ]
    bands = m.get("size_bands")
    if isinstance(bands, Sequence) and bands:
        lines += ["", "## Sensitivity by lesion size (longest side)", "", _row("Band", "Lesions", "Sensitivity")]
        lines.append(_row("---", "---:", "---:"))
        for band in bands:
            if isinstance(band, Mapping):
                lines.append(_row(_text(band.get("band")), _count(band.get("n")), _num(band.get("sensitivity"))))
    return lines


def _pyramid(arch: Any) -> str:
    """``" (pyramid P2-P5, 64 channels, anchors from 4 px)"`` from the recorded architecture, else ``""``."""
    if not isinstance(arch, Mapping) or not arch.get("anchor_sizes"):
        return ""
    low = int(arch.get("min_level", 3))
    return (
        f" (pyramid P{low}-P{low + 3}, {_text(arch.get('fpn_channels'))} channels,"
        f" anchors from {float(arch['anchor_sizes'][0]):g} px)"
    )


def render_detector_card(info: Mapping[str, Any]) -> str:
    """Render the model card of a tumour detector as Markdown (same keys as :func:`render_model_card`;
    ``metrics`` is the dict of :func:`medvision.metrics.detection.evaluate_detection`)."""
    info = info if isinstance(info, Mapping) else {}
    meta = _section(info, "metadata")
    name = _first(info.get("name"), meta.get("name"))
    version = _first(info.get("version"), meta.get("version"))
    title = f"# Model card: {_text(name)}" + (f" v{_text(version)}" if not _missing(version) else "")
    weights_source = _first(info.get("weights_source"), meta.get("weights_source"))
    model = _model_section(info, meta)
    slices = 2 * int(meta.get("context", 1)) + 1
    names = [str(v) for v in meta.get("sequences") or []]
    n_volume = meta.get("volume_channels")
    if len(names) > 1:
        sequences = (
            f"; {len(names)} MR sequences ({', '.join(names)}), each with its {_text(slices)} slices, "
            f"{len(names) * slices} channels in all"
        )
    elif names:
        sequences = f"; sequence {names[0]}"
    else:
        sequences = ""
    if names and isinstance(n_volume, int) and n_volume != len(names):
        sequences += f" (of the volume's {n_volume}: {', '.join(str(v) for v in meta.get('volume_sequences') or [])})"
    model += [
        f"- **Input:** {_text(slices)} adjacent axial slices at"
        f" {_text(meta.get('spacing'))} mm, {_text(meta.get('modality'))} normalisation{sequences}",
        *(
            [f"- **Sequences expected:** {n_volume} per volume; a volume with another number is refused"]
            if isinstance(n_volume, int)
            else []
        ),
        "- **Architecture:** 2.5D RetinaNet (torchvision) on a ResNet feature pyramid; slice boxes merged into 3D"
        + _pyramid(meta.get("medvision_architecture")),
    ]
    sections = [
        [title],
        model,
        _intended_use_section(info, meta),
        _data_section(info),
        _detection_metrics_section(info, meta),
        _limitations_section(info, weights_source),
        _provenance_section(info, meta),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"
