"""FP32 ONNX -> one portable INT8 Q/DQ ONNX (ONNX Runtime CPU and TensorRT), with an accuracy gate.

Explicit quantization with ONNX Runtime's ``quantize_static`` in QDQ format: INT8 weights
quantized per output channel, INT8 activations with symmetric scales (zero point 0, which is what
TensorRT accepts), scales from entropy or percentile calibration on a real calibration set.

The result must keep top-1 accuracy on labelled held-out data within ``max_top1_drop`` points of
FP32. If it does not, nodes are kept in FP32 step by step (`KEEP_LADDER`: the fused heads, then
the high-resolution early layers, then the last convolution) until it does; the report says which.
If no step meets the budget the file is removed and `VerificationError` is raised.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.viewset import ViewSet, file_hash
from engines.artifacts import read_sidecar, sha256_file, sidecar_path, write_sidecar
from engines.bench import Latency, measure_latency, model_cost, probe_shapes
from engines.errors import EnginesInputError, VerificationError
from engines.verify import TOLERANCES, Agreement, check_inputs, compare, open_runner, run_views

log = logging.getLogger(__name__)

METHODS = ("entropy", "percentile", "minmax")
# ``portable``: signed INT8, symmetric (zero point 0) — what TensorRT needs; ONNX Runtime runs it too.
# ``cpu``: unsigned INT8 activations with zero points — ONNX Runtime on x86 fuses ReLU6 into the
# quantized convolutions (faster there), but TensorRT cannot build it.
TARGETS = ("portable", "cpu")
MAX_TOP1_DROP = 0.5  # accuracy points
MIN_AGREEMENT = 0.9  # without labels: share of samples where INT8 and FP32 pick the same class
# Steps of FP32 fallback, tried in order until the accuracy budget holds.
KEEP_LADDER = ("none", "heads", "stem", "early", "early+heads", "early+heads+last")
LATENCY_BATCHES = (1, 8)
CALIB_BATCH = 16
# Q/DQ goes on the inputs of the compute-heavy ops and the residual adds: what TensorRT fuses into
# INT8 kernels and ONNX Runtime runs as QLinearConv/QGemm/QLinearAdd. LayerNorm, pooling and the
# activations stay FP32 between them.
QUANTIZED_OPS = ("Conv", "Gemm", "Add")


@dataclass
class QuantizeReport:
    """What `quantize_int8` wrote, with the FP32 vs INT8 comparison."""

    onnx: Path
    sidecar: Path
    method: str
    target: str
    keep_fp32_step: str
    keep_fp32_nodes: list[str]
    fp32_accuracy: float | None
    int8_accuracy: float | None
    top1_drop_points: float | None
    agreement: Agreement
    eval_samples: int
    budget_points: float | None
    min_agreement: float | None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, dict[int, Latency]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"INT8 Q/DQ, {self.target} ({self.method} calibration) -> {self.onnx}"]
        if self.fp32_accuracy is not None and self.int8_accuracy is not None:
            out.append(
                f"held-out top-1: FP32 {self.fp32_accuracy:.2%}, INT8 {self.int8_accuracy:.2%}, "
                f"drop {self.top1_drop_points:+.2f} points on {self.agreement.labelled} labelled samples "
                f"(budget {self.budget_points})"
            )
        else:
            out.append(
                f"no labels: accuracy not measurable; gate: top-1 agreement with FP32 >= {self.min_agreement}"
            )
        out += [
            f"kept in FP32: {self.keep_fp32_step} ({len(self.keep_fp32_nodes)} nodes)",
            f"agreement with FP32: {self.agreement.line()}",
        ]
        for precision, by_batch in self.latency.items():
            for b, lat in by_batch.items():
                out.append(
                    f"CPU latency {precision} batch {b}: {lat.median_ms:.2f} ms "
                    f"({lat.per_person_ms:.2f} ms/person, p90 {lat.p90_ms:.2f}, {lat.threads} thread(s))"
                )
        return out


class ViewSetReader:
    """ONNX Runtime ``CalibrationDataReader`` over a view set, in fixed batches, with range selection.

    ``set_range`` lets ONNX Runtime collect histograms a slice at a time
    (``CalibStridedMinMax``), so memory stays bounded by one slice's activations.
    """

    def __init__(self, views: ViewSet, batch: int):
        self.batches = list(views.batches(batch))
        self._end = len(self.batches)
        self._pos = 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._end, self._pos = min(end_index, len(self.batches)), start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        self._pos += 1
        return self.batches[self._pos - 1]


def keep_nodes(model: Any, step: str) -> list[str]:
    """Node names to keep in FP32 for a `KEEP_LADDER` step (parts joined by ``+``).

    ``heads``: every Gemm/MatMul (fusion and both heads: tiny, but closest to the outputs).
    ``stem``: Conv/Add layers whose output is at >= 1/2 of the input resolution.
    ``early``: Conv/Add layers at >= 1/4 of the input resolution. Early, high-resolution layers
    with few channels (and MobileNet's depthwise convolutions) lose the most to INT8.
    ``last``: the last Conv before each global pooling.
    """
    if step not in KEEP_LADDER:
        raise EnginesInputError(f"--keep-fp32={step!r}: allowed {', '.join(KEEP_LADDER)}")
    parts = set(step.split("+"))
    nodes = list(model.graph.node)
    keep: list[str] = []
    if "heads" in parts:
        keep += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    if parts & {"stem", "early"}:
        keep += _high_resolution(model, 0.5 if "stem" in parts else 0.25)
    if "last" in parts:
        keep += [n for n in _last_convs(nodes) if n not in keep]
    return keep


def _high_resolution(model: Any, fraction: float) -> list[str]:
    """Conv/Add nodes whose output side is at least ``fraction`` of the smallest input side."""
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Add")]
    shapes = probe_shapes(model, [n.output[0] for n in nodes])
    limit = fraction * min(i.type.tensor_type.shape.dim[-1].dim_value for i in model.graph.input)
    return [n.name for n in nodes if len(shapes[n.output[0]]) == 4 and shapes[n.output[0]][-1] >= limit]


def _last_convs(nodes: list[Any]) -> list[str]:
    """Last Conv before each global pooling (ReduceMean/GlobalAveragePool), walking back over activations."""
    producer = {o: n for n in nodes for o in n.output}
    out = []
    for n in nodes:
        if n.op_type not in ("ReduceMean", "GlobalAveragePool"):
            continue
        cur = producer.get(n.input[0])
        while cur is not None and cur.op_type != "Conv":
            cur = producer.get(cur.input[0])
        if cur is not None:
            out.append(cur.name)
    return out


def check_trt_qdq(model: Any) -> list[str]:
    """Problems that would stop TensorRT from building this Q/DQ model (empty list = none).

    TensorRT takes signed INT8 Q/DQ with zero point 0 and per-tensor activation scales.
    """
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    problems = []
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes")
    for n in qdq:
        if len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp = inits[n.input[2]]
        if zp.data_type != TensorProto.INT8:
            problems.append(
                f"{n.name}: zero point type {TensorProto.DataType.Name(zp.data_type)}, TensorRT needs INT8"
            )
        elif np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{n.name}: non-zero zero point (asymmetric), TensorRT needs symmetric")
    return problems


def _calibrate_and_quantize(
    src: Path,
    out: Path,
    reader: ViewSetReader,
    method: str,
    keep: list[str],
    cache: Path,
    percentile: float,
    target: str,
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }
    portable = target == "portable"
    reader.set_range(0, len(reader))
    quantize_static(
        str(src),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QInt8 if portable else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep,
        calibrate_method=methods[method],
        calibration_cache_path=str(cache),
        extra_options={
            "ActivationSymmetric": portable,
            "WeightSymmetric": True,
            "CalibStridedMinMax": 1,
            "CalibPercentile": percentile,
            "CalibTensorRangeSymmetric": portable,
            # TensorRT rejects INT32 bias DequantizeLinear: biases stay FP32.
            "QuantizeBias": False,
        },
    )


def _restore_metadata(src: Path, out: Path) -> None:
    """Carry the FP32 model's ``metadata_props`` (the agent's contract) into the quantized file."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    model = onnx.load(str(out))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "affectline engines quantize"
    onnx.save(model, str(out))


