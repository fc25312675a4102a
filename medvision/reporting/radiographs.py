"""The radiograph pipeline: radiograph series (CR/DX) through the registered classifier, one row per study.

Owns the batched pass: each image decoded once for the model input (the registered model's own
preprocessing, :func:`~medvision.data.transforms.classification_transforms` with its image size, aspect,
mean and std) and for its display picture; one forward pass giving the logit and the Grad-CAM map
(:class:`~medvision.reporting.explain.GradCamExplainer`); the probability calibrated with the model's
temperature and decided at its threshold; the overlay picture. Then each study's row: the highest
probability of its images, the pictures, the DICOM SR whose evidence is the images the finding rests on,
the optional secondary capture of its most suspicious image, and a failure row per unreadable image.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvision.engine.classify import ClassifierBundle
from medvision.reporting.cache import _remember
from medvision.reporting.discover import CLASSIFICATION, Study
from medvision.reporting.models import _Model
from medvision.reporting.rows import _FINDING, _base_row, _failed, _priority, _reason, _rel, _Run, _sc_file, _sr_file

#: Longer side of the radiograph shown beside its heatmap, in pixels.
DISPLAY_SIZE = 512


@dataclass
class _Image:
    study: Study
    index: int
    path: Path


@dataclass
class _Picture:
    """An image's picture waiting for its study's files: the display image and its heatmap, or why there is none."""

    index: int
    rel: str | None
    picture: Any = None
    heat: Any = None
    note: str | None = None  # the picture could not be made (in this process)


@dataclass
class _StudyFiles:
    """What the writer process needs to write one study's files (no state of the run; pickled to the writer).

    Headers are de-identified here (the de-identifier's state stays in this process); ``stamp`` is its options.
    """

    tmp: Path
    root: Path
    key: str
    study: Study
    row: dict[str, Any]
    pictures: list[_Picture]
    results: list[tuple[int, float, bool, str | None]]
    sr_headers: list[Any] | None  # None: the headers could not be read (``sr_error``)
    sr_findings: list[tuple[Any, float, bool]] | None
    sr_error: str | None
    sc_headers: dict[int, Any]  # for the secondary capture: de-identified when the report is
    sc_orientation: dict[int, Any]
    sc_errors: dict[int, str]
    stamp: Any
    shareable: bool
    secondary_capture: bool
    sc_what: str


@dataclass
class _Written:
    """What the writer process wrote for one study, and why anything is missing (the notes' wording)."""

    results: list[tuple[int, float, bool, str | None]]
    picture_notes: list[str]
    sr_path: str | None = None
    sr_note: str | None = None
    sc_path: str | None = None
    sc_note: str | None = None


def _write_study_files(job: _StudyFiles) -> _Written:
    """One study's overlays, SR and secondary capture, in order (the SC is made from an overlay written here).

    Runs in the report's writer process (or inline: see :class:`_Writer`); every failure becomes a note, as
    in a row, so nothing raised here is lost with the process.
    """
    from medvision.reporting.explain import write_overlay

    failed: set[int] = set()
    notes: list[str] = []
    for pic in job.pictures:
        if pic.note is not None:
            notes.append(pic.note)
            continue
        if pic.rel is None:
            continue
        try:
            write_overlay(pic.picture, pic.heat, job.tmp / pic.rel)
        except Exception as exc:  # noqa: BLE001 - the finding stands without its picture
            failed.add(pic.index)
            notes.append(f"image not written: {_reason(exc, job.study, job.root)}")
    results = [(n, p, f, None if n in failed else rel) for n, p, f, rel in job.results]
    written = _Written(results=results, picture_notes=notes)
    if job.sr_headers is not None:
        try:
            written.sr_path = _sr_file(job.tmp, job.key, job.sr_headers, "classification", job.row,
                                       findings=job.sr_findings, stamp=job.stamp, shareable=job.shareable)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the finding stands without its SR
            written.sr_note = f"no DICOM SR ({type(exc).__name__}: {exc})"
    else:
        written.sr_note = job.sr_error
    pictured = [(p, n, rel) for n, p, _, rel in results if rel is not None]
    if job.secondary_capture and pictured:
        _, n, rel = max(pictured)  # the image with the highest probability
        try:
            if n in job.sc_errors:
                written.sc_note = job.sc_errors[n]
            else:
                written.sc_path = _sc_file(job.tmp, job.key, job.sc_headers[n], rel, job.sc_orientation[n],
                                           job.sc_what, job.row, stamp=job.stamp)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the finding stands without its secondary capture
            written.sc_note = f"no DICOM secondary capture ({type(exc).__name__}: {exc})"
    return written


#: Read and decode the next batch in a thread while this one goes through the network.
LOADER_THREAD = True

#: A run with at least this many studies writes their files in a writer process; fewer are written inline
#: (forking costs more than it saves for one or two studies, e.g. ``medvision listen``'s single study).
WRITER_MIN_STUDIES = 4

#: At most this many writer processes. The second takes studies only while the first has
#: :data:`WRITER_BACKLOG` or more waiting: when the network is faster than the writing (ResNet-18 at 128 px), not
#: when a slower network leaves the first keeping up (DenseNet-121), where a second would take a core from it
#: (``benchmarks/bench_report.py --ablation``).
WRITER_PROCESSES = 2
WRITER_BACKLOG = 8


class _Writer:
    """Each study's files (overlay pictures, SR, secondary capture) written by forked processes while the next
    batch goes through the network: they are Python (highdicom, pydicom, Pillow) and hold the GIL, so a thread
    would not overlap them with this process (measured: ``benchmarks/bench_report.py``). The rows are added in
    the order studies were submitted (the caller's queue), whichever process wrote them. A study whose process
    died is written again inline, never lost; a dead process takes no more studies.
    """

    def __init__(self, studies: int) -> None:
        self.pools: list[Any] = []  # None where a process died
        self.waiting: list[set[Any]] = []  # each process's studies not yet written
        self.origin: dict[Any, int] = {}
        if studies < WRITER_MIN_STUDIES:
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # More than one only when they could get studies: more of them than the first may have waiting.
        for _ in range(WRITER_PROCESSES if studies > WRITER_BACKLOG else 1):
            # fork: the child has the imported modules already (spawn would import torch and highdicom again).
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
            # The fork happens at the first job: now, before the loader thread starts, so that no lock of a
            # thread busy decoding is copied into the child held.
            pool.submit(int).result()
            self.pools.append(pool)
            self.waiting.append(set())

    def _pick(self) -> int | None:
        live = [i for i, pool in enumerate(self.pools) if pool is not None]
        for i in live:
            self.waiting[i] = {f for f in self.waiting[i] if not f.done()}
        if not live:
            return None
        first = live[0]
        if len(self.waiting[first]) < WRITER_BACKLOG:
            return first
        return min(live, key=lambda i: len(self.waiting[i]))

    def submit(self, job: _StudyFiles) -> Any:
        while (i := self._pick()) is not None:
            try:
                future = self.pools[i].submit(_write_study_files, job)
            except RuntimeError:  # the pool broke (its process died): it takes no more studies
                self._drop(i)
                continue
            self.waiting[i].add(future)
            self.origin[future] = i
            return future
        return _run_now(_write_study_files, job)

    def _drop(self, i: int) -> None:
        pool, self.pools[i] = self.pools[i], None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def result(self, future: Any, job: _StudyFiles) -> _Written:
        from concurrent.futures.process import BrokenProcessPool

        i = self.origin.pop(future, None)
        try:
            return future.result()
        except BrokenProcessPool:
            if i is not None:
                self._drop(i)
            return _write_study_files(job)  # the files it may have half written are overwritten whole

    def close(self, *, cancel: bool = False) -> None:
        for i, pool in enumerate(self.pools):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=cancel)
                self.pools[i] = None


def _classify(run: _Run, studies: list[Study], model: _Model, bar: Any) -> None:
    """Batched classification with Grad-CAM of every image of ``studies``; one row per study."""
    import numpy as np
    import torch

    from medvision.io.fast import shared_decodes
    from medvision.metrics.calibration import apply_temperature
    from medvision.reporting.explain import GradCamExplainer, display_image, heatmap_to_display

    loaded_model: ClassifierBundle = model.value
    transform = loaded_model.transforms()  # the inference chain of the model's contract
    temperature, threshold = loaded_model.temperature, loaded_model.threshold
    keep_aspect = loaded_model.metadata.keep_aspect
    explainer = None
    if getattr(loaded_model.module, "feature_layer_name", None):
        explainer = GradCamExplainer(loaded_model.module)
    results: dict[str, list[tuple[int, float, bool, str | None]]] = {s.key: [] for s in studies}
    failures: dict[str, list[tuple[int, str]]] = {s.key: [] for s in studies}  # images that cannot be read
    pictures: dict[str, list[_Picture]] = {s.key: [] for s in studies}
    remaining = {s.key: len(s.paths) for s in studies}
    items = [_Image(s, n, p) for s in studies for n, p in enumerate(s.paths, 1)]
    writer = _Writer(len(studies))
    pending: deque[tuple[Any, _Finish]] = deque()  # studies whose files are being written, in order

    def finish(block: bool) -> None:
        # A study's row is added (and sent, remembered) once its files are whole, in the order studies completed.
        while pending and (block or pending[0][0].done()):
            future, row = pending.popleft()
            start = time.perf_counter()
            row.add(writer.result(future, row.job))
            run.tick("write", start)

    def done(item: _Image) -> None:
        # A study's files are started as soon as its last image is through.
        bar.update(1)
        remaining[item.study.key] -= 1
        if remaining[item.study.key] == 0:
            start = time.perf_counter()
            study = item.study
            outcome = (results[study.key], failures[study.key], pictures.pop(study.key))
            row = _classification_row(run, study, model, outcome, threshold, has_cam)
            if row is not None:
                pending.append((writer.submit(row.job), row))
            run.tick("write", start)
            finish(block=False)

    has_cam = explainer is not None

    def load(batch: Sequence[_Image]) -> list[tuple[_Image, Any, str | None, Any]]:
        # In the loader thread: each radiograph decoded once for the model input and its display picture.
        out: list[tuple[_Image, Any, str | None, Any]] = []
        with shared_decodes():
            for item in batch:
                try:
                    tensor = transform({"image": str(item.path)})["image"]
                except Exception as exc:  # noqa: BLE001 - one bad image never stops the batch
                    out.append((item, None, _reason(exc, item.study, run.root), None))
                    continue
                display: Any = None
                if run.withheld(item.study) is None:  # de-identified: pixels may carry burned-in identifiers
                    try:
                        display = display_image(item.path, size=DISPLAY_SIZE)
                    except Exception as exc:  # noqa: BLE001 - the finding stands without its picture
                        display = f"image not written: {_reason(exc, item.study, run.root)}"
                out.append((item, tensor, None, display))
        return out

    # The next batch is read and decoded by a thread while this one goes through the network (torch releases the
    # GIL in its kernels; the decoders in C and numpy's resize do too).
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medvision-report-loader") if LOADER_THREAD else (
        _Inline())  # fmt: skip
    try:
        batches = list(_chunks(items, run.batch_size))
        ahead = loader.submit(load, batches[0]) if batches else None
        for number, _ in enumerate(batches):
            start = time.perf_counter()
            loaded = ahead.result()
            ahead = loader.submit(load, batches[number + 1]) if number + 1 < len(batches) else None
            start = run.tick("load", start)
            ok = []
            for item, tensor, reason, display in loaded:
                if tensor is None:
                    failures[item.study.key].append((item.index, reason))
                    done(item)
                else:
                    ok.append((item, tensor, display))
            if not ok:
                continue
            images = torch.stack([tensor for _, tensor, _ in ok]).to(run.device)
            if explainer is not None:
                logits, maps = explainer(images)
                start = run.tick("gradcam", start)
            else:
                with torch.no_grad():
                    logits = loaded_model.module(images).reshape(len(ok), -1)[:, 0].float().cpu()
                maps = None
                start = run.tick("network", start)
            probs = apply_temperature(logits.numpy(), temperature)
            for i, (item, _, display) in enumerate(ok):
                start = time.perf_counter()
                prob = float(probs[i])
                rel: str | None = None
                if display is not None:
                    rel = f"studies/{run.key_for(item.study)}/radiograph-{item.index}{run.suffix}"
                    try:
                        if isinstance(display, str):
                            raise _NoPicture(display)
                        picture, original = display
                        heat = (
                            heatmap_to_display(maps[i], original, picture.shape, keep_aspect=keep_aspect)
                            if maps is not None
                            else np.zeros_like(picture)
                        )
                        pictures[item.study.key].append(_Picture(item.index, rel, picture, heat))
                    except Exception as exc:  # noqa: BLE001 - the finding stands without its picture
                        note = str(exc) if isinstance(exc, _NoPicture) else (
                            f"image not written: {_reason(exc, item.study, run.root)}")  # fmt: skip
                        pictures[item.study.key].append(_Picture(item.index, None, note=note))
                        rel = None
                results[item.study.key].append((item.index, prob, prob >= threshold, rel))
                run.tick("write", start)
                done(item)
        finish(block=True)
    finally:
        loader.shutdown(wait=True, cancel_futures=True)
        writer.close(cancel=True)
        if explainer is not None:
            explainer.close()


