"""Helpers shared by the demo generators: seeded streams, UIDs, smooth fields, synthetic patients.

Every random draw in :mod:`medvision.demo` comes from a generator made by :func:`rng_for`, keyed by
the seed, a stream name and the indices of the thing being drawn (patient, study, volume). Keys
are independent, so the label of a study is drawn from a different stream than its headers, and
changing the number of patients does not change the studies that are generated in both runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydicom.uid import generate_uid

#: Values written into every demo header.
MANUFACTURER = "medvision-demo"
INSTITUTION = "Demo Hospital"

#: Range of synthetic acquisition dates (fixed, never the current date).
FIRST_DATE = dt.date(2015, 1, 1)
LAST_DATE = dt.date(2023, 12, 31)


def _key_to_int(key: int | str) -> int:
    """Map a stream key to a non-negative integer that is stable across processes."""
    if isinstance(key, int | np.integer):
        if key < 0:
            raise ValueError(f"stream keys must be non-negative, got {key}")
        return int(key)
    digest = hashlib.sha256(str(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def rng_for(seed: int, stream: str, *keys: int | str) -> np.random.Generator:
    """A generator for one named stream of one item, independent of every other stream.

    Args:
        seed: The data set seed.
        stream: Name of the stream (for example ``"cxr-label"``).
        *keys: Indices of the item (patient, study, ...).

    Returns:
        A ``numpy`` generator seeded from ``(seed, stream, *keys)``.
    """
    entropy = [_key_to_int(seed), _key_to_int(stream), *(_key_to_int(k) for k in keys)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def demo_uid(seed: int, *parts: object) -> str:
    """A DICOM UID derived from the seed and ``parts`` only (same inputs, same UID).

    Args:
        seed: The data set seed.
        *parts: What the UID names, e.g. ``("cxr", 3, 1, "study")``.

    Returns:
        A UID under pydicom's root, at most 64 characters.
    """
    text = "-".join(str(p) for p in parts)
    return str(generate_uid(entropy_srcs=[f"medvision-demo-{seed}-{text}"]))


@lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_coarse: int) -> np.ndarray:
    """Weights that interpolate ``n_coarse`` control values smoothly onto ``n_out`` samples."""
    x = np.arange(n_out, dtype=np.float64) / max(n_out - 1, 1)
    nodes = np.linspace(-0.15, 1.15, n_coarse)
    sigma = (nodes[1] - nodes[0]) * 0.8 if n_coarse > 1 else 1.0
    w = np.exp(-0.5 * ((x[:, None] - nodes[None, :]) / sigma) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    w.setflags(write=False)
    return w.astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: tuple[int, ...]) -> np.ndarray:
    """A smooth random field with zero mean and unit standard deviation.

    Random control values on a ``coarse`` grid are interpolated separably with Gaussian
    weights, which is much cheaper than filtering full-resolution noise.

    Args:
        rng: Source of the control values.
        shape: Output shape.
        coarse: Control grid shape (same length as ``shape``); larger means finer detail.

    Returns:
        A float32 array of ``shape``.
    """
    if len(shape) != len(coarse):
        raise ValueError(f"shape {shape} and coarse {coarse} differ in length")
    out = rng.standard_normal(coarse).astype(np.float32)
    # Contracting the leading axis each time appends the interpolated axis at the end, so after
    # one pass over all axes they are back in order and the result is contiguous.
    for n, m in zip(shape, coarse, strict=True):
        out = np.tensordot(out, _interp_matrix(int(n), int(m)), axes=([0], [1]))
    out -= out.mean()
    out /= out.std() + 1e-6
    return np.ascontiguousarray(out, dtype=np.float32)


def soft_step(z: np.ndarray) -> np.ndarray:
    """A smooth step from 0 (``z`` << 0) to 1 (``z`` >> 0); ``0.5`` at ``z == 0``."""
    return 0.5 * (1.0 + np.tanh(z))


def dicom_date(day: dt.date) -> str:
    """``YYYYMMDD``."""
    return day.strftime("%Y%m%d")


def random_date(rng: np.random.Generator, first: dt.date = FIRST_DATE, last: dt.date = LAST_DATE) -> dt.date:
    """A uniformly drawn date in ``[first, last]``."""
    return first + dt.timedelta(days=int(rng.integers(0, (last - first).days + 1)))


def random_time(rng: np.random.Generator) -> str:
    """A synthetic DICOM time ``HHMMSS`` during working hours."""
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def age_on(birth: dt.date, day: dt.date) -> int:
    """Whole years between ``birth`` and ``day``."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


@dataclass(frozen=True)
class SyntheticPatient:
    """Identity of a synthetic patient (nothing here is about a real person)."""

    patient_id: str
    patient_name: str
    sex: str
    birth_date: dt.date


def random_patient(
    rng: np.random.Generator, patient_id: str, patient_name: str, first_visit: dt.date
) -> SyntheticPatient:
    """A synthetic patient aged 18 to 90 at ``first_visit``.

    Args:
        rng: Source of sex, age and birth date.
        patient_id: Synthetic identifier such as ``"DEMO10001"``.
        patient_name: Synthetic DICOM person name such as ``"Demo^P0001"``.
        first_visit: Date of the first study.
    """
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(rng.integers(18, 91))
    birth = first_visit - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    return SyntheticPatient(patient_id, patient_name, sex, birth)


def format_ds(value: float, decimals: int = 6) -> str:
    """A decimal string (DICOM DS, at most 16 characters) for ``value``."""
    text = f"{round(float(value), decimals):.{decimals}f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{float(value):.10g}"
    return text
