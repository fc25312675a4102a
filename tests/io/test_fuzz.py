"""A short, seeded fuzz run of ``medvision.io.load`` against the boundary contract (issue 11).

Every mutated input must either raise a typed :class:`~medvision.errors.MedvisionError` naming the file,
or load as finite data with a valid affine, matching spacing and a strict-JSON summary; none may hang,
crash the process or eat memory. The long campaign is ``make fuzz`` (tests/io/fuzz_campaign.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tests.io.fuzz_corpus import (
    FAILURES,
    MUTATORS,
    Runner,
    Seed,
    applicable,
    build_corpus,
    check_result,
    counts_table,
    findings_markdown,
    make_case,
    run_fuzz,
)

# A spread of what pydicom ships: native/implicit/big-endian, RLE, JPEG, JPEG-LS, JPEG 2000, deflate,
# RGB/YBR/palette, multi-frame (incl. enhanced with functional groups), non-image, no file meta.
TEST_DICOM = {
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "JPEG-lossy.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "JPEGLSNearLossless_08.dcm",
    "SC_rgb.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_ybr_full_uncompressed.dcm",
    "SC_rgb_32bit_2frame.dcm",
    "OT-PAL-8-face.dcm",
    "image_dfl.dcm",
    "meta_missing_tsyntax.dcm",
    "no_meta.dcm",
    "emri_small.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "liver.dcm",
    "MR_truncated.dcm",
    "rtplan.dcm",
    "ctbrain1.dcm",
}
# Valid inputs that must load: a reader that refuses everything would otherwise pass the contract.
KNOWN_GOOD = {  # names after the origin ("pydicom:", "pydicom-data:", "nibabel:", "series:")
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "SC_rgb.dcm",
    "image_dfl.dcm",
    "emri_small.dcm",
    "anatomical.nii",
    "example4d.nii.gz",
    "CT_small.dcmx5",
    "MR_small.dcmx5",
}
RUN_SEED = 20261130
MAX_CASES = 800  # about 25 s on one free core; the worker start and the corpus take 10-15 s more
MAX_SECONDS = 75


def _in_test_corpus(name: str) -> bool:
    origin, _, filename = name.partition(":")
    return origin in ("nibabel", "series") or Path(filename).name in TEST_DICOM


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Seed]]:
    work = tmp_path_factory.mktemp("fuzz")
    return work, build_corpus(work, max_file_bytes=2 * 1024 * 1024, name_filter=_in_test_corpus)


def test_corpus_covers_every_mutation_class(corpus: tuple[Path, list[Seed]]) -> None:
    _, seeds = corpus
    kinds = {s.kind for s in seeds}
    assert kinds == {"dicom", "nifti", "series"}
    assert len([s for s in seeds if s.kind == "dicom"]) >= 20  # pydicom's own files, and pydicom-data's
    assert any(s.name == "nibabel:row_major.dconn.nii" for s in seeds)  # CIFTI-2
    covered = {m for s in seeds for m in applicable(s)}
    assert covered == set(MUTATORS)


def test_mutations_are_deterministic(corpus: tuple[Path, list[Seed]], tmp_path: Path) -> None:
    _, seeds = corpus
    for mutation in sorted(MUTATORS):
        seed = next(s for s in seeds if MUTATORS[mutation][1](s))
        first = make_case(0, seed, mutation, random.Random(7), tmp_path / "a" / mutation)
        again = make_case(0, seed, mutation, random.Random(7), tmp_path / "b" / mutation)
        assert first.recipe == again.recipe, mutation
        if first.path.is_file():
            assert first.path.read_bytes() == again.path.read_bytes(), mutation
        else:
            names = sorted(p.name for p in first.path.iterdir())
            assert names == sorted(p.name for p in again.path.iterdir()), mutation


def test_contract_check_catches_broken_results() -> None:
    """The judge itself: a NaN voxel, a NaN affine, a zero column, a spacing that lies, a bad summary."""
    array = np.zeros((4, 5, 6), dtype=np.float32)
    meta = {"affine": np.diag([2.0, 3.0, 4.0, 1.0]), "spatial_shape": np.array([4, 5, 6]), "spacing_mm": [2, 3, 4]}
    assert check_result(array, meta) is None
    assert "non-finite voxels" in check_result(np.full_like(array, np.nan), meta)
    assert "affine" in check_result(array, {**meta, "affine": np.diag([np.nan, 3.0, 4.0, 1.0])})
    assert "zero column" in check_result(array, {**meta, "affine": np.diag([0.0, 3.0, 4.0, 1.0])})
    assert "column norms" in check_result(array, {**meta, "spacing_mm": [2, 3, 5]})
    assert "spacing_mm" in check_result(array, {**meta, "spacing_mm": [2, 3]})
    assert "inconsistent" in check_result(array, {**meta, "spatial_shape": np.array([4, 5, 7])})
    assert "notes" in check_result(array, {**meta, "notes": "resampled"})


def test_runner_reports_a_hang_and_recovers(corpus: tuple[Path, list[Seed]], tmp_path: Path) -> None:
    """The worker is killed when an input takes too long, and the next input runs in a fresh one."""
    _, seeds = corpus
    seed = next(s for s in seeds if s.name.endswith(":CT_small.dcm"))
    case = make_case(0, seed, "none", random.Random(0), tmp_path)
    with Runner(timeout=1e-4) as runner:
        assert runner.check(case)["outcome"] == "hang"
        runner.timeout = 60.0
        verdict = runner.check(case)
        assert verdict["outcome"] == "ok", verdict
        assert verdict["shape"] == [128, 128] and runner.restarts == 1


def test_fuzz_contract(corpus: tuple[Path, list[Seed]], tmp_path: Path) -> None:
    work, seeds = corpus
    result = run_fuzz(
        seeds,
        work,
        run_seed=RUN_SEED,
        seconds=MAX_SECONDS,
        max_cases=MAX_CASES,
        timeout=20.0,
        failures_dir=tmp_path / "failures",
    )
    cases = result.cases
    assert len(cases) >= len(seeds) + 100, f"only {len(cases)} inputs checked in {result.seconds:.0f} s"
    assert len({c.mutation for c in cases}) == len(MUTATORS) + 1  # every class drawn, plus the seeds
    good = [c for c in cases if c.mutation == "none" and c.seed.name.partition(":")[2] in KNOWN_GOOD]
    assert {c.seed.name.partition(":")[2] for c in good} == KNOWN_GOOD
    refused = {c.seed.name: c.detail.get("message") for c in good if c.outcome != "ok"}
    assert not refused, f"valid inputs no longer load: {refused}"
    failing = [c for c in cases if c.outcome in FAILURES]
    if failing:
        report = findings_markdown(cases, result.saved, counts_table(cases))
        pytest.fail(f"{len(failing)} of {len(cases)} inputs broke the boundary contract:\n{report}", pytrace=False)
