"""The trust boundary of ``medvision.io``: nothing but a :class:`~medvision.errors.MedvisionError` leaves it.

pydicom, nibabel, numpy, zlib and gzip raise dozens of exception types on damaged files (``AttributeError``
for a missing element, ``struct.error`` for a broken LUT, ``StopIteration`` for broken encapsulation,
``zlib.error``, ``LinAlgError`` for a NaN affine, ``MemoryError``...). The readers check what they can
name first (element, tag, reason, fix); :func:`guarded` turns whatever is left into a typed error that
still names the file and what was being read, so a caller never sees an untyped exception.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from medvision.errors import CorruptDataError, MedvisionError, SizeLimitError

PathLike = str | os.PathLike


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # Library text such as pydicom's "Unexpected tag" would read like medvision's own untyped-error prefix.
    text = re.sub(r"(?i)\bunexpected\b", "unrecognised", text)
    return text[:300] if text else "no message"


@contextmanager
def guarded(path: PathLike, stage: str, fix: str = "re-export or re-copy the file") -> Iterator[None]:
    """Turn any exception raised inside the block into a typed medvision error about ``path``.

    Args:
        path: the file or folder being read.
        stage: what was being done, in words ("reading the DICOM header", "decoding pixel data").
        fix: what the user can do.

    Example:
        >>> try:
        ...     with guarded("scan.dcm", "decoding pixel data"):
        ...         raise ValueError("bad")
        ... except MedvisionError as exc:
        ...     print(exc.one_line())
        scan.dcm: decoding pixel data failed (ValueError: bad); re-export or re-copy the file
    """
    try:
        yield
    except MedvisionError:
        raise
    except MemoryError as exc:
        raise SizeLimitError(
            path,
            f"ran out of memory while {stage}: the header asks for more than this machine can hold, or is corrupt",
            "check the file's dimensions; lower --max-voxels to refuse such files early",
        ) from exc
    except RecursionError as exc:
        raise CorruptDataError(path, f"{stage} failed (nesting too deep: a corrupt header)", fix) from exc
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the boundary: every reader failure becomes a typed error
        # BaseException, not Exception: a Rust decoder's panic (pyo3's PanicException) derives from it.
        raise CorruptDataError(path, f"{stage} failed ({type(exc).__name__}: {_first_line(exc)})", fix) from exc
