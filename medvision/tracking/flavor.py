"""The ``medvision`` MLflow flavour: a model's weights as one safetensors file, its architecture in the metadata.

Why safetensors. A pickled PyTorch model (``torch.save(model)``, MLflow's pytorch flavour with
``serialization_format="pickle"``, read back by ``torch.load(..., weights_only=False)``) runs whatever
code its file names the moment it is opened: whoever can register a model version could run code on
every machine that loads it. A safetensors file is a JSON header and raw tensor bytes, read by a parser
that executes nothing (:func:`safetensors.torch.load_file`). The architecture is not in the file:
medvision rebuilds it from the model's metadata (``medvision_architecture``) with
:func:`~medvision.models.create_model` or :func:`~medvision.models.detector.create_detector` and loads
the weights strictly. Unlike MLflow's ``torch.export`` format it keeps the medvision ``Classifier``
(Grad-CAM needs its ``feature_layer``) and works for the detector, whose torchvision post-processing
cannot be exported.

A logged model (``runs:/RUN_ID/model``, registered as ``models:/NAME/VERSION``)::

    MLmodel             flavours ``medvision`` (format, weights, sha256) and ``python_function``;
                        signature; metadata (with medvision_architecture)
    model.safetensors   the state dict
    input_example.json, serving_input_example.json, requirements.txt, conda.yaml, python_env.yaml

The sha256 in ``MLmodel`` catches a weights file replaced or damaged after logging. It does not make a
model trustworthy (whoever can write the file can write the hash); what keeps loading safe is that
medvision reads nothing but the safetensors file. A model in the old format (MLflow's ``pytorch``
flavour, pickle or ``torch.export``) is refused with a :class:`~medvision.errors.ModelFormatError`
before anything is downloaded.

Serving: the ``python_function`` flavour's loader is this module (:func:`_load_pyfunc`), so
``mlflow models serve -m models:/NAME/VERSION`` works where medvision is installed; it pickles nothing.

Example:
    >>> from mlflow.models import Model  # doctest: +SKIP
    >>> Model.log(artifact_path=None, name="model", flavor=medvision.tracking.flavor,  # doctest: +SKIP
    ...           medvision_model=classifier, metadata={"medvision_architecture": {...}})
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvision.errors import ModelFormatError, TrackingError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from mlflow.models import Model

__all__ = [
    "ARCHITECTURE_KEY",
    "FLAVOR_NAME",
    "FORMAT",
    "REGISTER_AGAIN",
    "WEIGHTS_FILE",
    "flavor_conf",
    "read_weights",
    "save_model",
]

#: The flavour's name in ``MLmodel``.
FLAVOR_NAME = "medvision"
#: The only weights format the flavour knows.
FORMAT = "safetensors"
#: The weights file inside the model's artifact folder.
WEIGHTS_FILE = "model.safetensors"
#: Metadata key under which the model's architecture is recorded (what :func:`_rebuild`
#: reads).
ARCHITECTURE_KEY = "medvision_architecture"
#: The fix of every refused model.
REGISTER_AGAIN = (
    "register it again: retrain with `medvision train CONFIG` (tracking.register_as set), which stores the weights"
    " as safetensors"
)

_WEIGHTS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file (hashlib reads it in blocks)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def default_requirements() -> list[str]:
    """What the ``python_function`` flavour needs: torch, safetensors and medvision (its loader)."""
    import medvision

    # torch.__version__ carries a local build tag (e.g. "2.14.1+cu130") that the installed
    # distribution's version ("2.14.1") does not; pinning it would make every load warn.
    return [
        f"torch=={importlib.metadata.version('torch')}",
        f"safetensors=={importlib.metadata.version('safetensors')}",
        f"medvision=={medvision.__version__}",
    ]


# ---------------------------------------------------------------------------------------------- saving


def save_model(
    medvision_model: torch.nn.Module,
    path: str | os.PathLike[str],
    mlflow_model: Model | None = None,
    *,
    signature: Any = None,
    input_example: np.ndarray | None = None,
    metadata: Mapping[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
    **_ignored: Any,
) -> None:
    """Write ``medvision_model`` as an MLflow model in the ``medvision`` flavour to the folder ``path``.

    Called by ``mlflow.models.Model.log(..., flavor=medvision.tracking.flavor)``, which passes its own
    keyword arguments on (hence ``**_ignored``); use :func:`~medvision.tracking.registry.log_classifier`.

    Args:
        medvision_model: The module; its state dict is written (on the CPU) to ``model.safetensors``.
        path: A new or empty folder.
        mlflow_model: The ``Model`` being logged (its metadata must hold ``medvision_architecture``).
        signature: The model signature.
        input_example: An input batch stored with the model.
        metadata: Metadata, when ``mlflow_model`` does not carry it yet.
        pip_requirements: The model's requirements (default: :func:`default_requirements`).

    Raises:
        ModelFormatError: Without an architecture in the metadata (the model could not be rebuilt).
    """
    import safetensors
    import safetensors.torch
    import yaml
    from mlflow import pyfunc
    from mlflow.models import Model
    from mlflow.models.utils import _save_example
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _CONSTRAINTS_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _process_pip_requirements,
        _PythonEnv,
    )
    from mlflow.utils.file_utils import get_total_file_size

    import medvision

    folder = Path(path).resolve()
    if folder.exists() and any(folder.iterdir()):
        raise TrackingError(folder, "is not empty", "save the model to a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    if mlflow_model is None:
        mlflow_model = Model()
    if metadata is not None:
        mlflow_model.metadata = {**(mlflow_model.metadata or {}), **dict(metadata)}
    architecture = (mlflow_model.metadata or {}).get(ARCHITECTURE_KEY)
    if not isinstance(architecture, Mapping) or not architecture.get("backbone"):
        raise ModelFormatError(
            type(medvision_model).__name__,
            f"the model's metadata has no {ARCHITECTURE_KEY}: it could not be rebuilt from its weights",
            "log a medvision Classifier or SliceDetector with medvision.tracking.log_classifier",
        )

    # Detached CPU copies: safetensors refuses tensors that share memory, and a GPU model stays where it is.
    state = {
        key: value.detach().to("cpu", copy=True).contiguous() for key, value in medvision_model.state_dict().items()
    }
    weights = folder / WEIGHTS_FILE
    safetensors.torch.save_file(state, str(weights), metadata={"format": "pt"})
    digest = sha256_file(weights)

    if signature is not None:
        mlflow_model.signature = signature
    if input_example is not None:
        _save_example(mlflow_model, input_example, str(folder))
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        format=FORMAT,
        weights=WEIGHTS_FILE,
        sha256=digest,
        architecture_key=ARCHITECTURE_KEY,
        medvision_version=medvision.__version__,
        torch_version=importlib.metadata.version("torch"),
        safetensors_version=safetensors.__version__,
    )
    pyfunc.add_to_model(
        mlflow_model,
        loader_module=__name__,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
    )
    if size := get_total_file_size(str(folder)):
        mlflow_model.model_size_bytes = size
    mlflow_model.save(str(folder / "MLmodel"))

    requirements = list(pip_requirements) if pip_requirements is not None else default_requirements()
    conda_env, pip_reqs, constraints = _process_pip_requirements(requirements)
    with open(folder / _CONDA_ENV_FILE_NAME, "w") as fh:
        yaml.safe_dump(conda_env, stream=fh, default_flow_style=False)
    if constraints:
        (folder / _CONSTRAINTS_FILE_NAME).write_text("\n".join(constraints))
    (folder / _REQUIREMENTS_FILE_NAME).write_text("\n".join(pip_reqs))
    _PythonEnv.current().to_yaml(str(folder / _PYTHON_ENV_FILE_NAME))


# ---------------------------------------------------------------------------------------------- loading


def flavor_conf(flavors: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """The ``medvision`` flavour's settings of a logged model, checked; refuses any other model.

    Args:
        flavors: The ``flavors`` of the model's ``MLmodel`` (``mlflow.models.get_model_info(uri).flavors``).
        where: The model URI, for messages.

    Returns:
        ``{"format": "safetensors", "weights": "model.safetensors", "sha256": ..., ...}``.

    Raises:
        ModelFormatError: A model in the old format (MLflow's ``pytorch`` flavour), a model that medvision
            did not log, or a ``medvision`` flavour with another format or a bad weights name or hash.
    """
    flavors = dict(flavors or {})
    conf = flavors.get(FLAVOR_NAME)
    if conf is None:
        if "pytorch" in flavors:
            raise ModelFormatError(
                where,
                "was registered in the old format (MLflow's pytorch flavour: a pickled or torch.export file)."
                " medvision no longer loads it, since opening a pickle can run any code it carries",
                REGISTER_AGAIN,
            )
        listed = ", ".join(sorted(flavors)) or "none"
        raise ModelFormatError(
            where, f"is not a medvision model (it has no {FLAVOR_NAME!r} flavour; flavours: {listed})", REGISTER_AGAIN
        )
    if not isinstance(conf, Mapping):
        raise ModelFormatError(where, f"has a malformed {FLAVOR_NAME!r} flavour in its MLmodel", REGISTER_AGAIN)
    conf = dict(conf)
    if conf.get("format") != FORMAT:
        raise ModelFormatError(
            where, f"stores its weights as {conf.get('format')!r}; medvision reads {FORMAT!r} only", REGISTER_AGAIN
        )
    name = str(conf.get("weights", ""))
    if not _WEIGHTS_NAME.fullmatch(name):
        raise ModelFormatError(
            where, f"names its weights file {name!r}, not a plain '*.safetensors' file name", REGISTER_AGAIN
        )
    if not _SHA256.fullmatch(str(conf.get("sha256", ""))):
        raise ModelFormatError(where, "records no valid sha256 of its weights file in its MLmodel", REGISTER_AGAIN)
    return conf


def read_weights(file: str | os.PathLike[str], conf: Mapping[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The state dict in a downloaded weights file, after checking it against the flavour's sha256.

    Only :func:`safetensors.torch.load_file` reads the file; nothing is unpickled.

    Args:
        file: The downloaded weights file.
        conf: What :func:`flavor_conf` returned.
        where: The model URI, for messages.

    Returns:
        Parameter and buffer names to CPU tensors.

    Raises:
        ModelFormatError: The file is missing, does not match the recorded sha256, or is not a safetensors file.
    """
    import safetensors
    import safetensors.torch

    path = Path(file)
    if not path.is_file():
        raise ModelFormatError(where, f"has no weights file {conf.get('weights')!r}", REGISTER_AGAIN)
    digest = sha256_file(path)
    if digest != conf["sha256"]:
        raise ModelFormatError(
            where,
            f"its weights file {path.name} does not match the sha256 recorded in its MLmodel"
            f" (recorded {str(conf['sha256'])[:12]}..., file {digest[:12]}...): it was replaced or damaged"
            " after the model was logged, and is not loaded",
            REGISTER_AGAIN,
        )
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(
            where, f"its weights file {path.name} is not a valid safetensors file ({exc})", REGISTER_AGAIN
        ) from exc


class _PyFuncModel:
    """The ``python_function`` form: ``predict(batch)`` runs the rebuilt module on a float32 batch."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module.eval()

    def get_raw_model(self) -> torch.nn.Module:
        return self.module

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        import numpy as np
        import torch

        values = data.to_numpy() if hasattr(data, "to_numpy") else data
        batch = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        with torch.no_grad():
            out = self.module(batch)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.detach().cpu().numpy()


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> _PyFuncModel:
    """MLflow's ``python_function`` loader: ``path`` is the model's folder (the flavour sets no ``data``)."""
    from mlflow.models import Model


    mlmodel = Model.load(os.path.join(path, "MLmodel"))
    conf = flavor_conf(mlmodel.flavors, path)
    architecture = (mlmodel.metadata or {}).get(ARCHITECTURE_KEY)
    if not isinstance(architecture, Mapping) or not architecture.get("backbone"):
        raise ModelFormatError(path, f"its MLmodel metadata has no {ARCHITECTURE_KEY}", REGISTER_AGAIN)
    state = read_weights(Path(path) / str(conf["weights"]), conf, path)
    return _PyFuncModel(_rebuild(architecture, state, path))


def _rebuild(architecture: Mapping[str, Any], state: Mapping[str, torch.Tensor], uri: str) -> torch.nn.Module:
    """A medvision Classifier (or SliceDetector) built from ``architecture`` with the weights ``state``, strictly."""
    from medvision.models import create_model
    from medvision.models.detector import DETECTOR_CLASS, create_detector
    from medvision.models.weights import load_state_dict_exact

    if architecture.get("class") == DETECTOR_CLASS:
        kwargs = {k: v for k, v in architecture.items() if k not in ("class", "backbone", "weights", "progress")}
        try:
            detector = create_detector(str(architecture["backbone"]), weights="none", progress=False, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(uri, f"its {ARCHITECTURE_KEY} cannot be rebuilt ({exc})", REGISTER_AGAIN) from exc
        load_state_dict_exact(
            detector,
            state,
            where=uri,
            what=f"{architecture['backbone']} 2.5D detector recorded in the model's metadata",
            fix=REGISTER_AGAIN,
        )
        detector.weights_source = f"mlflow:{uri}"
        return detector.eval()
    model = create_model(
        str(architecture["backbone"]),
        weights="none",
        in_channels=int(architecture.get("in_channels", 1)),
        num_classes=int(architecture.get("num_classes", 1)),
        first_conv=architecture.get("first_conv", "sum"),
        drop_rate=float(architecture.get("drop_rate", 0.0)),
    )
    load_state_dict_exact(
        model,
        state,
        where=uri,
        what=f"{architecture['backbone']} classifier recorded in the model's metadata",
        fix=REGISTER_AGAIN,
    )
    model.weights_source = f"mlflow:{uri}"
    return model.eval()
