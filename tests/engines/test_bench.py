"""Model cost and latency measurement (figures are reported, never asserted against targets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.viewset import ViewSet
from engines.bench import measure_latency, model_cost
from engines.errors import EnginesInputError


def test_cost_of_a_hand_built_graph(tmp_path: Path) -> None:
    # Conv 3->8, 3x3, stride 1, pad 1 on 3x10x10: 8*10*10 outputs x 27 MACs; Gemm 800 -> 5.
    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    g = numpy_helper.from_array(np.zeros((5, 800), np.float32), "g")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [w, g],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    cost = model_cost(path)
    assert cost.parameters == 8 * 27 + 5 * 800
    assert cost.macs == 800 * 27 + 5 * 800
    assert cost.gflops == pytest.approx(2 * cost.macs / 1e9)


def test_cost_of_the_real_network(fp32_onnx: Path) -> None:
    cost = model_cost(fp32_onnx)
    # MobileNetV2 features (~2.2 M) + LayerNorms + 64-wide fusion and heads.
    assert 2_200_000 < cost.parameters < 2_500_000
    assert cost.macs > 2 * 5_000_000  # two encoder passes at 32 px


def test_latency_fields(fp32_onnx: Path, eval_views: ViewSet) -> None:
    lat = measure_latency(fp32_onnx, eval_views, batch=4, iters=3, warmup=1)
    assert lat.batch == 4 and lat.threads == 1 and lat.p90_ms >= lat.median_ms > 0
    assert lat.per_person_ms == pytest.approx(lat.median_ms / 4)


@pytest.mark.parametrize("batch", [0, 10_000])
def test_latency_rejects_batch(fp32_onnx: Path, eval_views: ViewSet, batch: int) -> None:
    with pytest.raises(EnginesInputError, match=f"batch={batch}"):
        measure_latency(fp32_onnx, eval_views, batch=batch)


def test_int8_file_has_the_same_cost(fp32_onnx: Path, int8_onnx: Path) -> None:
    assert model_cost(int8_onnx) == model_cost(fp32_onnx)
