"""Engine build: everything up to the TensorRT calls runs here; the build itself is a GPU test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from calibration.viewset import ViewSetError
from engines.errors import EnginesInputError, TensorRTUnavailable
from engines.trt_build import _fp32_source, build_engine, inspect_onnx
from engines.trt_plan import OnnxPrecision

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_inspect_fp32_and_int8(fp32_onnx: Path, int8_onnx: Path) -> None:
    kind, inputs, outputs, props = inspect_onnx(fp32_onnx)
    assert kind == OnnxPrecision(has_qdq=False, has_fp16=False)
    assert inputs == {"person": (3, 32, 32), "scene": (3, 32, 32)}
    assert outputs == ["logits", "valence_arousal"] and props["affectline.format"] == "1"
    kind8, inputs8, _, props8 = inspect_onnx(int8_onnx)
    assert kind8 == OnnxPrecision(has_qdq=True, has_fp16=False) and inputs8 == inputs and props8 == props


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("float16", r"input 'person' is float16; the agent feeds float32"),
        ("dynamic", r"input 'person' needs static C, H, W after the batch axis, got \[3, 0, 32\]"),
    ],
)
def test_inspect_rejects_inputs_the_engine_cannot_take(
    fp32_onnx: Path, tmp_path: Path, edit: str, match: str
) -> None:
    import onnx

    model = onnx.load(str(fp32_onnx))
    person = model.graph.input[0].type.tensor_type
    if edit == "float16":
        person.elem_type = onnx.TensorProto.FLOAT16
    else:
        person.shape.dim[2].dim_param = "height"  # a named axis: dim_value 0
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(EnginesInputError, match=match):
        inspect_onnx(tmp_path / "m.onnx")


def test_inspect_rejects_non_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x00not a protobuf\xff" * 3)
    with pytest.raises(EnginesInputError, match="not a readable ONNX"):
        inspect_onnx(bad)


def test_fallback_source_comes_from_quantize_sidecar(
    int8_onnx: Path, fp32_onnx: Path, tmp_path: Path
) -> None:
    assert _fp32_source(int8_onnx, None) == fp32_onnx
    assert _fp32_source(int8_onnx, tmp_path / "given.onnx") == tmp_path / "given.onnx"
    assert _fp32_source(tmp_path / "no-sidecar.onnx", None) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workspace_mb": 8}, "--workspace-mb=8"),
        ({"workspace_mb": 100_000}, "--workspace-mb=100000"),
        ({"precision": "int9"}, "--precision='int9': allowed int8, fp16, fp32"),  # before TensorRT is needed
        ({"device": -3}, "--device=-3: must be >= 0"),
    ],
)
def test_rejects_bad_arguments_before_tensorrt(
    int8_onnx: Path, tmp_path: Path, kwargs: dict[str, int], match: str
) -> None:
    with pytest.raises(EnginesInputError, match=match):
        build_engine(int8_onnx, tmp_path / "m.engine", **kwargs)  # type: ignore[arg-type]


def test_dla_with_a_dynamic_batch_is_refused_before_tensorrt(int8_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(EnginesInputError, match="DLA has no dynamic shapes"):
        build_engine(int8_onnx, tmp_path / "m.engine", dla_core=0)  # default batch 1,8,16
    assert not (tmp_path / "m.engine").exists()


def test_missing_onnx(tmp_path: Path) -> None:
    with pytest.raises(EnginesInputError, match="is not a file"):
        build_engine(tmp_path / "none.onnx", tmp_path / "m.engine")


def test_refuses_the_onnx_runtime_only_int8_file_before_tensorrt(tmp_path: Path) -> None:
    """The shipped CPU INT8 file has unsigned Q/DQ with zero points: named and refused up front,
    with the way out, on any machine (TensorRT installed or not)."""
    from edge_agent.infer import BUILTIN_MODELS

    cpu = BUILTIN_MODELS["default-int8-cpu"]
    if not cpu.is_file():
        pytest.skip("default-int8-cpu is not in this install")
    with pytest.raises(EnginesInputError, match=r"for ONNX Runtime, not TensorRT .*default-int8`"):
        build_engine(cpu, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here; this checks the message where it is not")
def test_without_tensorrt_says_how_to_get_it(int8_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(TensorRTUnavailable, match="JetPack"):
        build_engine(int8_onnx, tmp_path / "m.engine")


def test_unreadable_samples_fail_before_tensorrt(int8_onnx: Path, tmp_path: Path) -> None:
    bad = tmp_path / "views.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(ViewSetError, match="views.npz: not a view set .npz"):
        build_engine(int8_onnx, tmp_path / "m.engine", samples=bad)
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.gpu
def test_build_writes_sidecar_and_timing_cache(
    tensorrt: object, int8_onnx: Path, eval_npz: Path, tmp_path: Path
) -> None:
    from engines.artifacts import read_sidecar
    from engines.trt_sidecar import EngineSidecar

    report = build_engine(int8_onnx, tmp_path / "m.engine", samples=eval_npz)
    side = EngineSidecar.read(report.engine)
    assert side.precision == "int8" and side.tensorrt_version == tensorrt.__version__  # type: ignore[attr-defined]
    assert side.calibration_sha256 and (tmp_path / "m.engine.timing-cache").stat().st_size > 0
    assert side.rebuild.endswith(f"--precision int8 --batch 1,8,16 --samples {eval_npz}")
    cache = tmp_path / "m.engine.timing-cache"
    again = build_engine(int8_onnx, tmp_path / "m2.engine", timing_cache=cache, samples=eval_npz)
    assert read_sidecar(again.engine)["timing_cache"] == str(cache) and "OK" in again.verification