def _score(ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """FP32 vs INT8 logits (N, C): accuracies and their drop in points on labelled rows (None
    without labels), and top-1 agreement on all rows."""
    m = labels >= 0
    out: dict[str, Any] = {
        "agreement": float(np.mean(ref.argmax(1) == got.argmax(1))),
        "fp32_accuracy": None,
        "int8_accuracy": None,
        "drop_points": None,
    }
    if m.any():
        fp32, int8 = (float(np.mean(x[m].argmax(1) == labels[m])) for x in (ref, got))
        out.update(fp32_accuracy=fp32, int8_accuracy=int8, drop_points=100 * (fp32 - int8))
    return out


def quantize_int8(
    fp32_onnx: str | Path,
    calibration: str | Path,
    out: str | Path,
    eval_set: ViewSet,
    *,
    method: str = "percentile",
    target: str = "portable",
    percentile: float = 99.999,
    keep_fp32: str | None = None,
    max_top1_drop: float = MAX_TOP1_DROP,
    min_agreement: float = MIN_AGREEMENT,
    threads: int = 1,
    latency_batches: Sequence[int] = LATENCY_BATCHES,
) -> QuantizeReport:
    """Quantize an FP32 ONNX to INT8 Q/DQ and check it.

    Args:
        fp32_onnx: Exported FP32 model (with its sidecar).
        calibration: Calibration ``.npz`` (`calibration.build`), cut for this model.
        out: Target ``.onnx``.
        eval_set: Held-out samples, never the calibration samples (checked by origin): labelled
            (a dataset validation part) for the accuracy gate, or unlabelled (a second camera
            recording) for the agreement gate.
        method: ``percentile`` (default), ``entropy`` or ``minmax``.
        target: ``portable`` (TensorRT and ONNX Runtime) or ``cpu`` (ONNX Runtime only); see `TARGETS`.
        percentile: Percentile for ``percentile`` calibration, in [99, 100].
        keep_fp32: One `KEEP_LADDER` step to use as is, or None to climb the ladder as needed.
        max_top1_drop: Accuracy budget in points, in [0, 100] (labelled eval set).
        min_agreement: Top-1 agreement with FP32 required when the eval set has no labels (a
            user's camera), in [0, 1].
        threads: ONNX Runtime threads for evaluation and latency.
        latency_batches: Batch sizes to time (empty: skip timing).

    Raises:
        EnginesInputError: bad argument, samples cut for another model, or eval samples that are
            also calibration samples.
        VerificationError: no ladder step meets the budget, or the output fails its checks.
    """
    import onnx

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    _check_args(fp32_onnx, out, method, target, percentile, max_top1_drop, min_agreement)
    # Checked before any work: failing these after the ladder would leave a file without a sidecar.
    too_big = [b for b in latency_batches if not 1 <= b <= len(eval_set)]
    if too_big:
        raise EnginesInputError(
            f"latency batch sizes {too_big}: must be in [1, {len(eval_set)}] (eval samples available)"
        )
    src_side = read_sidecar(fp32_onnx)  # the INT8 sidecar records the FP32 model's provenance
    labelled = bool((eval_set.labels >= 0).any())
    calib = ViewSet.load(calibration)
    shared = sorted(set(calib.origin.tolist()) & set(eval_set.origin.tolist()))
    if shared:
        # Scoring on images the ranges were fitted to would flatter the quantized model.
        raise EnginesInputError(
            f"eval set shares {len(shared)} sample(s) with the calibration set {calibration} "
            f"(e.g. {shared[0]}); evaluate on held-out samples"
        )
    ref_runner = open_runner(fp32_onnx, threads)
    try:
        check_inputs(ref_runner.meta, calib, str(calibration))
        check_inputs(ref_runner.meta, eval_set, "eval set")
        ref = run_views(ref_runner, eval_set)
    finally:
        ref_runner.close()

    def passes(score: dict[str, Any]) -> bool:
        return bool(
            score["drop_points"] <= max_top1_drop if labelled else score["agreement"] >= min_agreement
        )

    steps = list(KEEP_LADDER) if keep_fp32 is None else [keep_fp32]
    gate = f"top-1 drop <= {max_top1_drop} points" if labelled else f"agreement >= {min_agreement}"
    settings = {
        "method": method,
        "target": target,
        "percentile": percentile,
        "threads": threads,
        "gate": gate,
    }
    step, keep, got, attempts = _climb(fp32_onnx, out, calib, eval_set, ref[0], steps, passes, settings)
    problems = check_trt_qdq(onnx.load(str(out))) if target == "portable" else []
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except onnx.checker.ValidationError as exc:
        problems.append(f"onnx.checker: {exc}")
    if problems:
        out.unlink(missing_ok=True)
        raise VerificationError(f"{out}: quantized model fails its checks and was removed: {problems[:5]}")
    score = attempts[-1]
    report = QuantizeReport(
        out,
        sidecar_path(out),
        method,
        target,
        step,
        keep,
        score["fp32_accuracy"],
        score["int8_accuracy"],
        score["drop_points"],
        compare(ref, got, TOLERANCES["int8"], eval_set.labels),
        len(eval_set),
        max_top1_drop if labelled else None,
        None if labelled else min_agreement,
        attempts,
    )
    if latency_batches:
        report.latency = {
            p: {b: measure_latency(f, eval_set, b, threads) for b in latency_batches}
            for p, f in (("fp32", fp32_onnx), ("int8", out))
        }
    _write_report(report, fp32_onnx, src_side, calibration, calib, eval_set, percentile)
    return report


def _check_args(
    fp32_onnx: Path,
    out: Path,
    method: str,
    target: str,
    percentile: float,
    max_top1_drop: float,
    min_agreement: float,
) -> None:
    if method not in METHODS:
        raise EnginesInputError(f"--method={method!r}: allowed {', '.join(METHODS)}")
    if target not in TARGETS:
        raise EnginesInputError(f"--target={target!r}: allowed {', '.join(TARGETS)}")
    if not 99 <= percentile <= 100:
        raise EnginesInputError(f"--percentile={percentile}: allowed [99, 100]")
    if not 0 <= max_top1_drop <= 100:
        raise EnginesInputError(f"--max-drop={max_top1_drop}: allowed [0, 100] points")
    if not 0 <= min_agreement <= 1:
        raise EnginesInputError(f"--min-agreement={min_agreement}: allowed [0, 1]")
    if out.suffix != ".onnx" or out.resolve() == fp32_onnx.resolve():
        raise EnginesInputError(f"--out={str(out)!r}: must be a new .onnx file")


def _climb(
    fp32_onnx: Path,
    out: Path,
    calib: ViewSet,
    eval_set: ViewSet,
    ref_logits: np.ndarray,
    steps: list[str],
    passes: Callable[[dict[str, Any]], bool],
    settings: dict[str, Any],
) -> tuple[str, list[str], tuple[np.ndarray, np.ndarray], list[dict[str, Any]]]:
    """Quantize with more nodes kept in FP32 at each step until ``passes``; copy the winner to ``out``.

    Returns:
        The step, its FP32 node names, the INT8 outputs on the eval set, and every attempt's score
        (the last one is the winner's).

    Raises:
        VerificationError: no step passes.
    """
    import onnx

    src_model = onnx.load(str(fp32_onnx))
    reader = ViewSetReader(calib, CALIB_BATCH)
    attempts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="affectline-quant-") as tmp:
        cache = Path(tmp) / "ranges.json"  # calibration ranges: computed once, reused down the ladder
        for step in steps:
            keep = keep_nodes(src_model, step)
            candidate = Path(tmp) / f"int8-{step}.onnx"
            _calibrate_and_quantize(
                fp32_onnx,
                candidate,
                reader,
                settings["method"],
                keep,
                cache,
                settings["percentile"],
                settings["target"],
            )
            _restore_metadata(fp32_onnx, candidate)
            runner = open_runner(candidate, settings["threads"])
            try:
                got = run_views(runner, eval_set)
            finally:
                runner.close()
            score = _score(ref_logits, got[0], eval_set.labels)
            attempts.append({"keep_fp32": step, "nodes": len(keep), **score})
            log.info("quantize keep=%s: %s", step, score)
            if passes(score):
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(candidate, out)
                return step, keep, got, attempts
    raise VerificationError(
        f"INT8 misses {settings['gate']} at every FP32-fallback step: {attempts}; "
        "try another --method or a larger, more representative calibration set"
    )


