"""Version dispatch of TensorRT builds: every decision is checked without TensorRT."""

from __future__ import annotations

import pytest

from engines.errors import EnginesInputError
from engines.trt_plan import (
    BatchRange,
    OnnxPrecision,
    TrtVersion,
    check_dla_batch,
    plan_build,
    precision_chain,
    profile_shapes,
)

QDQ = OnnxPrecision(has_qdq=True, has_fp16=False)
FP32 = OnnxPrecision(has_qdq=False, has_fp16=False)
FP16 = OnnxPrecision(has_qdq=False, has_fp16=True)
V = TrtVersion.parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.6", TrtVersion(8, 6, 0)),
        ("10.3.0.30", TrtVersion(10, 3, 0)),
        ("11.0.1", TrtVersion(11, 0, 1)),
        (" 10.10.0", TrtVersion(10, 10, 0)),
    ],
)
def test_version_parse(text: str, expected: TrtVersion) -> None:
    assert TrtVersion.parse(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10", "v10.3"])
def test_version_parse_rejects(text: str) -> None:
    with pytest.raises(EnginesInputError, match="MAJOR.MINOR"):
        TrtVersion.parse(text)


def test_versions_compare_numerically() -> None:
    assert V("10.10") > V("10.9") > V("10.3") > V("8.6")


@pytest.mark.parametrize(
    ("version", "precision", "onnx", "dla", "calib", "match"),
    [
        ("8.5", "int8", QDQ, None, False, "older than 8.6"),
        ("10.3", "int4", QDQ, None, False, "allowed int8, fp16, fp32"),
        ("10.3", "int8", QDQ, -1, False, "must be >= 0"),
        ("10.8", "int8", QDQ, 0, False, "DLA needs TensorRT <= 10.7"),
        ("11.4", "int8", QDQ, 0, False, "DLA needs TensorRT <= 10.7"),
        ("10.3", "fp32", FP32, 0, False, "DLA runs only fp16 or int8"),
        ("10.3", "fp16", QDQ, None, False, "build fp16 from the FP32 ONNX"),
        ("10.3", "fp32", QDQ, None, False, "build fp32 from the FP32 ONNX"),
        ("10.3", "fp32", FP16, None, False, "fp32 with an ONNX that holds FP16 tensors"),
        ("11.0", "int8", FP32, None, True, "removed implicit INT8 calibration"),
        ("10.3", "int8", FP32, None, False, "needs --calibration"),
        ("11.0", "fp16", FP32, None, False, "modelopt.onnx.autocast"),
    ],
)
def test_plan_refuses(
    version: str, precision: str, onnx: OnnxPrecision, dla: int | None, calib: bool, match: str
) -> None:
    with pytest.raises(EnginesInputError, match=match):
        plan_build(V(version), precision, onnx, dla, calib)


@pytest.mark.parametrize(
    ("version", "precision", "onnx", "dla", "calib", "net", "flags", "strong", "implicit"),
    [
        # Q/DQ INT8: weak typing before 10, strongly typed in 10 (flag) and 11 (always, no flag).
        # Before 10 every network needs EXPLICIT_BATCH: the ONNX parser refuses implicit batch.
        ("8.6", "int8", QDQ, None, False, ("EXPLICIT_BATCH",), ("INT8", "FP16"), False, False),
        ("8.6", "int8", QDQ, 0, False, ("EXPLICIT_BATCH",), ("INT8", "FP16", "GPU_FALLBACK"), False, False),
        ("10.3", "int8", QDQ, None, False, ("STRONGLY_TYPED",), (), True, False),
        ("10.7", "int8", QDQ, None, False, ("STRONGLY_TYPED",), (), True, False),
        ("11.0", "int8", QDQ, None, False, (), (), True, False),
        # DLA has no FP32 path: weak typing with INT8 + FP16 and GPU fallback.
        ("10.3", "int8", QDQ, 0, False, (), ("INT8", "FP16", "GPU_FALLBACK"), False, False),
        # Legacy implicit calibration from an FP32 ONNX, only before 11.
        ("8.6", "int8", FP32, None, True, ("EXPLICIT_BATCH",), ("INT8", "FP16"), False, True),
        ("10.3", "int8", FP32, 1, True, (), ("INT8", "FP16", "GPU_FALLBACK"), False, True),
        # FP16: flag before 11; strongly typed from an FP16 ONNX on 10+.
        ("10.3", "fp16", FP32, None, False, (), ("FP16",), False, False),
        ("10.3", "fp16", FP16, None, False, ("STRONGLY_TYPED",), (), True, False),
        ("11.0", "fp16", FP16, None, False, (), (), True, False),
        ("10.3", "fp16", FP16, 0, False, (), ("FP16", "GPU_FALLBACK"), False, False),
        # FP32.
        ("9.3", "fp32", FP32, None, False, ("EXPLICIT_BATCH",), (), False, False),
        ("8.6", "fp16", FP16, None, False, ("EXPLICIT_BATCH",), ("FP16",), False, False),
        ("10.3", "fp32", FP32, None, False, ("STRONGLY_TYPED",), (), True, False),
        ("11.1", "fp32", FP32, None, False, (), (), True, False),
    ],
)
def test_plan_flags(
    version: str,
    precision: str,
    onnx: OnnxPrecision,
    dla: int | None,
    calib: bool,
    net: tuple[str, ...],
    flags: tuple[str, ...],
    strong: bool,
    implicit: bool,
) -> None:
    plan = plan_build(V(version), precision, onnx, dla, calib)
    assert (plan.network_flags, plan.builder_flags, plan.strongly_typed, plan.implicit_calibration) == (
        net,
        flags,
        strong,
        implicit,
    )
    assert plan.precision == precision and plan.dla_core == dla and plan.notes


@pytest.mark.parametrize(("version", "deprecated"), [("10.0", False), ("10.1", True), ("10.7", True)])
def test_implicit_calibration_deprecation_note(version: str, deprecated: bool) -> None:
    plan = plan_build(V(version), "int8", FP32, None, True)
    assert any("deprecated" in n for n in plan.notes) == deprecated


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", BatchRange(1, 1, 1)),
        ("16", BatchRange(1, 16, 16)),
        ("1,8,16", BatchRange(1, 8, 16)),
        ("256,256,256", BatchRange(256, 256, 256)),
    ],
)
def test_batch_range_parse(text: str, expected: BatchRange) -> None:
    assert BatchRange.parse(text) == expected


