"""Typed errors. Each names the file or key, the reason and the fix.

The CLI turns any :class:`MedvisionError` into one line on stderr
(``error: <where>: <reason>``) and exit status 3 (see :mod:`medvision.cli` for every exit code).
"""

from __future__ import annotations

from pathlib import Path


class MedvisionError(Exception):
    """Base class: ``where`` (a path or a config key), ``reason`` and ``fix``."""

    def __init__(self, where: str | Path, reason: str | None = None, fix: str | None = None) -> None:
        # A single argument is a whole message: that is how PyTorch's DataLoader workers rebuild an
        # exception (``type(exc)(message)``), and the message must survive that trip.
        self.where = str(where) if reason is not None else ""
        self.reason = reason if reason is not None else str(where)
        self.fix = fix
        super().__init__(self.one_line())

    def __reduce__(self) -> tuple:
        return (type(self), (self.where, self.reason, self.fix)) if self.where else (type(self), (self.reason,))

    def one_line(self) -> str:
        """The message as one line: ``<where>: <reason>[; <fix>]``."""
        text = f"{self.where}: {self.reason}" if self.where else self.reason
        if self.fix:
            text += f"; {self.fix}"
        return " ".join(text.split())


class InputError(MedvisionError):
    """A file or folder that cannot be read as a scan."""


class UnsupportedFormatError(InputError):
    """A file whose format or transfer syntax medvision cannot decode."""


class SizeLimitError(InputError):
    """A header that asks for more pixels than the configured limit."""


class SeriesSelectionError(InputError):
    """A folder that holds several DICOM series, or none."""


class HeaderError(InputError):
    """A header element or field that is missing, malformed, non-finite or invalid.

    The reason names the element: a DICOM tag and keyword (``(0028,1053) RescaleSlope``) or a NIfTI
    header field (``srow_x``, ``pixdim[1]``).
    """


class CorruptDataError(InputError):
    """Pixel or voxel bytes that are truncated, corrupt or fail their checksum (gzip CRC, deflate)."""


class GeometryError(InputError):
    """Image geometry that is invalid or irregular: a missing slice, uneven steps, tilt, mixed sizes."""


class SequenceError(InputError):
    """A multi-sequence volume that lacks the sequences (channels) a model expects."""


class ConfigError(MedvisionError):
    """A configuration key with a bad or unknown value."""


class DataError(MedvisionError):
    """A datalist, label or split that cannot be used."""


class WeightsError(MedvisionError):
    """Model weights that are missing, corrupt or do not match the architecture."""


class TrackingError(MedvisionError):
    """The MLflow tracking store cannot be reached or refuses a call."""


class ModelFormatError(TrackingError):
    """A logged model that medvision refuses to load: the old format (pickle or ``torch.export``), a model that
    medvision did not log, or a weights file that fails its sha256 or is not safetensors. Nothing of it is
    unpickled."""


class PacsError(MedvisionError):
    """A PACS (DICOMweb or DIMSE) that cannot be reached, refuses the association or the credentials, or answers
    a query or retrieval with a failure. ``where`` is the address, never with credentials."""
