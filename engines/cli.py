"""``affectline engines export | calibrate | quantize | build | verify``: thin wrappers over the library.

Each command prints a short report and returns an exit code; errors become one line on stderr
(2: bad input, 1: a check or the runtime failed), never a traceback. Real research data is found
under ``../shared/data`` (or ``$AFFECTLINE_SHARED/data``) when ``--data`` is not given.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.ranges import AT_LEAST_0, AT_LEAST_1, flag_type

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = ("ferplus", "expw")


def default_specs() -> list[str]:
    """Dataset specs for the research data next to the repo, if present (a user's machine has none)."""
    shared = Path(os.environ.get("AFFECTLINE_SHARED", REPO.parent / "shared")) / "data"
    return [f"{kind}:{shared / kind}" for kind in DEFAULT_DATASETS if (shared / kind).exists()]


def _specs(args: argparse.Namespace) -> list[str]:
    return list(args.data) if args.data else default_specs()


def _model_path(name: str, what: str = "model") -> Path:
    """The shipped file of a built-in name (``default``, ...); anything else is a path that must exist.

    Raises:
        EnginesInputError: ``auto`` (the agent's choice per CPU, not one file to build from), or
            not a file; both name the built-in names.
    """
    from edge_agent.infer import AUTO_MODEL, BUILTIN_MODELS
    from engines.errors import EnginesInputError

    names = ", ".join(BUILTIN_MODELS)
    if name == AUTO_MODEL:
        raise EnginesInputError(
            f"model 'auto' is the agent's choice per CPU, not one file: name one of {names}"
        )
    path = BUILTIN_MODELS.get(name, Path(name))
    if not path.is_file():
        raise EnginesInputError(f"{what} {name!r}: {path} is not a file (or a built-in name: {names})")
    return path


def _samples(args: argparse.Namespace, meta: Any, split: str, count: int) -> Any:
    """``--samples FILE.npz``, else held-out dataset samples, else a clear error."""
    from calibration.datasets import CalibrationDataError, dataset_views
    from calibration.viewset import ViewSet

    if args.samples:
        return ViewSet.load(args.samples)
    specs = _specs(args)
    if not specs:
        raise CalibrationDataError(
            "no real samples: pass --samples FILE.npz (from `affectline engines calibrate`) "
            "or --data kind:path"
        )
    return dataset_views(meta, specs, split, count, seed=1, balanced=False)


def _cmd_export(args: argparse.Namespace) -> int:
    from engines.export import export_onnx
    from engines.verify import read_meta

    meta = read_meta(args.checkpoint)
    report = export_onnx(
        args.checkpoint, args.out, _samples(args, meta, "test", args.count), opset=args.opset
    )
    print(f"{report.onnx}: opset {report.opset}, {report.parameters:,} parameters")
    sizes = ", ".join(map(str, report.batch_sizes))
    print(f"ONNX Runtime vs PyTorch: {report.parity.line()}; batch sizes {sizes}")
    print(f"sidecar: {report.sidecar}")
    return EXIT_OK


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from calibration.build import build_calibration_set, save_calibration_set
    from calibration.video import camera_from_uri
    from engines.errors import EnginesInputError
    from engines.verify import read_meta

    if Path(args.out).suffix != ".npz":  # before watching a stream for up to an hour
        raise EnginesInputError(f"--out={args.out}: a view set file must end in .npz")
    model = _model_path(args.model)
    detection = None
    if args.config:
        from edge_agent.config import load_config

        detection = load_config(args.config).detection
    camera = camera_from_uri(args.from_video) if args.from_video else None
    specs = [] if args.no_datasets else _specs(args)
    result = build_calibration_set(
        read_meta(model),
        specs=specs,
        camera=camera,
        seconds=args.seconds,
        every_s=args.every,
        n=args.count,
        min_count=args.min_count,
        detection=detection,
        seed=args.seed,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
    )
    digest = save_calibration_set(result, args.out, str(model))
    if result.video is not None:
        v = result.video
        print(
            f"video: {v.frames} frames over {v.seconds:.1f} s, faces in {v.frames_with_faces}, "
            f"{v.faces} face views"
        )
    for line in result.coverage.lines():
        print(line)
    print(f"{args.out}: sha256 {digest}")
    return EXIT_OK


def _cmd_quantize(args: argparse.Namespace) -> int:
    from calibration.datasets import gate_views
    from engines.quantize import LATENCY_BATCHES, quantize_int8
    from engines.verify import read_meta

    onnx = _model_path(args.onnx)
    meta = read_meta(onnx)
    if args.samples or not _specs(args):
        eval_set = _samples(args, meta, "test", args.count)
    else:
        split, eval_set = gate_views(meta, _specs(args), args.count, seed=1)
        print(f"accuracy gate on the {split} part of {', '.join(_specs(args))}")
    report = quantize_int8(
        onnx,
        args.calibration,
        args.out,
        eval_set,
        method=args.method,
        target=args.target,
        percentile=args.percentile,
        keep_fp32=args.keep_fp32,
        max_top1_drop=args.max_drop,
        min_agreement=args.min_agreement,
        threads=args.threads,
        latency_batches=() if args.no_bench else LATENCY_BATCHES,
    )
    for line in report.lines():
        print(line)
    print(f"sidecar: {report.sidecar}")
    return EXIT_OK


def _cmd_build(args: argparse.Namespace) -> int:
    from engines.errors import EnginesInputError
    from engines.trt_build import build_engine
    from engines.trt_plan import BatchRange

    if not args.samples and not args.no_verify:
        raise EnginesInputError("--samples FILE.npz is needed to check the engine (or --no-verify)")
    samples = None if args.no_verify else args.samples
    report = build_engine(
        _model_path(args.onnx),
        args.out,
        precision=args.precision,
        batch=BatchRange.parse(args.batch),
        fallback=not args.no_fallback,
        fp32_onnx=args.fp32_onnx,
        dla_core=args.dla_core,
        calibration=args.calibration,
        timing_cache=args.timing_cache,
        workspace_mb=args.workspace_mb,
        device=args.device,
        samples=samples,
    )
    for note in report.skipped:
        print(f"skipped {note}")
    for note in report.plan.notes:
        print(f"plan: {note}")
    print(f"{report.engine}: {report.plan.precision} from {report.onnx} in {report.seconds:.0f} s")
    print(f"check vs ONNX: {report.verification}")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from engines.verify import read_meta, verify_model

    model = _model_path(args.model)
    # Checked before the samples load; built-in names work here as for the model.
    reference = _model_path(args.reference, "--reference") if args.reference else None
    samples = _samples(args, read_meta(model), "test", args.count)
    report = verify_model(model, samples, reference=reference, threads=args.threads)
    print(f"{report.model} ({report.precision}) vs {report.reference}: {report.agreement.line()}")
    return EXIT_OK if report.agreement.ok else EXIT_FAIL


def _error_types() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """The library errors that mean bad input (exit 2) and a failed check or runtime (exit 1).

    Imported on use so that ``affectline --help`` does not load the libraries.
    """
    from calibration.datasets import CalibrationDataError
    from calibration.viewset import ViewSetError
    from edge_agent.config import ConfigError
    from edge_agent.infer import ModelLoadError
    from edge_agent.modelmeta import ModelContractError
    from engines.errors import EngineMismatchError, EnginesInputError, TensorRTUnavailable, VerificationError
    from train.errors import CheckpointError  # a torch-free module: a Jetson image may have no torch

    bad_input = (
        EnginesInputError,
        CalibrationDataError,
        ViewSetError,
        ModelContractError,
        ConfigError,
        ModelLoadError,
        CheckpointError,
    )
    return bad_input, (VerificationError, TensorRTUnavailable, EngineMismatchError)


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn library errors into one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        bad_input, failed = _error_types()
        # Model loaders, checkpoints and files raise the built-in ones; they still get one line.
        handled: tuple[type[Exception], ...] = (*bad_input, *failed, RuntimeError, ValueError, OSError)
        try:
            return func(args)
        except handled as exc:
            # Our own errors are worded for the user; anything else is named by its type.
            message = str(exc) if isinstance(exc, bad_input + failed) else f"{type(exc).__name__}: {exc}"
            print(f"engines {args.engines_command}: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT if isinstance(exc, bad_input) else EXIT_FAIL

    return run


def _add_data(p: argparse.ArgumentParser, samples: bool = True) -> None:
    if samples:
        p.add_argument("--samples", help="real samples .npz (default: held-out dataset samples from --data)")
    p.add_argument(
        "--data",
        action="append",
        metavar="KIND:PATH",
        help="dataset spec, repeatable (default: ../shared/data/{ferplus,expw} if present)",
    )
    p.add_argument(
        "--count", type=flag_type(int, AT_LEAST_1), default=512, help="samples to use (default 512)"
    )


def register(subparsers: Any) -> None:
    """Add ``affectline engines ...`` to the top-level CLI."""
    engines = subparsers.add_parser("engines", help="export, calibrate, quantize, build and verify models")
    sub = engines.add_subparsers(dest="engines_command", required=True)

    p = sub.add_parser("export", help="checkpoint -> verified FP32 ONNX with metadata")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="target .onnx")
    p.add_argument("--opset", type=int, default=17)
    _add_data(p)
    p.set_defaults(func=_guarded(_cmd_export))

    p = sub.add_parser("calibrate", help="build a calibration set (.npz) from a camera/clip and/or datasets")
    p.add_argument(
        "--model",
        required=True,
        help="model the views are cut for: .onnx, .pt, default, default-int8, default-int8-cpu",
    )
    p.add_argument("--out", required=True, help="target .npz")
    p.add_argument(
        "--from-video", metavar="URI", help="rtsp://..., a USB index, a GStreamer pipeline or a clip"
    )
    p.add_argument("--seconds", type=float, default=60.0, help="how long to watch --from-video (default 60)")
    p.add_argument(
        "--every",
        type=float,
        default=0.2,
        help="minimum seconds between --from-video frames used, so samples are not near-duplicates "
        "(default 0.2)",
    )
    p.add_argument("--config", help="agent config whose detection settings to use for --from-video")
    p.add_argument("--no-datasets", action="store_true", help="camera samples only")
    p.add_argument(
        "--min-count", type=flag_type(int, AT_LEAST_1), help="fail below this many samples (default: --count)"
    )
    p.add_argument("--seed", type=flag_type(int, AT_LEAST_0), default=0)
    p.add_argument(
        "--test-fraction", type=float, help="training's held-out share (ExpW split; default: the model's)"
    )
    p.add_argument("--split-seed", type=int, help="training's split seed (default: the model's)")
    _add_data(p, samples=False)
    p.set_defaults(func=_guarded(_cmd_calibrate))

    p = sub.add_parser("quantize", help="FP32 ONNX -> INT8 Q/DQ ONNX with an accuracy report")
    p.add_argument("onnx", help="FP32 ONNX (or default)")
    p.add_argument("--calibration", required=True, help="calibration .npz")
    p.add_argument("--out", required=True, help="target .onnx")
    p.add_argument("--method", default="percentile", help="percentile (default), entropy, minmax")
    p.add_argument("--target", default="portable", help="portable (TensorRT + ONNX Runtime, default) or cpu")
    p.add_argument("--percentile", type=float, default=99.999)
    p.add_argument(
        "--keep-fp32",
        help="fixed FP32 step (none, heads, stem, early, early+heads, early+heads+last); default: "
        "climb until the accuracy budget holds",
    )
    p.add_argument("--max-drop", type=float, default=0.5, help="allowed top-1 drop in points (default 0.5)")
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.9,
        help="unlabelled --samples: INT8/FP32 top-1 agreement (0.9)",
    )
    p.add_argument("--threads", type=flag_type(int, AT_LEAST_1), default=1)
    p.add_argument("--no-bench", action="store_true", help="skip the CPU latency measurement")
    _add_data(p)
    p.set_defaults(func=_guarded(_cmd_quantize), count=5000)

    p = sub.add_parser("build", help="TensorRT engine for this device (run on the target)")
    p.add_argument("onnx", help="INT8 Q/DQ ONNX or default-int8 (FP32 ONNX or default for fp16/fp32)")
    p.add_argument("--out", required=True, help="target .engine")
    p.add_argument("--precision", default="int8", help="int8 (default), fp16, fp32")
    p.add_argument(
        "--batch",
        default="1,8,16",
        help="MIN,OPT,MAX batch of the profile (default 1,8,16; DLA: one size, e.g. 8,8,8)",
    )
    p.add_argument("--no-fallback", action="store_true", help="fail instead of falling back to fp16/fp32")
    p.add_argument("--fp32-onnx", help="FP32 ONNX for fallbacks (default: the Q/DQ file's source)")
    p.add_argument(
        "--dla-core", type=flag_type(int, AT_LEAST_0), help="DLA core (Jetson AGX/NX Orin, TensorRT <= 10.7)"
    )
    p.add_argument("--calibration", help="calibration .npz (legacy implicit INT8 from an FP32 ONNX only)")
    p.add_argument("--timing-cache", help="timing cache file (default <out>.timing-cache)")
    p.add_argument("--workspace-mb", type=int, default=1024)
    p.add_argument("--device", type=flag_type(int, AT_LEAST_0), default=0)
    p.add_argument("--samples", help="real samples .npz to check the engine against its ONNX")
    p.add_argument(
        "--no-verify", action="store_true", help="skip the post-build check (recorded in the sidecar)"
    )
    p.set_defaults(func=_guarded(_cmd_build))

    p = sub.add_parser("verify", help="run a model on real samples and print agreement with its reference")
    p.add_argument("model", help=".onnx, .engine or .pt (or default, default-int8, default-int8-cpu)")
    p.add_argument("--reference", help="reference model (default: the source named in the sidecar)")
    p.add_argument("--threads", type=flag_type(int, AT_LEAST_1), default=1)
    _add_data(p)
    p.set_defaults(func=_guarded(_cmd_verify), count=256)
