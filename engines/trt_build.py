"""Build a TensorRT engine from an ONNX on the target device (``affectline engines build``).

Normal route: the INT8 Q/DQ ONNX from ``affectline engines quantize``, parsed into a strongly
typed network (TensorRT 10/11) so the Q/DQ scales fix every INT8 tensor. Decisions per TensorRT
version live in `engines.trt_plan`; this module only applies them: ONNX parsing, one optimization
profile for the batch range, optional DLA, a timing cache (faster rebuilds), the legacy
calibrator where planned, FP16/FP32 fallbacks when a precision cannot be built, and the sidecar.
After the build the engine is run on real samples against the ONNX it came from (ONNX Runtime).

Needs ``tensorrt`` and ``cuda-python``; nothing here runs without an NVIDIA GPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from calibration.viewset import ViewSet, file_hash
from engines.artifacts import load_onnx, read_sidecar, sha256_file, sidecar_path, write_sidecar
from engines.errors import EnginesInputError, TensorRTUnavailable, VerificationError
from engines.trt_plan import (
    BatchRange,
    BuildPlan,
    OnnxPrecision,
    TrtVersion,
    check_dla_batch,
    plan_build,
    precision_chain,
    profile_shapes,
)
from engines.trt_sidecar import KIND, EngineSidecar, rebuild_command

log = logging.getLogger(__name__)

WORKSPACE_MB = (64, 16384)
DEFAULT_BATCH = BatchRange(1, 8, 16)  # the agent batches up to inference.max_batch (16) persons


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module.

    Raises:
        TensorRTUnavailable: not installed, with how to get it.
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"TensorRT is not importable ({exc}). On Jetson it comes with JetPack "
            "(`sudo apt install nvidia-jetpack` or `python3-libnvinfer`); on x86 `pip install tensorrt`"
        ) from None
    return tensorrt


def inspect_onnx(
    path: str | Path,
) -> tuple[OnnxPrecision, dict[str, tuple[int, ...]], list[str], dict[str, str]]:
    """What the builder needs to know about an ONNX: precision, per-sample input shapes, outputs, metadata.

    Raises:
        EnginesInputError: unreadable file, an input that is not float32, or an input without
            static C, H, W.
    """
    import onnx

    model = load_onnx(path)
    ops = {n.op_type for n in model.graph.node}
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = any(i.data_type == fp16 for i in model.graph.initializer) or any(
        v.type.tensor_type.elem_type == fp16 for v in model.graph.input
    )
    inits = {i.name for i in model.graph.initializer}
    inputs = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            elem = onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()
            raise EnginesInputError(
                f"{path}: input {v.name!r} is {elem}; the agent feeds float32 (convert to FP16 with "
                "--keep_io_types)"
            )
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim[1:]]
        if not dims or any(d <= 0 for d in dims):
            raise EnginesInputError(
                f"{path}: input {v.name!r} needs static C, H, W after the batch axis, got {dims}"
            )
        inputs[v.name] = tuple(dims)
    precision = OnnxPrecision(has_qdq=bool(ops & {"QuantizeLinear", "DequantizeLinear"}), has_fp16=has_fp16)
    props = {p.key: p.value for p in model.metadata_props}
    return precision, inputs, [o.name for o in model.graph.output], props


@dataclass
class BuildReport:
    """What `build_engine` produced."""

    engine: Path
    sidecar: Path
    plan: BuildPlan
    onnx: Path
    seconds: float
    skipped: list[str] = field(default_factory=list)
    verification: str = "not run"


def _fp32_source(qdq_onnx: Path, fp32_onnx: str | Path | None) -> Path | None:
    """The FP32 ONNX for fallback builds: given, or the quantized file's recorded source."""
    if fp32_onnx is not None:
        return Path(fp32_onnx)
    if not sidecar_path(qdq_onnx).exists():
        return None
    src = read_sidecar(qdq_onnx).get("source_onnx")
    if not src:
        return None
    path = Path(src) if Path(src).is_absolute() else qdq_onnx.parent / src
    return path if path.is_file() else None