def _write_report(
    report: QuantizeReport,
    fp32_onnx: Path,
    src_side: dict[str, Any],
    calibration: str | Path,
    calib: ViewSet,
    eval_set: ViewSet,
    percentile: float,
) -> None:
    cost = model_cost(fp32_onnx)
    write_sidecar(
        report.onnx,
        "onnx-int8-qdq",
        {
            "source_onnx": fp32_onnx.name
            if fp32_onnx.parent.resolve() == report.onnx.parent.resolve()
            else str(fp32_onnx),
            "source_onnx_sha256": sha256_file(fp32_onnx),
            "precision": "int8",
            "quantization": {
                "format": "QDQ",
                "target": report.target,
                "tensorrt_compatible": report.target == "portable",
                "weights": "int8 symmetric per-channel",
                "activations": "int8 symmetric per-tensor"
                if report.target == "portable"
                else "uint8 asymmetric per-tensor",
                "calibration": report.method,
                "percentile": percentile if report.method == "percentile" else None,
                "keep_fp32_step": report.keep_fp32_step,
                "keep_fp32_nodes": report.keep_fp32_nodes,
            },
            "calibration_set": str(calibration),
            "calibration_sha256": file_hash(calibration),
            "calibration_count": len(calib),
            "model_props": src_side.get("model_props", {}),
            "inputs": src_side.get("inputs", {}),
            "outputs": src_side.get("outputs", []),
            "cost": {
                "parameters": cost.parameters,
                "macs_per_person": cost.macs,
                "gflops_per_person": cost.gflops,
            },
            "verification": {
                "onnx_checker": "full_check passed",
                "tensorrt_qdq_constraints": "checked"
                if report.target == "portable"
                else "not applicable (cpu target)",
                "eval_set_sha256": eval_set.content_hash(),
                "eval_samples": len(eval_set),
                "fp32_top1": report.fp32_accuracy,
                "int8_top1": report.int8_accuracy,
                "top1_drop_points": report.top1_drop_points,
                "budget_points": report.budget_points,
                "min_agreement": report.min_agreement,
                "agreement_vs_fp32": report.agreement.to_record(),
                "attempts": report.attempts,
            },
            "latency_cpu": {
                p: {str(b): asdict(lat) for b, lat in d.items()} for p, d in report.latency.items()
            },
        },
    )