def _run_now(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` run now, as a finished ``Future`` (its exception raised again by ``result()``, as from a pool)."""
    from concurrent.futures import Future

    done: Future = Future()
    try:
        done.set_result(fn(*args))
    except Exception as exc:  # noqa: BLE001 - raised again by result()
        done.set_exception(exc)
    return done


class _Inline:
    """``submit`` runs now (the loader without its thread: ``LOADER_THREAD = False``, for the benchmark)."""

    def submit(self, fn: Any, *args: Any) -> Any:
        return _run_now(fn, *args)

    def shutdown(self, **_: Any) -> None:
        pass


class _NoPicture(Exception):
    """The display picture could not be made (the note says why)."""


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class _Finish:
    """A study's row waiting for its files; :meth:`add` completes it with what was written and adds it."""

    run: _Run
    study: Study
    model: _Model
    row: dict[str, Any]
    notes: list[str]
    failures: list[tuple[int, str]]
    has_cam: bool
    threshold: float
    job: _StudyFiles

    def add(self, written: _Written) -> None:
        run, study, row, threshold = self.run, self.study, self.row, self.threshold
        what = "Grad-CAM heatmap over it (right)" if self.has_cam else "no heatmap (the model has no feature layer)"
        row["images"] = [
            {
                "path": rel,
                "caption": f"image {n}: radiograph (left), {what}; pneumonia probability {p:.3f}"
                f" ({'flagged' if f else 'not flagged'} at threshold {threshold:.3f})",
                "kind": "heatmap" if self.has_cam else "image",
            }
            for n, p, f, rel in sorted(written.results)
            if rel is not None
        ]
        notes = [*written.picture_notes, *self.notes]
        if written.sr_path is not None:
            row["sr_path"] = written.sr_path
        elif written.sr_note is not None:
            notes.append(written.sr_note)
        if written.sc_path is not None:
            row["secondary_capture_path"] = written.sc_path
        elif written.sc_note is not None:
            notes.append(written.sc_note)
        if notes:
            row["reason"] = "; ".join(notes)
        key = self.job.key
        rows = [run.add(row, study)]
        for n, reason in self.failures:
            # "Nothing lost": an unreadable image of a series that was reported is listed as a failure of its own.
            failed = _failed(_base_row(study, f"{key}-img{n}"), reason)
            failed["source"] = _rel(study.paths[n - 1], run.root)
            failed["task"], failed["finding"], failed["model"] = CLASSIFICATION, _FINDING[CLASSIFICATION], row["model"]
            rows.append(run.add(failed, study))
        _remember(run, study, self.model, rows)


def _classification_row(
    run: _Run,
    study: Study,
    model: _Model,
    outcome: tuple[list[tuple[int, float, bool, str | None]], list[tuple[int, str]], list[_Picture]],
    threshold: float,
    has_cam: bool,
) -> _Finish | None:
    """The row of one radiograph series, and the job that writes its files (``None``: a failed row, added now)."""
    results, failures, pictured = outcome
    key = run.key_for(study)
    row = _base_row(study, key)
    row["model"] = dict(model.provenance)
    row["threshold"] = threshold
    if not results:
        reason = "; ".join(r for _, r in failures) or f"{study.source}: no image could be read"
        run.add(_failed(row, reason), study)
        return None
    probability = max(p for _, p, _, _ in results)
    flagged = any(f for _, _, f, _ in results)
    row.update(probability=round(probability, 6), flagged=flagged, priority=_priority(probability, flagged))
    notes: list[str] = []
    if failures:
        notes.append(f"{len(failures)} of {len(study.paths)} images could not be read (listed apart)")
    if run.withheld(study) is not None:
        notes.append(str(run.withheld(study)))
    from medvision.io.dicom import read_dataset

    raw: dict[int, Any] = {}  # read once, for the SR and the secondary capture
    deid: dict[int, Any]
    sr_headers: list[Any] | None
    sr_findings: list[tuple[Any, float, bool]] | None
    sr_error = None
    try:
        # The SR's evidence is the images the finding rests on.
        for n, _, _, _ in sorted(results):
            raw[n] = read_dataset(study.paths[n - 1], stop_before_pixels=True)
        # De-identified here, once for the SR and the secondary capture (the de-identifier's state stays here).
        deid = {n: run.deidentified(h) for n, h in raw.items()}
        sr_headers = [deid[n] for n, _, _, _ in sorted(results)]
        sr_findings = [(deid[n], p, f) for n, p, f, _ in sorted(results)]
    except Exception as exc:  # noqa: BLE001 - the finding stands without its SR
        deid = {}
        sr_headers = sr_findings = None
        sr_error = f"no DICOM SR ({type(exc).__name__}: {exc})"
    # The secondary capture's header, for each image that may be its picture (the writer picks the most suspicious).
    sc_headers: dict[int, Any] = {}
    sc_orientation: dict[int, Any] = {}
    sc_errors: dict[int, str] = {}
    if run.secondary_capture:
        for n, _, _, rel in results:
            if rel is None:
                continue
            try:
                header = raw.get(n) or read_dataset(study.paths[n - 1], stop_before_pixels=True)
                sc_orientation[n] = header.get("PatientOrientation")
                sc_headers[n] = deid[n] if n in deid else run.deidentified(header)
            except Exception as exc:  # noqa: BLE001 - the finding stands without its secondary capture
                sc_errors[n] = f"no DICOM secondary capture ({type(exc).__name__}: {exc})"
    what = "radiograph (left) and Grad-CAM heat map (right)" if has_cam else "radiograph"
    job = _StudyFiles(
        tmp=run.tmp, root=run.root, key=key, study=study, row=dict(row), pictures=pictured, results=list(results),
        sr_headers=sr_headers, sr_findings=sr_findings, sr_error=sr_error, sc_headers=sc_headers,
        sc_orientation=sc_orientation, sc_errors=sc_errors, stamp=run.stamp,
        shareable=run.withheld(study) is None, secondary_capture=run.secondary_capture, sc_what=what,
    )  # fmt: skip
    return _Finish(run, study, model, row, notes, list(failures), has_cam, threshold, job)
