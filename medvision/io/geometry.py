"""Series geometry: is a stack of DICOM slices (or of multi-frame frames) one regular volume?

A MONAI/NIfTI affine has a single slice step, so a stack is a volume only when its slices

* have the same size (Rows, Columns), SamplesPerPixel, PixelSpacing and ImageOrientationPatient;
* lie on one line along the slice normal (row cosine x column cosine): no in-plane shift, no gantry tilt;
* are equally spaced along that normal, with no two at one position.

What is refused, and how, follows dcm2niix and ITK: dcm2niix warns "Interslice distance varies in this
volume (incompatible with NIfTI format)" and writes an extra equalised copy, ITK's GDCM series reader warns
about non-uniform sampling; both otherwise stack the slices with one step, so that a missing slice silently
stretches the anatomy. medvision refuses instead, naming the slices and their positions, or, when asked
(``irregular="resample"``, ``--allow-irregular``, ``data.volume.irregular: resample``), resamples the stack
onto a regular grid along the normal and says so in the metadata.

Tolerance: two distances agree when they differ by at most ``ABS_TOL_MM + REL_TOL * reference``
(0.01 mm + 1 %), where the reference is the median slice step for positions along the normal and the
smallest pixel spacing for in-plane shifts: a 2 mm series tolerates 0.03 mm. This is stricter than
dcm2niix's 0.2 mm, so every series dcm2niix warns about is refused (or resampled) here too; the DS
strings of ImagePositionPatient carry far more precision than 0.01 mm.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from medvision.errors import GeometryError, HeaderError

#: Absolute part of the geometry tolerance, in mm.
ABS_TOL_MM = 0.01
#: Relative part of the geometry tolerance (of the median slice step or of the pixel spacing).
REL_TOL = 0.01
#: Direction cosines of two slices agree when they differ by at most this much (about 0.06 degrees).
ORIENTATION_TOL = 1e-3

Irregular = Literal["refuse", "resample"]
IRREGULAR_CHOICES: tuple[str, ...] = ("refuse", "resample")

_SPLIT_FIX = "split the series (or remove the odd slice) so that every slice has the same geometry"
_TILT_FIX = (
    "medvision does not correct gantry tilt: convert the series with dcm2niix, which writes a tilt-corrected "
    "copy (*_Tilt_*.nii), and load that NIfTI"
)


def tolerance(reference: float) -> float:
    """The largest difference in mm that still counts as equal, for distances of about ``reference`` mm."""
    return ABS_TOL_MM + REL_TOL * abs(float(reference))


def check_irregular(value: str, where: str = "irregular") -> str:
    """Validate the ``irregular`` option (``"refuse"`` or ``"resample"``)."""
    if value not in IRREGULAR_CHOICES:
        raise ValueError(f"{where} must be one of {', '.join(IRREGULAR_CHOICES)}, got {value!r}")
    return value


@dataclass(frozen=True)
class SliceInfo:
    """The geometry facts of one slice (a file of a series or a frame of a multi-frame file)."""

    name: str
    position: np.ndarray | None
    orientation: np.ndarray | None
    size: tuple[int, int]
    samples: int = 1
    pixel_spacing: tuple[float, float] | None = None


@dataclass
class StackGeometry:
    """A checked stack: acquisition order along the normal and the regular output grid.

    ``order`` sorts the input slices along the normal; ``positions`` and ``along`` are the sorted acquired
    positions (LPS mm) and their coordinates on the normal. The output volume has ``n_out`` slices, the
    first at ``origin``, each ``step`` (LPS mm vector) from the previous one. ``resampled`` is true when
    the output grid is not the acquired one (``irregular="resample"``).
    """

    order: np.ndarray
    positions: np.ndarray
    along: np.ndarray
    normal: np.ndarray
    step: np.ndarray
    n_out: int
    resampled: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def origin(self) -> np.ndarray:
        return self.positions[0]

    @property
    def spacing(self) -> float:
        """Slice spacing in mm: the length of ``step``, the same number the affine carries."""
        return float(np.linalg.norm(self.step))


def _fmt_position(position: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in position) + ")"


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def check_alike(where: str | Path, slices: list[SliceInfo]) -> None:
    """Refuse a stack whose slices differ in size, samples per pixel, orientation or pixel spacing.

    The odd slice is the one that differs from the most common value; it is named with the element.

    Raises:
        GeometryError: the slices cannot be stacked into one volume.
        HeaderError: a slice lacks ImageOrientationPatient or ImagePositionPatient.
    """
    if not slices:
        return
    for info in slices:
        if info.orientation is None:
            raise HeaderError(
                where,
                f"(0020,0037) ImageOrientationPatient is missing in slice {info.name}",
                "the slices cannot be stacked without it; load the files one by one or re-export the series",
            )
        if info.position is None:
            raise HeaderError(
                where,
                f"(0020,0032) ImagePositionPatient is missing in slice {info.name}",
                "the slices cannot be stacked without it; re-export the series with its geometry tags",
            )
    n = len(slices)
    size = Counter(s.size for s in slices).most_common(1)[0][0]
    odd = [s for s in slices if s.size != size]
    if odd:
        r, c = odd[0].size
        raise GeometryError(
            where,
            f"(0028,0010) Rows / (0028,0011) Columns: slice {odd[0].name} is {r}x{c}, "
            f"{n - len(odd)} other slice(s) {size[0]}x{size[1]}",
            _SPLIT_FIX,
        )
    samples = Counter(s.samples for s in slices).most_common(1)[0][0]
    odd = [s for s in slices if s.samples != samples]
    if odd:
        def kind(k: int) -> str:
            return "colour" if k == 3 else "grey" if k == 1 else f"{k} samples"

        raise GeometryError(
            where,
            f"(0028,0002) SamplesPerPixel: slice {odd[0].name} has {odd[0].samples} ({kind(odd[0].samples)}), "
            f"{n - len(odd)} other slice(s) {samples} ({kind(samples)})",
            "remove the odd slice (e.g. a colour screenshot stored in the series) or split the series",
        )
    orientations = [np.asarray(s.orientation, dtype=np.float64) for s in slices]
    ref_o = _most_common_vector(orientations, ORIENTATION_TOL)
    for info, o in zip(slices, orientations, strict=True):
        if np.max(np.abs(o - ref_o)) > ORIENTATION_TOL:
            normal_a, normal_b = np.cross(o[:3], o[3:]), np.cross(ref_o[:3], ref_o[3:])
            raise GeometryError(
                where,
                f"(0020,0037) ImageOrientationPatient of slice {info.name} is tilted "
                f"{_angle_deg(normal_a, normal_b):.2f} degrees from the other slices' "
                f"({', '.join(f'{v:.4g}' for v in o)} vs {', '.join(f'{v:.4g}' for v in ref_o)})",
                _SPLIT_FIX,
            )
    spacings = [s.pixel_spacing for s in slices]
    if any(sp is not None for sp in spacings):
        present = [np.asarray(sp, dtype=np.float64) for sp in spacings if sp is not None]
        ref_s = _most_common_vector(present, 0.0)
        # Pixel spacing is multiplied by up to Columns (512+): it must agree to 0.01 %, not 1 %.
        tol = 1e-5 + 1e-4 * float(np.max(ref_s))
        for info in slices:
            sp = info.pixel_spacing
            if sp is None or np.max(np.abs(np.asarray(sp) - ref_s)) > tol:
                shown = "absent" if sp is None else f"{sp[0]:g} x {sp[1]:g} mm"
                raise GeometryError(
                    where,
                    f"(0028,0030) PixelSpacing of slice {info.name} is {shown}, "
                    f"the other slices {ref_s[0]:g} x {ref_s[1]:g} mm",
                    _SPLIT_FIX,
                )


def _most_common_vector(vectors: list[np.ndarray], tol: float) -> np.ndarray:
    """The vector that most others agree with (within ``tol``); the first on ties. Vectorised: a series has
    thousands of slices."""
    stacked = np.stack(vectors)
    agree = np.max(np.abs(stacked - stacked[0]), axis=1) <= tol
    if 2 * int(agree.sum()) > len(stacked):
        return stacked[0]
    best, best_count = stacked[0], -1
    for candidate in np.unique(stacked, axis=0):
        count = int((np.max(np.abs(stacked - candidate), axis=1) <= tol).sum())
        if count > best_count:
            best, best_count = candidate, count
    return best


def check_stack(
    where: str | Path,
    names: list[str],
    positions: np.ndarray,
    orientation: np.ndarray,
    *,
    pixel_spacing: tuple[float, float] | None = None,
    irregular: str = "refuse",
    gantry_tilt: float | None = None,
) -> StackGeometry:
    """Sort slices along the normal and check that they form a regular grid (module docstring).

    Args:
        where: the folder or file, for errors.
        names: one name per slice (file name or ``frame k``), in input order.
        positions: (N, 3) ImagePositionPatient of each slice, LPS mm, N >= 2.
        orientation: the six direction cosines shared by the slices.
        pixel_spacing: (row, column) spacing in mm, for the in-plane tolerance.
        irregular: ``"refuse"`` (default) or ``"resample"`` uneven steps and gaps onto a regular grid.
        gantry_tilt: (0018,1120) GantryDetectorTilt in degrees, when the header has it.

    Returns:
        The :class:`StackGeometry`; ``step`` is the same regular step for the affine and ``spacing``.

    Raises:
        GeometryError: duplicate positions, gantry tilt or an in-plane shift (always), a gap or uneven steps
            (unless resampling), non-finite positions.

    Example:
        >>> geo = check_stack("s", ["a", "b", "c"], np.array([[0, 0, 4.0], [0, 0, 0.0], [0, 0, 2.0]]),
        ...                   np.array([1.0, 0, 0, 0, 1, 0]))
        >>> geo.order.tolist(), geo.spacing
        ([1, 2, 0], 2.0)
    """
    check_irregular(irregular)
    positions = np.asarray(positions, dtype=np.float64)
    n = len(positions)
    if n < 2:
        raise ValueError("check_stack needs at least two slices")
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if len(bad):
        raise HeaderError(
            where,
            f"(0020,0032) ImagePositionPatient of slice {names[bad[0]]} is not finite "
            f"({', '.join(str(v) for v in positions[bad[0]])})",
            "re-export the series; the slice cannot be placed",
        )
    orientation = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    if not math.isfinite(norm) or norm < 1e-6:
        raise HeaderError(
            where,
            "(0020,0037) ImageOrientationPatient has parallel or zero row and column cosines",
            "re-export the series with a valid orientation",
        )
    normal = normal / norm
    along_in = positions @ normal
    order = np.argsort(along_in, kind="stable")
    pos = positions[order]
    along = along_in[order]
    sorted_names = [names[i] for i in order]
    steps = np.diff(along)

    def describe(i: int) -> str:  # slice i (0-based, sorted) as the user can find it
        return f"{sorted_names[i]} at {_fmt_position(pos[i])}"

    # Duplicates: echoes, time points or repeats stacked as one series. Never resampled.
    dup = np.flatnonzero(steps <= ABS_TOL_MM)
    if len(dup):
        i = int(dup[0])
        raise GeometryError(
            where,
            f"slices {i + 1} and {i + 2} along the normal ({sorted_names[i]}, {sorted_names[i + 1]}) share "
            f"one position {_fmt_position(pos[i])}"
            + (f" ({len(dup)} such pairs)" if len(dup) > 1 else "")
            + ": echoes, time points or repeats mixed in one series",
            "split the series by EchoNumbers/TemporalPositionIdentifier/AcquisitionNumber before loading",
        )
    median = float(np.median(steps))
    tol_along = tolerance(median)
    _check_line(where, pos, along, normal, sorted_names, pixel_spacing or (median, median), gantry_tilt)

    # Equal steps along the normal.
    problem = None
    off = np.flatnonzero(np.abs(steps - median) > tol_along)
    if len(off):
        i = int(off[0])
        step = float(steps[i])
        k = round(step / median)
        if k >= 2 and abs(step - k * median) <= tol_along * k:
            what = "a slice is missing" if k == 2 else f"{k - 1} slices are missing"
        else:
            what = "uneven slice spacing"
        more = f" ({len(off)} irregular steps in all)" if len(off) > 1 else ""
        problem = (
            f"slices {i + 1} and {i + 2} along the normal ({describe(i)}, {describe(i + 1)}) are {step:.4g} mm apart, "
            f"the others {median:.4g} mm{more}: {what}"
        )
    else:
        mean = (along[-1] - along[0]) / (n - 1)
        drift = np.abs(along - (along[0] + np.arange(n) * mean))
        if float(drift.max()) > tol_along:
            i = int(np.argmax(drift))
            problem = (
                f"slice {i + 1} along the normal ({describe(i)}) is {float(drift.max()):.3g} mm off the regular "
                f"{mean:.4g} mm grid of the series: uneven slice spacing"
            )
    if problem is None:
        step_vec = (pos[-1] - pos[0]) / (n - 1)
        return StackGeometry(order, pos, along, normal, step_vec, n)
    if irregular != "resample":
        raise GeometryError(
            where,
            problem,
            "re-export the complete series, or resample it onto a regular grid "
            "(--allow-irregular, data.volume.irregular: resample)",
        )
    # The grid spans the first to the last acquired slice, with the step nearest the median that fits a whole
    # number of times, so that neither end of the acquired stack is dropped.
    extent = float(along[-1] - along[0])
    n_out = max(int(round(extent / median)), 1) + 1
    spacing = extent / (n_out - 1)
    note = (
        f"resampled along the slice normal onto a regular {spacing:.4g} mm grid "
        f"({n} acquired slices -> {n_out}; linear between the two nearest slices) because {problem}"
    )
    return StackGeometry(order, pos, along, normal, normal * spacing, n_out, resampled=True, notes=[note])


def _check_line(
    where: str | Path,
    pos: np.ndarray,
    along: np.ndarray,
    normal: np.ndarray,
    names: list[str],
    pixel_spacing: tuple[float, float],
    gantry_tilt: float | None,
) -> None:
    """Refuse slices that are not on one line along the normal: gantry tilt (a shear) or a shifted slice."""
    tol = tolerance(min(pixel_spacing))
    offsets = pos - np.outer(along, normal)  # in-plane part of each position
    span = along[-1] - along[0]
    shear = (offsets[-1] - offsets[0]) / span
    fitted = offsets[0] + np.outer(along - along[0], shear)
    residual = np.linalg.norm(offsets - fitted, axis=1)
    total = float(np.linalg.norm(offsets[-1] - offsets[0]))
    if total > tol and float(residual.max()) <= tol:
        angle = math.degrees(math.atan(float(np.linalg.norm(shear))))
        stated = (
            f"(0018,1120) GantryDetectorTilt is {gantry_tilt:g} degrees"
            if gantry_tilt
            else "(0018,1120) GantryDetectorTilt is " + ("0" if gantry_tilt == 0 else "absent")
        )
        raise GeometryError(
            where,
            f"{stated} and the slice positions run at {angle:.2f} degrees to the slice normal "
            f"(from {_fmt_position(pos[0])} to {_fmt_position(pos[-1])}): a sheared, gantry-tilted stack",
            _TILT_FIX,
        )
    centre = np.median(offsets, axis=0)
    shift = np.linalg.norm(offsets - centre, axis=1)
    if float(shift.max()) > tol:
        i = int(np.argmax(shift))
        raise GeometryError(
            where,
            f"slice {i + 1} along the normal ({names[i]} at {_fmt_position(pos[i])}) is shifted "
            f"{float(shift[i]):.3g} mm in-plane off the line of the other slices",
            "the series mixes stacks or holds a moved slice: split it, or remove the odd slice",
        )


def resample_stack(stack: np.ndarray, geometry: StackGeometry, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Resample a sorted stack (slices first) onto ``geometry``'s regular grid along the normal.

    Each output slice is the linear interpolation of the two acquired slices around it (by their position
    on the normal); an output slice at an acquired position is that slice. Written by hand because the
    interpolation is along one axis at irregular sample positions, which scipy's/MONAI's grid resamplers
    do not take; it is ``numpy.interp`` applied slice-wise.
    """
    if not geometry.resampled:
        return stack
    along = geometry.along
    targets = along[0] + np.arange(geometry.n_out) * float(np.linalg.norm(geometry.step))
    out = np.empty((geometry.n_out, *stack.shape[1:]), dtype=dtype)
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
    for j, (t, hi) in enumerate(zip(targets, upper, strict=True)):
        lo = hi - 1
        w = float(np.clip((t - along[lo]) / (along[hi] - along[lo]), 0.0, 1.0))
        if w <= 1e-9:
            out[j] = stack[lo]
        elif w >= 1 - 1e-9:
            out[j] = stack[hi]
        else:
            np.add(stack[lo] * (1.0 - w), stack[hi] * w, out=out[j], casting="unsafe")
    return out
