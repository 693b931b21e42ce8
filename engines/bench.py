"""Model cost on this CPU: ONNX Runtime latency per batch, parameters and multiply-accumulates.

These numbers feed the quantization report and ``docs/benchmarks.md``. Latency is a benchmark,
never asserted in tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.viewset import ViewSet
from edge_agent.cpu import ort_session_options
from engines.errors import EnginesInputError


@dataclass(frozen=True)
class Latency:
    """Median and 90th-percentile wall time of one model call."""

    batch: int
    threads: int
    median_ms: float
    p90_ms: float

    @property
    def per_person_ms(self) -> float:
        return self.median_ms / self.batch


def measure_latency(
    onnx_path: str | Path,
    views: ViewSet,
    batch: int,
    threads: int = 1,
    iters: int = 50,
    warmup: int = 5,
    kernel: str | None = None,
) -> Latency:
    """Time ONNX Runtime CPU inference of one batch of real samples.

    Args:
        onnx_path: Model file.
        views: Real samples (at least ``batch``).
        batch: Batch size.
        threads: Intra-op threads (the agent's ``inference.backend.threads``).
        iters: Timed runs.
        warmup: Untimed runs first (allocations, caches).
        kernel: Time with the agent's options for a CPU of this `edge_agent.cpu.int8_kernel` family
            (None: this host's), e.g. to price the exact INT8 kernel where it is not needed.
    """
    import onnxruntime as ort

    if not 1 <= batch <= len(views):
        raise EnginesInputError(f"batch={batch}: must be in [1, {len(views)}] (samples available)")
    # The agent's own options: a latency measured without them would not be the agent's.
    sess = ort.InferenceSession(
        str(onnx_path), ort_session_options(threads, kernel), providers=["CPUExecutionProvider"]
    )
    feed = {k: np.ascontiguousarray(v[:batch]) for k, v in views.inputs.items()}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return Latency(batch, threads, float(np.median(times)), float(np.percentile(times, 90)))


@dataclass(frozen=True)
class ModelCost:
    """Size and arithmetic of a model for one person (batch 1, both views)."""

    parameters: int
    macs: int

    @property
    def gflops(self) -> float:
        """Billions of floating-point operations (2 per multiply-accumulate)."""
        return 2 * self.macs / 1e9


def probe_shapes(model: Any, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of intermediate tensors at batch 1, by running the model once on zeros.

    Static ONNX shape inference loses the spatial sizes at the encoder's batch reshapes; running
    the graph does not.

    Args:
        model: ``onnx.ModelProto`` with static per-sample input shapes.
        names: Float tensors to measure.
    """
    import onnx
    import onnxruntime as ort

    if not names:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in present
    )
    sess = ort.InferenceSession(
        probe.SerializeToString(), ort_session_options(1), providers=["CPUExecutionProvider"]
    )
    feed = {
        i.name: np.zeros([1, *(d.dim_value for d in i.type.tensor_type.shape.dim[1:])], np.float32)
        for i in model.graph.input
    }
    return {n: tuple(int(d) for d in out.shape) for n, out in zip(names, sess.run(names, feed), strict=True)}


def model_cost(onnx_path: str | Path) -> ModelCost:
    """Parameters (weight initializers) and MACs of Conv/Gemm/MatMul for one person (batch 1).

    Weights shared by both views are counted once as parameters but twice as MACs (the encoder
    runs on both views). In a Q/DQ model a weight is the INT8 initializer behind its
    DequantizeLinear, so FP32 and INT8 files of one model give the same figures.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    weights = {**{k: v for k, v in dequantized.items() if v in inits}, **{k: k for k in inits}}
    # Scales and zero points of Q/DQ nodes are not parameters; INT8 weights behind a DQ are.
    aux = {
        name
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
        for name in n.input[1:]
    }
    params = sum(
        int(a.size)
        for name, a in inits.items()
        if name not in aux and (a.dtype.kind == "f" or name in weights.values())
    )
    heavy = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in weights]
    shapes = probe_shapes(model, [n.output[0] for n in heavy])
    macs = 0
    for node in heavy:
        out = shapes[node.output[0]]
        w = inits[weights[node.input[1]]]
        if node.op_type == "Conv":
            macs += int(np.prod(out)) * int(np.prod(w.shape[1:]))
        else:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            macs += int(np.prod(out)) * int(w.shape[1 if trans_b else 0])
    return ModelCost(params, macs)