def refuse_non_trt_qdq(onnx_path: Path) -> None:
    """Refuse, before TensorRT is touched, a Q/DQ model TensorRT cannot take (the ONNX Runtime-only
    ``--target cpu`` file: unsigned activations with zero points). TensorRT would fail deep in the
    parser with a message about one node; this names the file and the way out.

    Raises:
        EnginesInputError: the model has Q/DQ nodes TensorRT rejects.
    """
    import onnx

    from engines.quantize import check_trt_qdq

    if not inspect_onnx(onnx_path)[0].has_qdq:
        return
    problems = check_trt_qdq(onnx.load(str(onnx_path), load_external_data=False))
    if problems:
        raise EnginesInputError(
            f"{onnx_path}: its Q/DQ nodes are for ONNX Runtime, not TensorRT ({len(problems)} problems, "
            f"first: {problems[0]}). Build from the portable INT8 file (`default-int8`, or `affectline "
            "engines quantize` without --target cpu), or from the FP32 ONNX for fp16/fp32"
        )


def build_engine(
    onnx_path: str | Path,
    out: str | Path,
    *,
    precision: str = "int8",
    batch: BatchRange = DEFAULT_BATCH,
    fallback: bool = True,
    fp32_onnx: str | Path | None = None,
    dla_core: int | None = None,
    calibration: str | Path | None = None,
    timing_cache: str | Path | None = None,
    workspace_mb: int = 1024,
    device: int = 0,
    samples: str | Path | None = None,
) -> BuildReport:
    """Build, save and verify a TensorRT engine for this device.

    Args:
        onnx_path: The Q/DQ INT8 ONNX (normal) or the FP32 ONNX (fp16/fp32, or legacy INT8 calibration).
        out: Engine file (``.engine``); the sidecar goes to ``<out>.json``.
        precision: ``int8``, ``fp16`` or ``fp32``.
        batch: Batch range of the optimization profile (one fixed size with ``dla_core``).
        fallback: Try the next wider precision when one cannot be planned or built.
        fp32_onnx: FP32 ONNX for fallbacks (default: the Q/DQ file's recorded source).
        dla_core: DLA core (Jetson AGX/NX, TensorRT <= 10.7), or None for the GPU.
        calibration: Calibration ``.npz`` (legacy implicit INT8 from an FP32 ONNX only).
        timing_cache: Timing cache file, read if present and updated (default ``<out>.timing-cache``).
        workspace_mb: Builder workspace limit in MiB, within ``WORKSPACE_MB``.
        device: CUDA device index.
        samples: ``.npz`` of real samples for the post-build check (read before building); None
            skips it (recorded in the sidecar).

    Raises:
        TensorRTUnavailable: no TensorRT / CUDA binding here.
        EnginesInputError: bad arguments, or no precision in the chain can be planned.
        VerificationError: every planned build failed, or the engine disagrees with its ONNX.
    """
    from engines.cuda_mem import call, device_info, import_cudart

    onnx_path, out = Path(onnx_path), Path(out)
    if not WORKSPACE_MB[0] <= workspace_mb <= WORKSPACE_MB[1]:
        raise EnginesInputError(
            f"--workspace-mb={workspace_mb}: allowed {WORKSPACE_MB[0]}..{WORKSPACE_MB[1]}"
        )
    check_dla_batch(dla_core, batch)
    if not onnx_path.is_file():
        raise EnginesInputError(f"ONNX {str(onnx_path)!r} is not a file")
    refuse_non_trt_qdq(onnx_path)
    views = ViewSet.load(samples) if samples is not None else None  # a bad file fails before the build
    chain = precision_chain(precision, fallback)  # bad arguments are named before TensorRT is needed
    if device < 0:
        raise EnginesInputError(f"--device={device}: must be >= 0 (a CUDA device index)")
    trt = import_tensorrt()
    cudart = import_cudart()
    call(cudart, cudart.cudaSetDevice(device))
    gpu_name, cc = device_info(device)
    version = TrtVersion.parse(trt.__version__)
    cache_path = Path(timing_cache) if timing_cache else out.with_name(out.name + ".timing-cache")
    t0 = time.monotonic()
    built = _first_buildable(
        trt, version, chain, onnx_path, fp32_onnx, dla_core, calibration, batch, cache_path, workspace_mb
    )
    src, plan, inputs, skipped = built.onnx, built.plan, built.inputs, built.skipped
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(built.blob)
    calib_hash = _calibration_hash(src, plan, calibration)
    sidecar = EngineSidecar(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=cc,
        precision=plan.precision,
        inputs={
            n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
            for n, s in profile_shapes(inputs, batch).items()
        },
        outputs=built.outputs,
        source_onnx=str(src),
        source_onnx_sha256=sha256_file(src),
        calibration_sha256=calib_hash,
        model_props=built.props,
        plan=asdict(plan),
        rebuild=rebuild_command(
            str(src),
            str(out),
            plan.precision,
            (batch.min, batch.opt, batch.max),
            dla_core,
            samples=str(samples) if samples is not None else None,
            calibration=str(calibration) if plan.implicit_calibration and calibration is not None else None,
            device=device,
        ),
    )
    report = BuildReport(out, sidecar_path(out), plan, src, time.monotonic() - t0, skipped)
    record = {
        **sidecar.to_record(),
        "skipped": skipped,
        "build_seconds": report.seconds,
        "timing_cache": str(cache_path),
    }
    # The runtime reads the sidecar, so it is written before the check and again with its result.
    write_sidecar(out, KIND, {**record, "verification": "pending"})
    try:
        report.verification = _verify(out, src, plan.precision, views, device)
    except Exception:
        # Whatever stopped the check (a disagreement, or the engine not opening), an unchecked
        # engine must not stay behind with a "pending" sidecar for the agent to load.
        out.unlink(missing_ok=True)
        sidecar_path(out).unlink(missing_ok=True)
        raise
    write_sidecar(out, KIND, {**record, "verification": report.verification})
    return report


