"""The radiologist batch report: study discovery, inference, explanations, HTML / PDF / CSV / JSON / DICOM SR.

The rooms, one job each: :mod:`~medvision.reporting.discover` (walk a folder, group and route studies),
:mod:`~medvision.reporting.models` (the registered classifier and detector, their provenance),
:mod:`~medvision.reporting.radiographs` (the classifier pass, Grad-CAM overlays, one row per series),
:mod:`~medvision.reporting.volumes` (the detector pass, key slices), :mod:`~medvision.reporting.rows`
(the row schema, worklist order, results.csv / results.json, SR and secondary capture of a row),
:mod:`~medvision.reporting.cache` (re-runs reuse unchanged studies), :mod:`~medvision.reporting.output`
(the atomic report folder), :mod:`~medvision.reporting.explain` (Grad-CAM), :mod:`~medvision.reporting.sr`
(DICOM Structured Reports), :mod:`~medvision.reporting.sc` (DICOM Secondary Capture),
:mod:`~medvision.reporting.deid` (pseudonyms for ``--deidentify``), :mod:`~medvision.reporting.batch`
(:func:`run_report`, the whole run, from one validated :class:`~medvision.config.ReportConfig`) and
:mod:`~medvision.reporting.render` (:func:`render_report`, the HTML and PDF).

Nothing heavy is imported with the package: the names below load their module on first use.

Example:
    >>> from medvision.reporting import ReportConfig, run_report  # doctest: +SKIP
    >>> summary = run_report(ReportConfig(input="studies/", out="report/"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Deidentifier", "ReportConfig", "discover", "format_summary", "render_report", "run_report"]

_LAZY = {
    "Deidentifier": "medvision.reporting.deid",
    "ReportConfig": "medvision.config",
    "discover": "medvision.reporting.discover",
    "format_summary": "medvision.reporting.batch",
    "render_report": "medvision.reporting.render",
    "run_report": "medvision.reporting.batch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medvision.reporting' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
