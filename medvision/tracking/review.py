"""Experiment review: list runs, read their evidence, compare two runs, promote a model version.

What a reviewer does after training, on top of what :func:`medvision.engine.train_classification`
logs (per-epoch ``train_loss``/``val_loss``/``val_auroc``, final ``test_*`` metrics and
``best_val_auroc``, the tags ``backbone``, ``weights_source``, ``dataset_digest``, the artifacts
``evidence/predictions.csv`` and ``evidence/metrics.json``, a registered model version):

* :func:`list_runs`: one row per run of an experiment, best ``test_auroc`` first (the leaderboard).
* :func:`load_predictions`, :func:`load_evidence`, :func:`metric_history`: a run's logged test
  predictions, its ``metrics.json`` and its per-epoch curves.
* :func:`compare_runs`: a *paired* comparison of two runs on the same test studies (DeLong's test
  and a paired, class-stratified bootstrap of the AUROC difference).
* :func:`promote`: move an alias (``champion``) to a model version, refusing a version without test
  evidence or one that is worse than the current champion on the same data.
* :func:`show_run`: everything logged in one run.
* :func:`resolve_run_id`: the whole run id of a unique prefix; every function here that takes
  a run id accepts a prefix.
* :func:`format_table` and friends: the plain-text / Markdown tables the CLI and the notebook print.

Comparing runs needs the same salt. ``predictions.csv`` identifies a study only by a *salted* hash
of its StudyInstanceUID (:func:`medvision.tracking.salted_hash`); the salt is a secret kept in
``<train.output_dir>/<experiment>/hash_salt.txt`` and never sent to MLflow. Two runs trained with
the same ``train.output_dir`` and ``experiment`` share it, so their hashes align; runs trained into
different output folders hash the same study differently and cannot be paired (copy
``hash_salt.txt`` into the second output folder before training it to make them comparable).

Like the rest of :mod:`medvision.tracking`, MLflow is imported inside the functions. Every function
takes the tracking URI first; ``None`` means :func:`~medvision.tracking.store.resolve_tracking_uri`'s
choice (``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory). Nothing
here changes MLflow's global tracking URI.

Example:
    >>> rows = list_runs(None, "pneumonia-demo")  # doctest: +SKIP
    >>> print(leaderboard_table(rows))  # doctest: +SKIP
    >>> result = compare_runs(None, rows[0]["run_id"], rows[1]["run_id"])  # doctest: +SKIP
    >>> promote(None, "pneumonia-classifier", 3)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvision.errors import TrackingError
from medvision.tracking._errors import _available, _first_line, _mlflow_errors, _not_found
from medvision.tracking.store import redact_uri, require_existing_store

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_MODEL_NAME",
    "PREDICTIONS_ARTIFACT",
    "METRICS_ARTIFACT",
    "calibration_table",
    "compare_runs",
    "comparison_table",
    "format_table",
    "jsonable",
    "leaderboard_table",
    "list_runs",
    "load_evidence",
    "load_predictions",
    "metric_history",
    "promote",
    "promotion_text",
    "registered_version",
    "resolve_run_id",
    "show_run",
    "show_text",
    "subgroup_table",
    "top_runs",
]

#: The experiment the demo config trains into.
DEFAULT_EXPERIMENT = "pneumonia-demo"
#: The registered model name the configs use (``tracking.register_as``).
DEFAULT_MODEL_NAME = "pneumonia-classifier"
#: Where a training run keeps its test predictions and its evaluation.
PREDICTIONS_ARTIFACT = "evidence/predictions.csv"
METRICS_ARTIFACT = "evidence/metrics.json"

_INT_COLUMNS = frozenset({"label", "decision"})
_FLOAT_COLUMNS = frozenset({"logit", "probability"})
_RUN_METRICS = (
    "test_auroc",
    "test_auroc_ci_low",
    "test_auroc_ci_high",
    "test_sensitivity",
    "test_specificity",
    "test_ece",
    "test_cpm",
    "test_map",
    "best_val_auroc",
)
_SALT_FIX = (
    "train both runs with the same train.output_dir and experiment (study hashes are salted with"
    " <train.output_dir>/<experiment>/hash_salt.txt), or copy that hash_salt.txt into the other run's"
    " output folder before training it"
)
_TRAIN_FIX = "train with medvision (`medvision train CONFIG`), which logs evidence/predictions.csv"
#: MLflow's run ids: 32 lowercase hexadecimal digits (``uuid4().hex``); shorter ones are prefixes.
_RUN_ID_LENGTH = 32
_HEX_DIGITS = frozenset("0123456789abcdef")
#: How many candidates an ambiguous run id prefix lists.
_MAX_CANDIDATES = 10


# ---------------------------------------------------------------------------------------------- helpers


def _client(uri: str | None) -> tuple[MlflowClient, str]:
    """A client bound to the resolved store (and the store's URI); a missing local store is an error.

    The store is checked before MLflow opens it (:func:`~medvision.tracking.store.require_existing_store`),
    so reading never creates one.
    """
    from mlflow import MlflowClient

    store = require_existing_store(uri)
    return MlflowClient(tracking_uri=store, registry_uri=store), store


def _full_run_id(client: MlflowClient, store: str, run_id: str) -> str:
    """The whole id of the run that ``run_id`` names: itself, or the one run whose id starts with it.

    MLflow's run ids are 32 hexadecimal digits; ``medvision runs list`` prints the first 8. A shorter
    hexadecimal ``run_id`` is looked up as a prefix among the active runs of every active experiment.
    A whole id, or one that is not hexadecimal, comes back unchanged (MLflow then says whether it exists).

    Raises:
        TrackingError: If no run id starts with the prefix, or several do (they are listed).
    """
    from mlflow.entities import ViewType

    wanted = run_id.strip()
    prefix = wanted.lower()
    if not prefix or len(prefix) >= _RUN_ID_LENGTH or not set(prefix) <= _HEX_DIGITS:
        return wanted
    with _mlflow_errors(f"run {wanted}", "look up the run id"):
        experiments = [e.experiment_id for e in _paged(client.search_experiments, view_type=ViewType.ACTIVE_ONLY)]
        found = (
            client.search_runs(
                experiment_ids=experiments,
                filter_string=f"attributes.run_id LIKE '{prefix}%'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=_MAX_CANDIDATES + 1,
            )
            if experiments
            else []
        )
    ids = sorted({run.info.run_id for run in found if run.info.run_id.startswith(prefix)})
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise TrackingError(
            f"run {wanted}",
            f"there is no such run in {redact_uri(store)} (no run id starts with {prefix!r})",
            "list the runs with `medvision runs list --experiment NAME` and copy a run id",
        )
    shown = ", ".join(ids[:_MAX_CANDIDATES]) + (", ..." if len(ids) > _MAX_CANDIDATES else "")
    raise TrackingError(
        f"run {wanted}",
        f"the prefix {prefix!r} is ambiguous: it starts {'more than ' if len(ids) > _MAX_CANDIDATES else ''}"
        f"{min(len(ids), _MAX_CANDIDATES)} run ids in {redact_uri(store)} ({shown})",
        "give more characters of the run id",
    )


def _number(value: Any) -> float | None:
    """A finite-or-NaN float, or ``None`` for a missing value."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite(value: Any) -> bool:
    number = _number(value)
    return number is not None and math.isfinite(number)


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000.0, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get_run(client: MlflowClient, run_id: str, store: str) -> Any:
    from mlflow.exceptions import MlflowException

    with _mlflow_errors(f"run {run_id}", "read the run"):
        try:
            return client.get_run(run_id)
        except MlflowException as exc:
            if _not_found(exc) or getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE":
                raise TrackingError(
                    f"run {run_id}",
                    f"there is no such run in {redact_uri(store)}",
                    "list the runs with `medvision runs list --experiment NAME` and copy a run id",
                ) from exc
            raise


def _paged(call: Any, **kwargs: Any) -> list[Any]:
    """Every item of a paged MLflow search."""
    items: list[Any] = []
    token = None
    while True:
        page = call(page_token=token, **kwargs)
        items.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return items


def _registry_by_run(client: MlflowClient) -> dict[str, list[dict[str, Any]]]:
    """run id -> ``[{"name", "version", "aliases"}]`` for every registered model version."""
    aliases: dict[tuple[str, int], list[str]] = {}
    for model in _paged(client.search_registered_models, max_results=1000):
        for alias, version in dict(model.aliases or {}).items():
            aliases.setdefault((model.name, int(version)), []).append(alias)
    out: dict[str, list[dict[str, Any]]] = {}
    for version in _paged(client.search_model_versions, max_results=10000):
        if not version.run_id:
            continue
        number = int(version.version)
        out.setdefault(version.run_id, []).append(
            {"name": version.name, "version": number, "aliases": sorted(aliases.get((version.name, number), []))}
        )
    for versions in out.values():
        versions.sort(key=lambda v: (v["name"], v["version"]))
    return out


@contextmanager
def _quiet_download() -> Iterator[None]:
    """No "Downloading artifacts" progress bar on stderr for the few small files read here."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:  # the user's own choice stands
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _download(client: MlflowClient, run_id: str, artifact: str, folder: str) -> Path:
    """Download one artifact of a run; a missing artifact is a :class:`TrackingError` naming the run."""
    from mlflow.exceptions import MlflowException

    parent = artifact.rsplit("/", 1)[0] if "/" in artifact else ""
    try:
        listed = {f.path for f in client.list_artifacts(run_id, parent or None)}
    except (MlflowException, OSError) as exc:
        raise TrackingError(
            f"run {run_id}", f"its artifacts cannot be listed ({_first_line(exc)})", "check the artifact store"
        ) from exc
    if artifact not in listed:
        raise TrackingError(
            f"run {run_id}",
            f"has no {artifact} artifact" + (f" (it has: {', '.join(sorted(listed))})" if listed else ""),
            _TRAIN_FIX,
        )
    try:
        with _quiet_download():
            return Path(client.download_artifacts(run_id, artifact, folder))
    except (MlflowException, OSError) as exc:
        raise TrackingError(
            f"run {run_id}", f"{artifact} cannot be downloaded ({_first_line(exc)})", "check the artifact store"
        ) from exc


def _column(name: str, values: list[str], where: str) -> np.ndarray:
    if name in _FLOAT_COLUMNS:
        try:
            return np.array([float(v) if v not in ("", None) else math.nan for v in values], dtype=np.float64)
        except ValueError as exc:
            raise TrackingError(where, f"column {name!r} holds a value that is not a number ({exc})", None) from exc
    if name in _INT_COLUMNS:
        try:
            return np.array([int(float(v)) for v in values], dtype=np.int64)
        except ValueError as exc:
            raise TrackingError(where, f"column {name!r} holds a value that is not an integer ({exc})", None) from exc
    return np.array(values, dtype=str)


# ---------------------------------------------------------------------------------------------- runs


def resolve_run_id(uri: str | None, run_id: str) -> str:
    """The whole run id that ``run_id`` names: a whole id, or a unique prefix of one (``runs list`` prints 8 digits).

    Args:
        uri: The tracking URI (``None``: the default resolution).
        run_id: A run id or the start of one.

    Returns:
        The 32-digit run id (a whole or non-hexadecimal ``run_id`` comes back as given, stripped).

    Raises:
        TrackingError: If the store does not exist, no run id starts with the prefix, or several do
            (listing them).

    Example:
        >>> resolve_run_id(None, "0a1b2c3d")  # doctest: +SKIP
        '0a1b2c3d4e5f60718293a4b5c6d7e8f9'
    """
    client, store = _client(uri)
    return _full_run_id(client, store, run_id)


def list_runs(
    uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT, *, sort_by: str | None = "test_auroc"
) -> list[dict[str, Any]]:
    """One row per run of ``experiment``: the leaderboard.

    Args:
        uri: The tracking URI (``None``: the default resolution).
        experiment: The experiment name.
        sort_by: A row key to sort by, highest first, missing and NaN values last (ties: newest
            first); ``None`` keeps MLflow's order (newest first).

    Returns:
        Dicts with ``run_id``, ``run_name``, ``status``, ``start_time`` (ISO 8601, UTC), ``task``,
        ``backbone``, ``weights_source``, ``dataset_digest``, ``seed``, the metrics ``test_auroc``,
        ``test_auroc_ci_low``, ``test_auroc_ci_high``, ``test_sensitivity``, ``test_specificity``,
        ``test_ece``, ``test_cpm``, ``test_map`` (detector runs) and ``best_val_auroc`` (``None`` when
        not logged), and ``models``: the registered versions made from the run, each
        ``{"name", "version", "aliases"}``.

    Raises:
        TrackingError: If the store does not exist, the experiment does not, or MLflow refuses.
    """
    client, store = _client(uri)
    with _mlflow_errors(f"experiment {experiment!r}", "list the runs"):
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = sorted(e.name for e in client.search_experiments(max_results=50))
            raise TrackingError(
                f"experiment {experiment!r}",
                f"there is no such experiment in {redact_uri(store)}"
                + (f" (experiments: {', '.join(names)})" if names else " (it has no experiments)"),
                "pass one of them with --experiment, or train into this one first",
            )
        runs = _paged(client.search_runs, experiment_ids=[found.experiment_id], order_by=["attributes.start_time DESC"])
        registry = _registry_by_run(client)
    rows: list[dict[str, Any]] = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name or tags.get("mlflow.runName") or "",
            "status": run.info.status,
            "start_time": _iso(run.info.start_time),
            "task": tags.get("task") or params.get("task"),
            "backbone": tags.get("backbone") or params.get("model.backbone"),
            "weights_source": tags.get("weights_source"),
            "dataset_digest": tags.get("dataset_digest"),
            "seed": tags.get("seed") or params.get("train.seed"),
        }
        row.update({key: _number(metrics.get(key)) for key in _RUN_METRICS})
        row["models"] = registry.get(run.info.run_id, [])
        rows.append(row)
    if sort_by is not None:
        # Python's sort is stable: rows stay newest first among equals.
        rows.sort(key=lambda r: (0, -float(r[sort_by])) if _sortable(r.get(sort_by)) else (1, 0.0))
    return rows


def _sortable(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def top_runs(
    rows: Iterable[Mapping[str, Any]], n: int = 2, *, metric: str = "test_auroc", task: str | None = "classification"
) -> list[dict[str, Any]]:
    """The ``n`` rows of :func:`list_runs` with the highest finite ``metric`` (of ``task``, when given).

    Rows without a ``task`` tag count as any task.
    """
    kept = [dict(r) for r in rows if _sortable(r.get(metric)) and (task is None or r.get("task") in (task, None))]
    kept.sort(key=lambda r: -float(r[metric]))
    return kept[:n]


def registered_version(row: Mapping[str, Any], model_name: str = DEFAULT_MODEL_NAME) -> int | None:
    """The newest version of ``model_name`` registered from the run of a :func:`list_runs` row."""
    versions = [int(m["version"]) for m in row.get("models", []) if m.get("name") == model_name]
    return max(versions) if versions else None


def show_run(uri: str | None, run_id: str) -> dict[str, Any]:
    """Everything logged in one run.

    Returns:
        ``{"run_id", "run_name", "experiment_id", "experiment", "status", "start_time", "end_time",
        "artifact_uri", "params", "metrics", "tags", "system_tags", "artifacts", "models"}``: ``tags``
        are the run's own tags, ``system_tags`` MLflow's (``mlflow.*``), ``metrics`` the last value of
        each metric, ``artifacts`` every artifact file's path, ``models`` the registered versions made
        from the run.

    Raises:
        TrackingError: If the run does not exist or MLflow refuses.
    """
    client, store = _client(uri)
    run_id = _full_run_id(client, store, run_id)
    run = _get_run(client, run_id, store)
    with _mlflow_errors(f"run {run_id}", "read the run's artifacts and models"):
        experiment = client.get_experiment(run.info.experiment_id)
        artifacts: list[str] = []
        pending = [None]
        while pending:
            folder = pending.pop()
            for item in client.list_artifacts(run_id, folder):
                (pending if item.is_dir else artifacts).append(item.path)
        models = _registry_by_run(client).get(run_id, [])
    tags = dict(run.data.tags)
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "experiment": experiment.name if experiment is not None else None,
        "status": run.info.status,
        "start_time": _iso(run.info.start_time),
        "end_time": _iso(run.info.end_time),
        "artifact_uri": run.info.artifact_uri,
        "params": dict(sorted(run.data.params.items())),
        "metrics": dict(sorted(run.data.metrics.items())),
        "tags": {k: v for k, v in sorted(tags.items()) if not k.startswith("mlflow.")},
        "system_tags": {k: v for k, v in sorted(tags.items()) if k.startswith("mlflow.")},
        "artifacts": sorted(artifacts),
        "models": models,
    }


def load_predictions(uri: str | None, run_id: str) -> dict[str, np.ndarray]:
    """A run's logged test predictions (``evidence/predictions.csv``), one array per column.

    ``label`` and ``decision`` are int64, ``logit`` and ``probability`` float64, every other column
    (``study_hash``, ``split``, ``sex``, ``age_band``, ``view``...) a string array. Rows stay in the
    file's order.

    Raises:
        TrackingError: If the run does not exist or has no predictions (naming the run).
    """
    client, store = _client(uri)
    run_id = _full_run_id(client, store, run_id)
    _get_run(client, run_id, store)
    where = f"run {run_id} {PREDICTIONS_ARTIFACT}"
    with tempfile.TemporaryDirectory(prefix="medvision-review-") as folder:
        path = _download(client, run_id, PREDICTIONS_ARTIFACT, folder)
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    if not columns or "label" not in columns or not ({"logit", "probability"} & set(columns)):
        raise TrackingError(where, f"has the columns {columns or 'none'}, not label and logit/probability", _TRAIN_FIX)
    return {name: _column(name, [r.get(name) or "" for r in rows], where) for name in columns}


def load_evidence(uri: str | None, run_id: str) -> dict[str, Any]:
    """A run's ``evidence/metrics.json`` (test metrics, calibration, operating point, subgroups).

    Raises:
        TrackingError: If the run does not exist or has no metrics.json.
    """
    client, store = _client(uri)
    run_id = _full_run_id(client, store, run_id)
    _get_run(client, run_id, store)
    with tempfile.TemporaryDirectory(prefix="medvision-review-") as folder:
        path = _download(client, run_id, METRICS_ARTIFACT, folder)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TrackingError(f"run {run_id} {METRICS_ARTIFACT}", f"is not valid JSON ({exc})", None) from exc


def metric_history(
    uri: str | None, run_id: str, keys: Sequence[str] = ("val_auroc", "train_loss")
) -> dict[str, dict[str, np.ndarray]]:
    """Per-step values of metrics (the training curves): ``{key: {"step": int array, "value": float array}}``.

    A step logged more than once keeps its last value; a metric never logged gives empty arrays.

    Raises:
        TrackingError: If the run does not exist or MLflow refuses.
    """
    client, store = _client(uri)
    run_id = _full_run_id(client, store, run_id)
    _get_run(client, run_id, store)
    out: dict[str, dict[str, np.ndarray]] = {}
    with _mlflow_errors(f"run {run_id}", "read the metric history"):
        for key in keys:
            last: dict[int, tuple[int, float]] = {}
            for m in client.get_metric_history(run_id, key):
                if m.step not in last or m.timestamp >= last[m.step][0]:
                    last[int(m.step)] = (int(m.timestamp), float(m.value))
            steps = sorted(last)
            out[key] = {
                "step": np.array(steps, dtype=np.int64),
                "value": np.array([last[s][1] for s in steps], dtype=np.float64),
            }
    return out


def calibration_table(uri: str | None, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """ECE and Brier score before and after temperature scaling, one row per run, from metrics.json.

    Returns:
        ``{"run_id", "temperature", "ece_before", "ece_after", "brier_before", "brier_after"}`` rows.
    """
    rows = []
    for run_id in run_ids:
        ev = load_evidence(uri, run_id)
        rows.append(
            {
                "run_id": run_id,
                "temperature": _number(ev.get("temperature")),
                "ece_before": _number(ev.get("test_ece_uncalibrated")),
                "ece_after": _number(ev.get("test_ece")),
                "brier_before": _number(ev.get("test_brier_uncalibrated")),
                "brier_after": _number(ev.get("test_brier")),
            }
        )
    return rows


def subgroup_table(uri: str | None, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Subgroup AUROCs (sex, age band, view...) of each run, from metrics.json's ``subgroups``.

    Returns:
        ``{"run_id", "attribute", "group", "n", "n_pos", "auroc", "ci_low", "ci_high", "note"}`` rows.
    """
    rows = []
    for run_id in run_ids:
        for sub in load_evidence(uri, run_id).get("subgroups") or []:
            rows.append(
                {
                    "run_id": run_id,
                    "attribute": sub.get("attribute"),
                    "group": sub.get("group"),
                    "n": sub.get("n"),
                    "n_pos": sub.get("n_pos"),
                    "auroc": _number(sub.get("auroc")),
                    "ci_low": _number(sub.get("ci_low")),
                    "ci_high": _number(sub.get("ci_high")),
                    "note": sub.get("note") or "",
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------- compare


def _test_rows(pred: Mapping[str, np.ndarray], run_id: str) -> dict[str, int]:
    """study_hash -> row index of the test rows; duplicates are an error."""
    if "study_hash" not in pred:
        raise TrackingError(f"run {run_id} {PREDICTIONS_ARTIFACT}", "has no study_hash column", _TRAIN_FIX)
    keep = np.arange(pred["study_hash"].size)
    if "split" in pred:
        keep = keep[pred["split"] == "test"]
    index: dict[str, int] = {}
    for i in keep.tolist():
        key = str(pred["study_hash"][i])
        if key in index:
            raise TrackingError(
                f"run {run_id} {PREDICTIONS_ARTIFACT}",
                f"lists study_hash {key} twice, so its predictions cannot be paired with another run's",
                "log one prediction per study",
            )
        index[key] = i
    return index


def _scores(pred: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
    # The logged test_auroc is computed from the logits (no ties from saturated sigmoids).
    return ("logit", pred["logit"]) if "logit" in pred else ("probability", pred["probability"])


def compare_runs(
    uri: str | None, run_a: str, run_b: str, *, n_bootstraps: int = 2000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Paired comparison of two runs' test AUROCs on the same test studies.

    The two ``predictions.csv`` files are aligned by ``study_hash`` (sorted), then scored with
    :func:`medvision.metrics.delong_test` and :func:`medvision.metrics.paired_bootstrap` on the
    logits. The hashes are salted per output folder: runs trained with different
    ``train.output_dir`` (or experiment) cannot be aligned (see the module notes).

    Args:
        uri: The tracking URI.
        run_a: Run id of model A.
        run_b: Run id of model B.
        n_bootstraps: Paired bootstrap resamples.
        seed: Bootstrap seed.
        alpha: One minus the confidence level of the intervals.

    Returns:
        ``{"run_a", "run_b", "n", "n_pos", "auroc_a", "auroc_b", "auroc_diff", "ci_low", "ci_high",
        "p_value", "bootstrap_p_value", "delong_ci_low", "delong_ci_high", "z", "score",
        "n_bootstraps", "dataset_digest", "method"}``: ``auroc_diff`` is ``auroc_a - auroc_b``,
        ``ci_low``/``ci_high`` the paired bootstrap percentile interval of the difference,
        ``p_value`` DeLong's two-sided p-value, ``bootstrap_p_value`` the bootstrap test's.

    Raises:
        TrackingError: If a run does not exist or has no predictions, the two runs carry different
            ``dataset_digest`` tags, their test studies differ (or do not overlap at all: different
            salts), or a study's label differs between them.
        DataError: If the aligned test set holds one class only.
    """
    from medvision.metrics import delong_test, paired_bootstrap

    client, store = _client(uri)
    run_a, run_b = _full_run_id(client, store, run_a), _full_run_id(client, store, run_b)
    runs = {run_id: _get_run(client, run_id, store) for run_id in (run_a, run_b)}
    where = f"runs {run_a} and {run_b}"
    digest_a = runs[run_a].data.tags.get("dataset_digest")
    digest_b = runs[run_b].data.tags.get("dataset_digest")
    if digest_a and digest_b and digest_a != digest_b:
        raise TrackingError(
            where,
            f"were trained and tested on different data (dataset_digest {digest_a} vs {digest_b}),"
            " so a paired comparison is meaningless",
            "compare runs trained on the same manifest and split",
        )
    pred_a, pred_b = load_predictions(uri, run_a), load_predictions(uri, run_b)
    index_a, index_b = _test_rows(pred_a, run_a), _test_rows(pred_b, run_b)
    common = sorted(set(index_a) & set(index_b))
    if not common:
        raise TrackingError(
            where,
            f"share no test study: none of the {len(index_a)} study hashes of {run_a} is among the"
            f" {len(index_b)} of {run_b}; study hashes are salted per output folder, so runs trained into"
            " different train.output_dir folders cannot be paired",
            _SALT_FIX,
        )
    only_a, only_b = len(index_a) - len(common), len(index_b) - len(common)
    if only_a or only_b:
        raise TrackingError(
            where,
            f"were tested on different studies: {only_a} only in {run_a}, {only_b} only in {run_b},"
            f" {len(common)} in both",
            "compare runs evaluated on the same test split (same manifest, data.split settings and salt)",
        )
    rows_a = np.array([index_a[h] for h in common])
    rows_b = np.array([index_b[h] for h in common])
    y_a, y_b = pred_a["label"][rows_a], pred_b["label"][rows_b]
    if not np.array_equal(y_a, y_b):
        raise TrackingError(
            where,
            f"disagree on the label of {int((y_a != y_b).sum())} of {len(common)} test studies",
            "compare runs trained on the same labels",
        )
    score_name_a, scores_a = _scores(pred_a)
    score_name_b, scores_b = _scores(pred_b)
    score_name = score_name_a if score_name_a == score_name_b else "probability"
    if score_name == "probability":
        scores_a, scores_b = pred_a["probability"], pred_b["probability"]
    a, b = scores_a[rows_a], scores_b[rows_b]
    delong = delong_test(y_a, a, b, alpha=alpha)
    boot = paired_bootstrap(y_a, a, b, n_bootstraps=n_bootstraps, seed=seed, alpha=alpha)
    return {
        "run_a": run_a,
        "run_b": run_b,
        "n": len(common),
        "n_pos": int(y_a.sum()),
        "auroc_a": delong["auroc_a"],
        "auroc_b": delong["auroc_b"],
        "auroc_diff": delong["diff"],
        "ci_low": boot["ci_low"],
        "ci_high": boot["ci_high"],
        "p_value": delong["p_value"],
        "bootstrap_p_value": boot["p_value"],
        "delong_ci_low": delong["ci_low"],
        "delong_ci_high": delong["ci_high"],
        "z": delong["z"],
        "score": score_name,
        "n_bootstraps": boot["n_bootstraps"],
        "dataset_digest": digest_a or digest_b,
        "method": (
            f"paired on {len(common)} test studies aligned by study_hash, scored by {score_name};"
            f" p_value: DeLong test (two-sided); ci_low/ci_high and bootstrap_p_value: paired class-stratified"
            f" bootstrap, {boot['n_bootstraps']} resamples, seed {seed}, {100 * (1 - alpha):g}% percentile interval"
        ),
    }


# ---------------------------------------------------------------------------------------------- promote


def promote(
    uri: str | None, model_name: str, version: int | str, *, alias: str = "champion", force: bool = False
) -> dict[str, Any]:
    """Point ``alias`` at a model version, after checking its evidence.

    Refused (always, ``force`` or not) when the version's run has no finite ``test_auroc``: a model
    without test evidence is never promoted. Refused unless ``force`` when the alias already points
    at a version whose run has the same ``dataset_digest`` and a higher ``test_auroc``. When the
    digests differ (or one is missing) the AUROCs are not comparable; the promotion goes ahead and
    ``note`` says so.

    Args:
        uri: The tracking URI.
        model_name: The registered model's name.
        version: The version to promote.
        alias: The alias to set.
        force: Promote even when the version is worse than the current holder of ``alias``.

    Returns:
        ``{"name", "version", "alias", "previous_version", "test_auroc", "previous_test_auroc",
        "run_id", "dataset_digest", "forced", "changed", "note"}``; ``previous_version`` is the version
        the alias pointed at before (``None`` if none), ``forced`` whether ``force`` overrode a refusal.

    Raises:
        TrackingError: On a refusal, an unknown model or version, or when MLflow refuses.
    """
    from mlflow.exceptions import MlflowException

    client, store = _client(uri)
    text = str(version).strip()
    if not text.isdigit():
        raise TrackingError(f"models:/{model_name}", f"version {version!r} is not a version number", "pass e.g. 3")
    number = int(text)
    target = f"models:/{model_name}/{number}"
    with _mlflow_errors(target, "look up the model version"):
        try:
            found = client.get_model_version(model_name, str(number))
        except MlflowException as exc:
            if not _not_found(exc) and getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
                raise
            available = _available(client, model_name)
            raise TrackingError(
                target,
                f"there is no such model version in {redact_uri(store)}" + (f" ({available})" if available else ""),
                "list the runs and their versions with `medvision runs list`",
            ) from exc
    if str(found.status) != "READY":
        raise TrackingError(target, f"the model version is {found.status}, not READY", "wait, then promote it")
    if not found.run_id:
        raise TrackingError(
            target, "the model version was not made by a run, so its test evidence cannot be checked", None
        )
    run = _get_run(client, found.run_id, store)
    auroc = _number(run.data.metrics.get("test_auroc"))
    digest = run.data.tags.get("dataset_digest")
    if auroc is None or not math.isfinite(auroc):
        raise TrackingError(
            target,
            f"its run {found.run_id} has no test_auroc metric, so there is no test evidence to promote it on",
            "promote a version trained and tested by `medvision train` (its run logs test_auroc)",
        )

    previous = None
    with _mlflow_errors(f"models:/{model_name}@{alias}", "look up the alias"):
        try:
            previous = client.get_model_version_by_alias(model_name, alias)
        except MlflowException as exc:
            if not _not_found(exc) and getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
                raise
    previous_version = int(previous.version) if previous is not None else None
    previous_auroc: float | None = None
    previous_digest: str | None = None
    if previous is not None and previous.run_id:
        try:
            previous_run = _get_run(client, previous.run_id, store)
        except TrackingError:
            previous_run = None  # a deleted run: nothing to compare with
        if previous_run is not None:
            previous_auroc = _number(previous_run.data.metrics.get("test_auroc"))
            previous_digest = previous_run.data.tags.get("dataset_digest")

    forced, note = False, ""
    comparable = (
        previous is not None
        and previous_version != number
        and _finite(previous_auroc)
        and bool(digest)
        and digest == previous_digest
    )
    if comparable and previous_auroc is not None and auroc < previous_auroc:
        if not force:
            raise TrackingError(
                target,
                f"its test_auroc {auroc:.4f} (run {found.run_id}) is worse than that of the current {alias},"
                f" version {previous_version} ({previous_auroc:.4f}), on the same data (dataset_digest {digest})",
                "compare the two runs (medvision runs compare RUN_A RUN_B), or promote anyway with --force",
            )
        forced = True
        note = f"forced: worse than version {previous_version} on the same data"
    elif previous is not None and previous_version != number and not comparable:
        note = f"not compared with version {previous_version}: " + (
            "it has no test_auroc" if not _finite(previous_auroc) else "the runs were tested on different data"
        )

    changed = previous_version != number
    if changed:
        with _mlflow_errors(target, f"set the alias {alias!r}"):
            client.set_registered_model_alias(model_name, alias, str(number))
    return {
        "name": model_name,
        "version": number,
        "alias": alias,
        "previous_version": previous_version,
        "test_auroc": auroc,
        "previous_test_auroc": previous_auroc,
        "run_id": found.run_id,
        "dataset_digest": digest,
        "forced": forced,
        "changed": changed,
        "note": note or ("" if changed else f"version {number} already is {alias}"),
    }


# ---------------------------------------------------------------------------------------------- output


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values and NaN / infinities as ``None`` (valid JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float | np.floating):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]] | None = None,
    *,
    style: str = "text",
    digits: int = 3,
) -> str:
    """Rows as a table: ``style="text"`` (aligned columns) or ``"markdown"``.

    Args:
        rows: Dicts.
        columns: ``(key, header)`` pairs; default: every key of the first row.
        style: ``"text"`` or ``"markdown"``.
        digits: Decimals of floats; ``None``/NaN print as ``-``.
    """
    if columns is None:
        columns = [(key, key) for key in (rows[0] if rows else {})]
    headers = [header for _, header in columns]
    body = [[_cell(row.get(key), digits) for key, _ in columns] for row in rows]
    if style == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
        return "\n".join(lines)
    if style != "text":
        raise ValueError(f"style must be 'text' or 'markdown', not {style!r}")
    widths = [max([len(h), *(len(line[i]) for line in body)]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in body]
    return "\n".join(out)


def _auroc_ci(row: Mapping[str, Any]) -> str:
    if not _finite(row.get("test_auroc")):
        return "-"
    text = f"{row['test_auroc']:.3f}"
    if _finite(row.get("test_auroc_ci_low")) and _finite(row.get("test_auroc_ci_high")):
        text += f" [{row['test_auroc_ci_low']:.3f}, {row['test_auroc_ci_high']:.3f}]"
    return text


def _models_cell(row: Mapping[str, Any]) -> str:
    parts = []
    for m in row.get("models", []):
        aliases = f" @{','.join(m['aliases'])}" if m.get("aliases") else ""
        parts.append(f"{m['name']} v{m['version']}{aliases}")
    return "; ".join(parts) or "-"


def leaderboard_table(rows: Sequence[Mapping[str, Any]], *, style: str = "text") -> str:
    """The rows of :func:`list_runs` as a leaderboard (CPM and mAP columns only when a run has them)."""
    display = []
    for row in rows:
        display.append(
            {
                **row,
                "run_id": str(row.get("run_id", ""))[:8],
                # "random-init (ImageNet weights ... not available: ...)" -> "random-init"; `show` has it all.
                "weights_source": str(row.get("weights_source") or "").split(" (")[0],
                "auroc_ci": _auroc_ci(row),
                "model": _models_cell(row),
            }
        )
    columns = [
        ("run_id", "run"),
        ("run_name", "name"),
        ("status", "status"),
        ("backbone", "backbone"),
        ("weights_source", "weights"),
        ("dataset_digest", "data digest"),
        ("auroc_ci", "AUROC [95% CI]"),
        ("test_sensitivity", "sens"),
        ("test_specificity", "spec"),
        ("test_ece", "ECE"),
    ]
    for key, header in (("test_cpm", "CPM"), ("test_map", "mAP")):
        if any(_finite(r.get(key)) for r in rows):
            columns.append((key, header))
    columns.append(("model", "registered"))
    return format_table(display, columns, style=style)


def comparison_table(result: Mapping[str, Any], *, style: str = "text") -> str:
    """The result of :func:`compare_runs` as a short table and a summary line."""
    rows = [
        {"model": "A", "run": result["run_a"], "auroc": result["auroc_a"]},
        {"model": "B", "run": result["run_b"], "auroc": result["auroc_b"]},
    ]
    table = format_table(rows, [("model", "model"), ("run", "run"), ("auroc", "AUROC")], style=style, digits=4)
    summary = (
        f"AUROC A - B = {result['auroc_diff']:+.4f} "
        f"[{_cell(result['ci_low'], 4)}, {_cell(result['ci_high'], 4)}] (paired bootstrap)  "
        f"DeLong p = {result['p_value']:.4g}  bootstrap p = {result['bootstrap_p_value']:.4g}  "
        f"n = {result['n']} ({result['n_pos']} positive)"
    )
    return f"{table}\n\n{summary}"


def promotion_text(result: Mapping[str, Any]) -> str:
    """The result of :func:`promote` as one line."""
    before = f"version {result['previous_version']}" if result.get("previous_version") is not None else "no version"
    text = f"{result['name']}@{result['alias']} -> version {result['version']} (was {before}); test_auroc "
    text += _cell(result.get("test_auroc"), 4)
    if result.get("previous_test_auroc") is not None:
        text += f" (previous {_cell(result['previous_test_auroc'], 4)})"
    return text + (f"; {result['note']}" if result.get("note") else "")


def show_text(info: Mapping[str, Any]) -> str:
    """The result of :func:`show_run` as readable text."""
    lines = [
        f"run {info['run_id']}  {info.get('run_name') or ''}".rstrip(),
        f"  experiment {info.get('experiment')} ({info.get('experiment_id')})  status {info.get('status')}",
        f"  started {info.get('start_time') or '-'}  ended {info.get('end_time') or '-'}",
    ]
    for title, key in (("tags", "tags"), ("params", "params"), ("metrics", "metrics")):
        values = info.get(key) or {}
        lines.append(f"{title} ({len(values)}):")
        lines += [f"  {k} = {_cell(v, 4)}" for k, v in values.items()]
    lines.append(f"artifacts ({len(info.get('artifacts') or [])}):")
    lines += [f"  {path}" for path in info.get("artifacts") or []]
    models = info.get("models") or []
    lines.append(f"registered models ({len(models)}):")
    lines += [
        f"  {m['name']} v{m['version']}" + (f" @{','.join(m['aliases'])}" if m.get("aliases") else "") for m in models
    ]
    return "\n".join(lines)