@dataclass(frozen=True)
class _Built:
    """The first precision of the chain that built: its engine bytes, the ONNX it came from (with
    that file's inputs, outputs and metadata), its plan and the notes on the precisions skipped."""

    blob: bytes
    onnx: Path
    plan: BuildPlan
    inputs: dict[str, tuple[int, ...]]
    outputs: list[str]
    props: dict[str, str]
    skipped: list[str]


def _first_buildable(
    trt: Any,
    version: TrtVersion,
    chain: tuple[str, ...],
    onnx_path: Path,
    fp32_onnx: str | Path | None,
    dla_core: int | None,
    calibration: str | Path | None,
    batch: BatchRange,
    cache_path: Path,
    workspace_mb: int,
) -> _Built:
    """Plan and build each precision of ``chain`` in turn until one builds.

    Raises:
        EnginesInputError: no precision could be planned (the caller's choice of arguments).
        VerificationError: a planned build failed on this device and none after it succeeded.
    """
    skipped: list[str] = []
    has_qdq = inspect_onnx(onnx_path)[0].has_qdq
    for prec in chain:
        src = onnx_path if prec == "int8" or not has_qdq else _fp32_source(onnx_path, fp32_onnx)
        if src is None:
            skipped.append(f"{prec}: no FP32 ONNX for a fallback (pass --fp32-onnx)")
            continue
        kind, inputs, outputs, props = inspect_onnx(src)
        try:
            plan = plan_build(version, prec, kind, dla_core, calibration is not None)
        except EnginesInputError as exc:
            skipped.append(f"{prec}: {exc}")
            continue
        try:
            blob = _build(
                trt, plan, src, profile_shapes(inputs, batch), cache_path, workspace_mb, calibration
            )
        except VerificationError as exc:
            skipped.append(f"{prec}: build failed: {exc}")
            continue
        return _Built(blob, src, plan, inputs, outputs, props, skipped)
    # Planning refusals are the caller's choice of arguments; a failed build is this device's.
    error = VerificationError if any("build failed" in note for note in skipped) else EnginesInputError
    raise error(f"no engine could be built on TensorRT {version}: " + "; ".join(skipped))


