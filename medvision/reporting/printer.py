"""Headless Chromium started when the report starts, so that ``report.pdf`` does not wait for it at the end.

The PDF needs every study's result (the worklist comes first), so it is printed after the last study. Started
then, Chromium costs its start-up, its first page load and its exit on top of the print: 2.4 s for 64 studies on
2 cores against 1.6 s for the same print from a browser started at the beginning of the report, whose start-up
(0.4 s) overlaps the network (``benchmarks/bench_report.py``). :class:`Printer` starts Chromium with
``--remote-debugging-pipe`` and, at the end, prints through the DevTools protocol
(``Page.navigate`` to the document, then ``Page.printToPDF`` with the parameters that ``--print-to-pdf
--no-pdf-header-footer --generate-pdf-document-outline`` use). The PDF is the same as the one-shot
:func:`medvision.reporting.render._print_pdf` prints, but for its dates and the DOM node numbers in its tags
(``tests/reporting/test_printer.py``).

The protocol over the pipe is written here (a few JSON messages, each ended by a NUL byte) because the Python
clients of it (pyppeteer, playwright) bring their own browser builds and an event loop; this uses Debian's
Chromium, as the one-shot path does. A printer that cannot start or whose browser died prints through the
one-shot path instead, with its errors (:class:`~medvision.reporting.render.PdfError`); one that does not answer
within the print's time limit is killed, and the report says the PDF was not printed.

Example:
    >>> with Printer.start() as printer:  # doctest: +SKIP
    ...     ...  # the report's work, while Chromium starts
    ...     printer.print_pdf(html, Path("report.pdf"), timeout_s=60)
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import secrets
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from medvision.reporting.render import CHROMIUM_FLAGS, PdfError, _chromium, _kill_group, _late, _print_pdf

__all__ = ["Printer"]

log = logging.getLogger("medvision.reporting.printer")

#: ``Page.printToPDF`` as ``--print-to-pdf --no-pdf-header-footer --generate-pdf-document-outline`` prints.
PRINT_PARAMS = {
    "printBackground": True,
    "preferCSSPageSize": True,
    "displayHeaderFooter": False,
    "generateTaggedPDF": True,
    "generateDocumentOutline": True,
    "transferMode": "ReturnAsStream",
}
_CHUNK = 1 << 20
#: Start Chromium with the report (False: start it for the print, as before; ``benchmarks/bench_report.py --ablation``).
PRESTART = True


class _Gone(Exception):
    """The browser is not there to print (it did not start, died, or broke the protocol): print the one-shot way."""


class _Late(Exception):
    """The browser did not answer within the print's time limit."""


