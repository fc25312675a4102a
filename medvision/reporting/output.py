"""The report folder, written atomically: nothing half written, and nothing but a report ever replaced.

Owns the checks on ``out_dir`` (not the input or a folder above it, not a file, not a non-empty folder that
is not a medvision report), the hidden temporary folder next to it
(``.<name>.medvision-tmp-<pid>-<token>``) into which a run writes everything, the removal of temporary
folders left by killed runs, and the final move: an existing report is renamed aside
(``.<name>.medvision-old-<pid>-<token>``), the new one moved into place, the old one deleted; should the
move fail, the old report goes back.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from medvision.errors import InputError
from medvision.reporting.cache import CACHE_NAME, _inside

_TMP_MARK = ".medvision-tmp-"
_OLD_MARK = ".medvision-old-"


def _is_report(folder: Path) -> bool:
    return (folder / "results.json").is_file() or (folder / CACHE_NAME).is_file()


def _check_out(input_dir: Path, out: Path) -> None:
    if _inside(input_dir, out):
        reason = f"holds the input folder {input_dir}; replacing the report would delete it"
        raise InputError(out, reason, "choose an --out folder outside the input")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder", "choose another --out")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise InputError(
            out,
            "exists, is not empty and is not a medvision report; it would be replaced",
            "choose a new or empty --out folder, or remove it",
        )


def _clean_stale(out: Path) -> None:
    """Remove temporary folders of earlier runs whose process is gone (killed, not interrupted)."""
    for mark in (_TMP_MARK, _OLD_MARK):
        for path in out.parent.glob(f".{out.name}{mark}*"):
            pid = path.name[len(f".{out.name}{mark}") :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _new_tmp(out: Path) -> Path:
    """Create the hidden temporary folder of this run next to ``out``."""
    tmp = out.parent / f".{out.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp``: rename the old report aside, move the new one in, delete the old one."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}{_OLD_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:  # an OSError or a Ctrl-C between the two renames: the old report goes back
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