def _calibration_hash(src: Path, plan: BuildPlan, calibration: str | Path | None) -> str:
    """Hash of the calibration data behind the INT8 scales: the npz (implicit) or the Q/DQ file's record."""
    if plan.implicit_calibration and calibration is not None:
        return file_hash(calibration)
    if plan.precision == "int8" and sidecar_path(src).exists():
        return str(read_sidecar(src).get("calibration_sha256", ""))
    return ""


def _build(
    trt: Any,
    plan: BuildPlan,
    onnx_path: Path,
    shapes: dict[str, Any],
    cache_path: Path,
    workspace_mb: int,
    calibration: str | Path | None,
) -> bytes:
    """Parse, configure and build; returns the serialized engine.

    Raises:
        VerificationError: the parser or the builder failed (their messages included).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VerificationError(f"ONNX parser: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    # A cache from another device/version is refused by set_timing_cache; one TensorRT cannot
    # read at all (a truncated file) may come back as None instead.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning(
            "timing cache %s is unreadable or from another device or version; starting a fresh one",
            cache_path,
        )
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    calibrator = _attach_calibrator(trt, builder, config, plan, onnx_path, shapes, calibration)
    try:
        blob = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    if blob is None:
        raise VerificationError("builder returned no engine (see TensorRT messages above)")
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(blob)


def _attach_calibrator(
    trt: Any,
    builder: Any,
    config: Any,
    plan: BuildPlan,
    onnx_path: Path,
    shapes: dict[str, Any],
    calibration: str | Path | None,
) -> Any:
    """Legacy implicit INT8 only: an entropy calibrator and a fixed-batch calibration profile."""
    if not plan.implicit_calibration:
        return None
    from engines.trt_calibrator import CalibrationBatches, CalibrationCache, make_entropy_calibrator

    assert calibration is not None  # plan_build requires it for implicit calibration
    views = ViewSet.load(calibration)
    opt_batch = next(iter(shapes.values()))[1][0]
    batches = CalibrationBatches(views.inputs, min(opt_batch, len(views)))
    if batches.dropped:
        log.info(
            "implicit INT8 calibration: %d batches of %d; the last %d sample(s) do not fill a batch",
            len(batches),
            batches.batch_size,
            batches.dropped,
        )
    cache = CalibrationCache(
        Path(calibration).with_suffix(".trt-calib"), sha256_file(onnx_path), file_hash(calibration)
    )
    profile = builder.create_optimization_profile()
    for name, (_, opt, _) in shapes.items():
        fixed = (batches.batch_size, *opt[1:])
        profile.set_shape(name, fixed, fixed, fixed)
    if not config.set_calibration_profile(profile):
        raise VerificationError(f"TensorRT refused the calibration profile (batch {batches.batch_size})")
    calibrator = make_entropy_calibrator(trt, batches, cache)
    config.int8_calibrator = calibrator
    return calibrator


def _verify(engine: Path, onnx_path: Path, precision: str, samples: ViewSet | None, device: int) -> str:
    """Engine (on ``device``) vs the ONNX it was built from (ONNX Runtime) on real samples; raises on
    disagreement."""
    if samples is None:
        return "skipped: no samples given (--no-verify)"
    from engines.verify import TOLERANCES, verify_model

    report = verify_model(
        engine, samples, reference=onnx_path, tolerance=TOLERANCES[precision], device=device
    )
    if not report.agreement.ok:
        raise VerificationError(f"{engine}: engine disagrees with {onnx_path}: {report.agreement.line()}")
    return report.agreement.line()