class Printer:
    """A headless Chromium waiting to print the report (see the module docstring). Use :meth:`start`, then
    :meth:`print_pdf` once or more, then :meth:`close` (or ``with``)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.scratch: tempfile.TemporaryDirectory[str] | None = None
        self.why: str | None = None  # why the browser is not there (then print_pdf prints the one-shot way)
        self.binary = ""
        self._send_fd = -1
        self._recv_fd = -1
        self._buffer = bytearray()
        self._next_id = 0
        self._session: str | None = None
        self._events: list[dict[str, Any]] = []  # events that came while a reply was awaited

    @classmethod
    def start(cls) -> Printer:
        """Start Chromium and return at once (it starts while the report works); never raises."""
        printer = cls()
        if not PRESTART:
            printer.why = "not started with the report (PRESTART is off)"
            return printer
        try:
            printer._spawn()
        except (PdfError, OSError) as exc:
            printer.why = exc.one_line() if isinstance(exc, PdfError) else f"could not be started ({exc})"
            printer.close()
        return printer

    def _spawn(self) -> None:
        self.binary = binary = _chromium()
        # The profile and the document hold the report's identifiers: a private folder (0700), removed on close.
        self.scratch = tempfile.TemporaryDirectory(prefix="medvision-pdf-")
        to_browser_r, self._send_fd = os.pipe()
        self._recv_fd, from_browser_w = os.pipe()
        # Chromium reads the protocol on its fd 3 and writes on its fd 4. The pipe ends are moved above 10 first, so
        # that bash's "3<&N" never reads a descriptor that an earlier redirection has just replaced.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)
        command = [
            "bash", "-c", f'exec "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-', "bash",
            binary, *CHROMIUM_FLAGS, f"--user-data-dir={Path(self.scratch.name) / 'profile'}",
            "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip
        try:
            # A session of its own, so that closing ends Chromium's renderer and zygote processes too.
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, pass_fds=ends,
                                            start_new_session=True)  # fmt: skip
        finally:
            for fd in ends:
                os.close(fd)

    def __enter__(self) -> Printer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- protocol

    def _call(self, method: str, params: dict[str, Any] | None, deadline: float, *, session: bool = True) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session is not None:
            message["sessionId"] = self._session
        try:
            os.write(self._send_fd, json.dumps(message).encode("utf-8") + b"\0")
        except OSError as exc:
            raise _Gone(f"the browser's pipe is closed ({exc})") from exc
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise _Gone(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def _event(self, method: str, deadline: float) -> dict[str, Any]:
        while True:
            message = self._events.pop(0) if self._events else self._receive(deadline)
            if message.get("method") == method and message.get("sessionId") == self._session:
                return message.get("params", {})

    def _receive(self, deadline: float) -> dict[str, Any]:
        while (end := self._buffer.find(b"\0")) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._recv_fd], [], [], left)[0]:
                raise _Late
            chunk = os.read(self._recv_fd, _CHUNK)
            if not chunk:
                raise _Gone("the browser closed its pipe")
            self._buffer += chunk
        message = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        try:
            return json.loads(message)
        except ValueError as exc:
            raise _Gone(f"the browser said something that is not JSON ({exc})") from exc

    # ------------------------------------------------------------------------------------------- printing

    def print_pdf(self, document: str, pdf: Path, *, timeout_s: float) -> None:
        """Print ``document`` (HTML) to ``pdf`` atomically, as :func:`~medvision.reporting.render._print_pdf` does
        (a temporary file beside ``pdf``, renamed once whole). Raises :class:`PdfError` with the reason and the fix."""
        if self.process is None or self.scratch is None:
            log.debug("printing without a started browser: %s", self.why)
            _print_pdf(document, pdf, timeout_s=timeout_s)
            return
        partial = pdf.with_name(f".{pdf.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        deadline = time.monotonic() + timeout_s
        try:
            self._print(document, partial, deadline)
            os.replace(partial, pdf)
        except _Late:
            self.close()
            raise _late(self.binary, timeout_s) from None
        except _Gone as exc:
            self.why = str(exc)
            self.close()
            log.info("the started browser could not print (%s): printing with a new one", exc)
            _print_pdf(document, pdf, timeout_s=max(deadline - time.monotonic(), 1.0))
        finally:
            partial.unlink(missing_ok=True)

    def _print(self, document: str, partial: Path, deadline: float) -> None:
        assert self.scratch is not None
        page = Path(self.scratch.name) / f"report-{self._next_id}.html"
        page.write_text(document, encoding="utf-8")
        if self._session is None:
            targets = self._call("Target.getTargets", None, deadline, session=False).get("targetInfos", [])
            pages = [t["targetId"] for t in targets if t.get("type") == "page"]
            if pages:
                target = pages[0]
            else:
                target = self._call("Target.createTarget", {"url": "about:blank"}, deadline, session=False)["targetId"]
            attach = {"targetId": target, "flatten": True}
            self._session = self._call("Target.attachToTarget", attach, deadline, session=False)["sessionId"]
            self._call("Page.enable", None, deadline)
        self._events.clear()  # a load event of an earlier page is not this one's
        navigated = self._call("Page.navigate", {"url": page.as_uri()}, deadline)
        if navigated.get("errorText"):
            raise _Gone(f"could not open the document ({navigated['errorText']})")
        self._event("Page.loadEventFired", deadline)
        stream = self._call("Page.printToPDF", PRINT_PARAMS, deadline)["stream"]
        with open(partial, "wb") as out:
            while True:
                chunk = self._call("IO.read", {"handle": stream, "size": _CHUNK}, deadline)
                data = chunk.get("data", "")
                out.write(base64.b64decode(data) if chunk.get("base64Encoded") else data.encode("utf-8"))
                if chunk.get("eof"):
                    break
        self._call("IO.close", {"handle": stream}, deadline)
        page.unlink(missing_ok=True)
        with open(partial, "rb") as written:
            if written.read(5) != b"%PDF-":
                raise _Gone("the browser wrote no PDF")

    def close(self) -> None:
        """End Chromium and its processes, and remove its profile and the document."""
        process, self.process = self.process, None
        if process is not None:
            _kill_group(process.pid)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for fd in (self._send_fd, self._recv_fd):
            if fd >= 0:
                os.close(fd)
        self._send_fd = self._recv_fd = -1
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None
