"""Agreement checks and `verify_model` on real models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calibration.viewset import ViewSet
from engines.errors import EnginesInputError
from engines.verify import (
    TOLERANCES,
    Tolerance,
    compare,
    default_reference,
    open_runner,
    precision_of,
    read_meta,
    verify_model,
)

LOGITS = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.5, 0.2], [0.1, 0.2, 0.3]], np.float32)
VA = np.zeros((4, 2), np.float32)


@pytest.mark.parametrize(
    ("delta", "va_delta", "tol", "agreement", "ok"),
    [
        (0.0, 0.0, Tolerance(1.0, 0.0, 0.0), 1.0, True),
        (1e-4, 0.0, Tolerance(1.0, 1e-3, 1e-3), 1.0, True),
        (1e-2, 0.0, Tolerance(1.0, 1e-3, 1e-3), 1.0, False),  # logits too far
        (0.0, 0.1, Tolerance(1.0, 1e-3, 1e-3), 1.0, False),  # valence/arousal too far
        (0.0, 0.0, Tolerance(0.9), 1.0, True),
    ],
)
def test_compare_limits(delta: float, va_delta: float, tol: Tolerance, agreement: float, ok: bool) -> None:
    got = compare((LOGITS, VA), (LOGITS + delta, VA + va_delta), tol)
    assert (got.top1_agreement, got.ok) == (agreement, ok)
    assert got.max_logit_abs == pytest.approx(delta, abs=1e-6)


def test_compare_counts_flips_and_accuracy() -> None:
    flipped = LOGITS.copy()
    flipped[0] = [0.0, 5.0, 0.0]
    got = compare((LOGITS, VA), (flipped, VA), Tolerance(0.8), labels=np.array([0, 2, -1, 1]))
    assert got.top1_agreement == 0.75 and not got.ok
    assert (got.ref_accuracy, got.test_accuracy, got.labelled) == (2 / 3, 1 / 3, 3)
    assert "FAILS" in got.line() and "on 3 labelled" in got.line()


def test_compare_rejects_shape_mismatch() -> None:
    with pytest.raises(EnginesInputError, match="differ in shape"):
        compare((LOGITS, VA), (LOGITS[:2], VA[:2]), TOLERANCES["fp32"])


def test_int8_against_its_fp32_source(int8_onnx: Path, fp32_onnx: Path, eval_views: ViewSet) -> None:
    assert default_reference(int8_onnx) == fp32_onnx
    report = verify_model(int8_onnx, eval_views)
    assert report.precision == "int8" and report.reference == str(fp32_onnx)
    assert report.agreement.samples == len(eval_views) and report.agreement.labelled > 0


def test_fp32_onnx_against_checkpoint(fp32_onnx: Path, checkpoint: Path, eval_views: ViewSet) -> None:
    assert default_reference(fp32_onnx) == checkpoint
    report = verify_model(fp32_onnx, eval_views.take(slice(0, 16)))
    assert report.agreement.ok and report.agreement.max_logit_abs < 1e-3


def test_precision_and_meta_by_file(int8_onnx: Path, fp32_onnx: Path, checkpoint: Path) -> None:
    assert [precision_of(p) for p in (int8_onnx, fp32_onnx, checkpoint)] == ["int8", "fp32", "fp32"]
    assert read_meta(int8_onnx) == read_meta(fp32_onnx) == read_meta(checkpoint)


def test_samples_cut_for_another_model_are_refused(fp32_onnx: Path, eval_views: ViewSet) -> None:
    wrong = ViewSet(
        {"person": eval_views.inputs["person"], "context": eval_views.inputs["scene"]},
        eval_views.labels,
        eval_views.brightness,
        eval_views.origin,
        eval_views.classes,
    )
    with pytest.raises(EnginesInputError, match="the model wants"):
        verify_model(fp32_onnx, wrong)


@pytest.mark.parametrize("opener", [open_runner, read_meta])
@pytest.mark.parametrize(
    "name,message",
    [("model.tflite", "suffix '.tflite' not in .onnx, .engine"), ("missing.onnx", "is not a file")],
)
def test_model_openers_reject(tmp_path: Path, name: str, message: str, opener: Callable[[Path], Any]) -> None:
    path = tmp_path / name
    if name.endswith(".tflite"):
        path.write_bytes(b"x")
    with pytest.raises(EnginesInputError, match=message):
        opener(path)


def test_a_given_reference_that_is_missing_is_named(
    tmp_path: Path, int8_onnx: Path, eval_views: ViewSet
) -> None:
    with pytest.raises(EnginesInputError, match=r"^--reference='.*nope\.onnx': is not a file$"):
        verify_model(int8_onnx, eval_views, reference=tmp_path / "nope.onnx")


def test_reference_missing(tmp_path: Path, int8_onnx: Path) -> None:
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(int8_onnx.read_bytes())
    with pytest.raises(EnginesInputError, match="sidecar .* is missing"):
        default_reference(lone)
