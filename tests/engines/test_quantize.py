"""INT8 Q/DQ quantization of a real exported network with real calibration and held-out data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.viewset import ViewSet
from edge_agent.modelmeta import ModelMeta
from engines.artifacts import read_sidecar
from engines.errors import EnginesInputError, VerificationError
from engines.quantize import KEEP_LADDER, ViewSetReader, check_trt_qdq, keep_nodes, quantize_int8
from engines.verify import read_meta


def test_int8_model_is_portable_qdq(int8_onnx: Path, meta: ModelMeta) -> None:
    model = onnx.load(str(int8_onnx))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    assert check_trt_qdq(model) == []
    assert read_meta(int8_onnx) == meta


def test_sidecar_reports_accuracy_and_provenance(int8_onnx: Path, fp32_onnx: Path, calib_npz: Path) -> None:
    side = read_sidecar(int8_onnx)
    v = side["verification"]
    assert side["kind"] == "onnx-int8-qdq" and side["source_onnx"] == fp32_onnx.name
    assert side["calibration_sha256"] == ViewSet.load(calib_npz).content_hash()
    assert abs(v["top1_drop_points"] - 100 * (v["fp32_top1"] - v["int8_top1"])) < 1e-9
    assert side["quantization"]["tensorrt_compatible"] and side["cost"]["macs_per_person"] > 0


def test_keep_ladder_nodes(fp32_onnx: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    by_name = {n.name: n for n in model.graph.node}
    steps = {step: keep_nodes(model, step) for step in KEEP_LADDER}
    assert steps["none"] == []
    assert {by_name[n].op_type for n in steps["heads"]} == {"Gemm"} and len(steps["heads"]) == 3
    # Resolution steps grow: stride-2 layers are a subset of the stride <= 4 ones, and start at the stem.
    assert set(steps["stem"]) < set(steps["early"]) and _first_conv_name(model) in steps["stem"]
    assert {by_name[n].op_type for n in steps["early"]} <= {"Conv", "Add"}
    assert set(steps["early+heads"]) == set(steps["early"]) | set(steps["heads"])
    last = [n for n in steps["early+heads+last"] if n not in steps["early+heads"]]
    assert last and all(by_name[n].op_type == "Conv" for n in last)


def _first_conv_name(model: onnx.ModelProto) -> str:
    return next(n.name for n in model.graph.node if n.op_type == "Conv")


def test_keep_fp32_step_is_honoured(
    tmp_path: Path, fp32_onnx: Path, calib_npz: Path, eval_views: ViewSet
) -> None:
    report = quantize_int8(
        fp32_onnx,
        calib_npz,
        tmp_path / "q.onnx",
        eval_views,
        method="minmax",
        keep_fp32="heads",
        max_top1_drop=100,
        latency_batches=(1,),
    )
    model = onnx.load(str(report.onnx))
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    inits = {i.name: i.data_type for i in model.graph.initializer}
    # Heads kept in FP32: their weights are the float initializers, not dequantized INT8.
    assert len(gemms) == 3 and all(inits.get(n.input[1]) == TensorProto.FLOAT for n in gemms)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(n.input[1] not in inits for n in convs)
    assert report.keep_fp32_step == "heads" and report.latency["int8"][1].median_ms > 0
    assert any("CPU latency int8 batch 1" in line for line in report.lines())


def test_cpu_target_is_marked_not_for_tensorrt(
    tmp_path: Path, fp32_onnx: Path, calib_npz: Path, eval_views: ViewSet
) -> None:
    report = quantize_int8(
        fp32_onnx,
        calib_npz,
        tmp_path / "cpu.onnx",
        eval_views,
        method="minmax",
        target="cpu",
        keep_fp32="none",
        max_top1_drop=100,
        latency_batches=(),
    )
    assert check_trt_qdq(onnx.load(str(report.onnx)))  # uint8 zero points: TensorRT would refuse it
    assert read_sidecar(report.onnx)["quantization"]["tensorrt_compatible"] is False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "kl"}, "--method='kl'"),
        ({"target": "gpu"}, "--target='gpu'"),
        ({"percentile": 98.0}, "--percentile=98.0"),
        ({"max_top1_drop": -1.0}, "--max-drop=-1.0"),
        ({"keep_fp32": "all"}, "--keep-fp32='all'"),
    ],
)
def test_rejects_bad_arguments(
    tmp_path: Path,
    fp32_onnx: Path,
    calib_npz: Path,
    eval_views: ViewSet,
    kwargs: dict[str, object],
    match: str,
) -> None:
    with pytest.raises(EnginesInputError, match=match):
        quantize_int8(fp32_onnx, calib_npz, tmp_path / "q.onnx", eval_views, latency_batches=(), **kwargs)  # type: ignore[arg-type]


def test_unlabelled_eval_set_gates_on_agreement(
    tmp_path: Path, fp32_onnx: Path, calib_npz: Path, eval_views: ViewSet
) -> None:
    unlabelled = ViewSet(
        eval_views.inputs,
        np.full(len(eval_views), -1),
        eval_views.brightness,
        eval_views.origin,
        eval_views.classes,
    )
    report = quantize_int8(
        fp32_onnx,
        calib_npz,
        tmp_path / "q.onnx",
        unlabelled,
        method="minmax",
        keep_fp32="none",
        min_agreement=0.0,
        latency_batches=(),
    )
    assert report.fp32_accuracy is None and report.top1_drop_points is None
    assert "no labels" in report.lines()[1]
    with pytest.raises(VerificationError, match="misses agreement >= 1.0"):
        quantize_int8(
            fp32_onnx,
            calib_npz,
            tmp_path / "q2.onnx",
            unlabelled,
            method="minmax",
            keep_fp32="none",
            min_agreement=1.0,
            latency_batches=(),
        )
    assert not (tmp_path / "q2.onnx").exists()


def test_rejects_an_eval_set_that_shares_calibration_samples(
    tmp_path: Path, fp32_onnx: Path, calib_npz: Path
) -> None:
    calib = ViewSet.load(calib_npz)
    with pytest.raises(
        EnginesInputError, match=f"eval set shares {len(calib)} sample\\(s\\) with the calibration"
    ):
        quantize_int8(fp32_onnx, calib_npz, tmp_path / "q.onnx", calib, latency_batches=())
    assert not (tmp_path / "q.onnx").exists()


def test_late_failures_are_checked_before_any_work(
    tmp_path: Path, fp32_onnx: Path, calib_npz: Path, eval_views: ViewSet
) -> None:
    """A latency batch larger than the eval set, or an FP32 model without its sidecar, would fail
    after the ladder had written the INT8 file; both are refused up front instead."""
    out = tmp_path / "q.onnx"
    n = len(eval_views)
    with pytest.raises(EnginesInputError, match=rf"latency batch sizes \[{n + 1}\]: must be in \[1, {n}\]"):
        quantize_int8(fp32_onnx, calib_npz, out, eval_views, latency_batches=(1, n + 1))
    bare = tmp_path / "bare.onnx"
    shutil.copyfile(fp32_onnx, bare)
    with pytest.raises(EnginesInputError, match="bare.onnx"):
        quantize_int8(bare, calib_npz, out, eval_views, latency_batches=())
    assert not out.exists()


def test_rejects_overwriting_source(fp32_onnx: Path, calib_npz: Path, eval_views: ViewSet) -> None:
    with pytest.raises(EnginesInputError, match="must be a new .onnx"):
        quantize_int8(fp32_onnx, calib_npz, fp32_onnx, eval_views)


def test_reader_ranges(eval_views: ViewSet) -> None:
    reader = ViewSetReader(eval_views.take(slice(0, 10)), 4)
    assert len(reader) == 3
    reader.set_range(1, 2)
    first = reader.get_next()
    assert first is not None and first["person"].shape[0] == 4 and reader.get_next() is None
    reader.set_range(2, 99)
    last = reader.get_next()
    assert last is not None and last["person"].shape[0] == 2


def _qdq_model(zero_point: np.ndarray) -> onnx.ModelProto:
    q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q")
    dq = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")
    graph = helper.make_graph(
        [q, dq],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(zero_point, "zp")],
    )
    return helper.make_model(graph)


@pytest.mark.parametrize(
    ("zero_point", "problem"),
    [
        (np.array(0, np.int8), None),
        (np.array(3, np.int8), "non-zero zero point"),
        (np.array(128, np.uint8), "zero point type UINT8"),
    ],
)
def test_check_trt_qdq(zero_point: np.ndarray, problem: str | None) -> None:
    problems = check_trt_qdq(_qdq_model(zero_point))
    assert (problems == []) if problem is None else (problem in problems[0])
