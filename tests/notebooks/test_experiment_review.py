"""notebooks/experiment_review.ipynb runs top to bottom against a store filled by two short real training runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from nbclient import NotebookClient

from tests.tracking.test_review import MODEL, train_two_runs

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "experiment_review.ipynb"
EXPERIMENT = "notebook-review"
_MARK = "REVIEW-TABLES:"
_KERNEL = "medvision-review-test"


def _kernel_for_this_python(root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec that starts ipykernel in this interpreter (the venv), first on JUPYTER_PATH."""
    spec = root / "kernels" / _KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": _KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    return _KERNEL


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    tagged = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one code cell is tagged 'parameters'"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert tagged[0] is first_code, "the parameters cell is the first code cell"
    return tagged[0]


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            assert "import mlflow" not in cell.source and "MlflowClient" not in cell.source
    source = _parameters_cell(nb).source
    for line in ("TRACKING_URI = None", 'EXPERIMENT = "pneumonia-demo"', 'MODEL_NAME = "pneumonia-classifier"'):
        assert line in source
    assert "PROMOTE = True" in source


def test_notebook_runs_top_to_bottom_and_promotes_the_best_run(tmp_path, monkeypatch) -> None:
    uri, results = train_two_runs(tmp_path / "store", EXPERIMENT)
    client = MlflowClient(tracking_uri=uri)
    with pytest.raises(MlflowException, match="alias"):
        client.get_model_version_by_alias(MODEL, "champion")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    _parameters_cell(nb).source = (
        f"TRACKING_URI = {uri!r}\nEXPERIMENT = {EXPERIMENT!r}\nMODEL_NAME = {MODEL!r}\nPROMOTE = True\n"
    )
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import json as _json\n"
            f"print({_MARK!r} + _json.dumps(review.jsonable("
            "{'leaderboard': leaderboard, 'comparison': comparison, 'promotion': promotion})))"
        )
    )
    kernel = _kernel_for_this_python(tmp_path / "jupyter", monkeypatch)
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    NotebookClient(nb, timeout=120, kernel_name=kernel, resources={"metadata": {"path": str(run_dir)}}).execute()

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the ROC overlay and the training curves
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    tables = json.loads(text.split(_MARK, 1)[1])

    leaderboard = tables["leaderboard"]
    assert len(leaderboard) == 2
    logged = {r.run_id: client.get_run(r.run_id).data.metrics["test_auroc"] for r in results}
    assert {row["run_id"]: row["test_auroc"] for row in leaderboard} == logged

    comparison = tables["comparison"]
    best, second = leaderboard[0], leaderboard[1]
    assert (comparison["run_a"], comparison["run_b"]) == (best["run_id"], second["run_id"])
    assert comparison["auroc_diff"] == pytest.approx(logged[best["run_id"]] - logged[second["run_id"]], abs=1e-12)
    assert 0.0 <= comparison["p_value"] <= 1.0

    promotion = tables["promotion"]
    best_version = next(r.model_version for r in results if r.run_id == best["run_id"])
    assert promotion["version"] == int(best_version) and promotion["alias"] == "champion"
    assert promotion["previous_version"] is None
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert int(champion.version) == int(best_version) and champion.run_id == best["run_id"]