@pytest.mark.parametrize("text", ["0", "1,8", "8,4,16", "1,8,257", "a,b,c", "", "2,1,1"])
def test_batch_range_rejects(text: str) -> None:
    with pytest.raises(EnginesInputError, match="batch"):
        BatchRange.parse(text)


def test_profile_shapes_prepend_batch() -> None:
    shapes = profile_shapes({"person": (3, 64, 64), "scene": (3, 96, 96)}, BatchRange(1, 8, 16))
    assert shapes == {
        "person": ((1, 3, 64, 64), (8, 3, 64, 64), (16, 3, 64, 64)),
        "scene": ((1, 3, 96, 96), (8, 3, 96, 96), (16, 3, 96, 96)),
    }


@pytest.mark.parametrize("batch", [BatchRange(1, 8, 16), BatchRange(1, 1, 1), BatchRange(8, 8, 8)])
def test_gpu_builds_take_any_batch_range(batch: BatchRange) -> None:
    check_dla_batch(None, batch)


def test_dla_needs_one_fixed_batch() -> None:
    check_dla_batch(0, BatchRange(8, 8, 8))
    with pytest.raises(EnginesInputError, match=r"--dla-core=1 with --batch 1,8,16: .* --batch 16,16,16"):
        check_dla_batch(1, BatchRange(1, 8, 16))


@pytest.mark.parametrize("shape", [(), (3, 0, 64), (3, -1, 64)])
def test_profile_shapes_need_static_positive(shape: tuple[int, ...]) -> None:
    with pytest.raises(EnginesInputError, match="static and positive"):
        profile_shapes({"person": shape}, BatchRange(1, 1, 1))


@pytest.mark.parametrize(
    ("precision", "fallback", "expected"),
    [
        ("fp32", True, ("fp32",)),
        ("int8", False, ("int8",)),
        ("int8", True, ("int8", "fp16", "fp32")),
        ("fp16", True, ("fp16", "fp32")),
    ],
)
def test_precision_chain(precision: str, fallback: bool, expected: tuple[str, ...]) -> None:
    assert precision_chain(precision, fallback) == expected


def test_precision_chain_rejects_unknown() -> None:
    with pytest.raises(EnginesInputError, match="--precision='bf16'"):
        precision_chain("bf16", True)
