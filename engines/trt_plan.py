"""What a TensorRT build must do on a given TensorRT version: pure decisions, no TensorRT import.

TensorRT changed how precision is chosen across versions, so the builder first makes a
`BuildPlan` from (TensorRT version, requested precision, what the ONNX contains, DLA or not):

- 8.6–9.x: weakly typed networks; an explicit Q/DQ ONNX is built with the INT8 flag (Q/DQ scales
  are honoured) and FP16 for the layers left unquantized. Every network there is created with
  ``EXPLICIT_BATCH``: without it the network has an implicit batch, which the ONNX parser refuses
  (10.x dropped implicit batch and ignores the flag).
- 10.x: strongly typed networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): the Q/DQ ONNX
  fixes every tensor's type, no precision flags. DLA (10.x ≤ 10.7 only) still needs the weak
  INT8/FP16 flags because DLA has no FP32 path.
- 11.x: always strongly typed; FP16/INT8 builder flags, ``int8_calibrator`` and calibration
  profiles are gone. FP16 needs an FP16 ONNX (ModelOpt AutoCast).
- Implicit INT8 calibration (``IInt8EntropyCalibrator2``) from an FP32 ONNX is only planned on
  versions that still have it (< 11), for targets where the Q/DQ route is not available; it is
  deprecated since 10.1.

Everything here is unit-tested without TensorRT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from engines.errors import EnginesInputError

PRECISIONS = ("int8", "fp16", "fp32")
MAX_BATCH = 256


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version, compared numerically (``10.10`` > ``10.9``)."""

    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """``"10.3.0.30"`` -> ``TrtVersion(10, 3, 0)``.

        Raises:
            EnginesInputError: text does not start with ``MAJOR.MINOR``.
        """
        m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
        if not m:
            raise EnginesInputError(f"TensorRT version {text!r} is not of the form MAJOR.MINOR[.PATCH]")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


OLDEST = TrtVersion(8, 6)  # first release whose ONNX parser covers opset 17 LayerNormalization
STRONG_TYPING = TrtVersion(10, 0)
CALIBRATOR_DEPRECATED = TrtVersion(10, 1)
WEAK_TYPING_REMOVED = TrtVersion(11, 0)
LAST_DLA = TrtVersion(10, 7, 999)  # NVIDIA: "TensorRT 10.7 was the last release that supported DLA"


@dataclass(frozen=True)
class OnnxPrecision:
    """What an ONNX file already fixes about precision."""

    has_qdq: bool
    has_fp16: bool


@dataclass(frozen=True)
class BuildPlan:
    """How to configure the TensorRT builder.

    Attributes:
        precision: What the engine computes in: ``int8``, ``fp16`` or ``fp32``.
        network_flags: ``NetworkDefinitionCreationFlag`` member names for ``create_network``
            (``EXPLICIT_BATCH`` before 10.x, ``STRONGLY_TYPED`` on 10.x).
        builder_flags: ``BuilderFlag`` member names to set on the config.
        strongly_typed: Types come from the ONNX (explicitly or, on 11.x, always).
        implicit_calibration: Run the legacy INT8 calibrator on the calibration set.
        dla_core: DLA core to place layers on, or None for the GPU.
        notes: Why, in words (printed by the CLI and written to the sidecar).
    """

    precision: str
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    strongly_typed: bool
    implicit_calibration: bool = False
    dla_core: int | None = None
    notes: tuple[str, ...] = field(default=())


def _check_target(version: TrtVersion, precision: str, dla_core: int | None) -> None:
    if precision not in PRECISIONS:
        raise EnginesInputError(f"--precision={precision!r}: allowed {', '.join(PRECISIONS)}")
    if version < OLDEST:
        raise EnginesInputError(
            f"TensorRT {version} is older than {OLDEST}, the oldest this builder supports"
        )
    if dla_core is None:
        return
    if dla_core < 0:
        raise EnginesInputError(f"--dla-core={dla_core}: must be >= 0 (Orin AGX/NX have cores 0 and 1)")
    if version > LAST_DLA:
        raise EnginesInputError(
            f"--dla-core={dla_core}: DLA needs TensorRT <= 10.7 (JetPack 6 ships 10.3); this is {version}"
        )
    if precision == "fp32":
        raise EnginesInputError(f"--dla-core={dla_core} with --precision=fp32: DLA runs only fp16 or int8")


def _typing(version: TrtVersion) -> tuple[tuple[str, ...], bool]:
    """Network flags for a strongly typed network on this version (11.x: always strong, no flag)."""
    if version >= WEAK_TYPING_REMOVED:
        return (), True
    return ("STRONGLY_TYPED",), True


def plan_build(
    version: TrtVersion,
    precision: str,
    onnx: OnnxPrecision,
    dla_core: int | None = None,
    has_calibration: bool = False,
) -> BuildPlan:
    """Choose network and builder flags for one build.

    Args:
        version: TensorRT version on the build machine.
        precision: Requested engine precision (``int8``, ``fp16``, ``fp32``).
        onnx: What the ONNX contains (Q/DQ nodes, FP16 tensors).
        dla_core: DLA core, or None for GPU only.
        has_calibration: A calibration set is available (needed for implicit INT8 only).

    Returns:
        The plan.

    Raises:
        EnginesInputError: the combination cannot be built on this version; the message says
            what to do instead.
    """
    _check_target(version, precision, dla_core)
    plan = _plan(version, precision, onnx, dla_core, has_calibration)
    if version < STRONG_TYPING:
        # TensorRT < 10 creates an implicit-batch network without this flag, and its ONNX parser
        # only takes explicit-batch networks (TensorRT 8.x Developer Guide, "Explicit Versus
        # Implicit Batch"); 10.x removed implicit batch and deprecated the flag.
        plan = replace(plan, network_flags=("EXPLICIT_BATCH", *plan.network_flags))
    return plan


def _plan(
    version: TrtVersion,
    precision: str,
    onnx: OnnxPrecision,
    dla_core: int | None,
    has_calibration: bool,
) -> BuildPlan:
    """`plan_build` for a checked target, before the version-wide network flags."""
    dla = dla_core is not None
    fallback = ("GPU_FALLBACK",) if dla else ()
    if onnx.has_qdq and precision != "int8":
        raise EnginesInputError(
            f"--precision={precision} with a Q/DQ (INT8) ONNX: build {precision} from the FP32 ONNX instead"
        )
    if precision == "int8":
        if onnx.has_qdq:
            return _plan_qdq(version, dla_core, fallback)
        return _plan_implicit_int8(version, dla_core, fallback, has_calibration)
    if precision == "fp16":
        return _plan_fp16(version, onnx, dla_core, fallback)
    if onnx.has_fp16:
        # Strongly typed, the FP16 tensors would compute in FP16 under an "fp32" label and its
        # tight tolerances; weakly typed, TensorRT would pick per layer. Neither is an FP32 engine.
        raise EnginesInputError(
            "--precision=fp32 with an ONNX that holds FP16 tensors: build fp32 from the FP32 ONNX, "
            "or use --precision fp16"
        )
    flags, strong = _typing(version) if version >= STRONG_TYPING else ((), False)
    return BuildPlan("fp32", flags, (), strong, notes=("FP32 everywhere (reference precision)",))


def _plan_qdq(version: TrtVersion, dla_core: int | None, fallback: tuple[str, ...]) -> BuildPlan:
    if dla_core is not None:
        return BuildPlan(
            "int8",
            (),
            ("INT8", "FP16", *fallback),
            False,
            dla_core=dla_core,
            notes=(
                "DLA has no FP32: weakly typed with INT8 (Q/DQ scales) + FP16 for unquantized layers",
                "layers DLA cannot run fall back to the GPU",
            ),
        )
    if version >= STRONG_TYPING:
        flags, strong = _typing(version)
        return BuildPlan(
            "int8",
            flags,
            (),
            strong,
            notes=("strongly typed: Q/DQ nodes fix INT8 tensors, other layers keep the ONNX's FP32",),
        )
    return BuildPlan(
        "int8",
        (),
        ("INT8", "FP16"),
        False,
        notes=(
            f"TensorRT {version} has no strong typing: INT8 flag honours the Q/DQ scales, FP16 elsewhere",
        ),
    )


def _plan_implicit_int8(
    version: TrtVersion, dla_core: int | None, fallback: tuple[str, ...], has_calibration: bool
) -> BuildPlan:
    if version >= WEAK_TYPING_REMOVED:
        raise EnginesInputError(
            f"--precision=int8 from an FP32 ONNX: TensorRT {version} removed implicit INT8 calibration; "
            "make a Q/DQ ONNX with `affectline engines quantize` and build from that"
        )
    if not has_calibration:
        raise EnginesInputError(
            "--precision=int8 from an FP32 ONNX needs --calibration FILE.npz (legacy implicit calibration), "
            "or build from the Q/DQ ONNX made by `affectline engines quantize`"
        )
    notes = ["legacy implicit INT8: IInt8EntropyCalibrator2 on the calibration set, FP16 elsewhere"]
    if version >= CALIBRATOR_DEPRECATED:
        notes.append(
            f"implicit calibration is deprecated since TensorRT 10.1 (this is {version}); "
            "prefer the Q/DQ ONNX"
        )
    return BuildPlan(
        "int8",
        (),
        ("INT8", "FP16", *fallback),
        False,
        implicit_calibration=True,
        dla_core=dla_core,
        notes=tuple(notes),
    )


def _plan_fp16(
    version: TrtVersion, onnx: OnnxPrecision, dla_core: int | None, fallback: tuple[str, ...]
) -> BuildPlan:
    if onnx.has_fp16 and version >= STRONG_TYPING and dla_core is None:
        flags, strong = _typing(version)
        return BuildPlan(
            "fp16", flags, (), strong, notes=("strongly typed: FP16 tensors come from the ONNX",)
        )
    if version >= WEAK_TYPING_REMOVED:
        raise EnginesInputError(
            f"--precision=fp16: TensorRT {version} has no FP16 builder flag; convert the ONNX first with "
            "`python -m modelopt.onnx.autocast --onnx_path MODEL.onnx --output_path MODEL-fp16.onnx "
            "--low_precision_type fp16 --keep_io_types` and build that"
        )
    return BuildPlan(
        "fp16",
        (),
        ("FP16", *fallback),
        False,
        dla_core=dla_core,
        notes=("weakly typed: FP16 builder flag, TensorRT keeps FP32 where faster or needed",),
    )


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes one optimization profile covers (TensorRT tunes kernels for ``opt``)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max <= MAX_BATCH:
            raise EnginesInputError(
                f"batch range min={self.min} opt={self.opt} max={self.max}: "
                f"need 1 <= min <= opt <= max <= {MAX_BATCH}"
            )

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """``"1,8,16"`` (min,opt,max) or ``"16"`` (1, 16, 16)."""
        try:
            parts = [int(p) for p in text.split(",")]
        except ValueError:
            raise EnginesInputError(f"--batch={text!r}: expected MAX or MIN,OPT,MAX integers") from None
        if len(parts) == 1:
            return cls(1, parts[0], parts[0])
        if len(parts) == 3:
            return cls(*parts)
        raise EnginesInputError(f"--batch={text!r}: expected MAX or MIN,OPT,MAX integers")


def check_dla_batch(dla_core: int | None, batch: BatchRange) -> None:
    """Refuse a dynamic batch range for a DLA build.

    DLA has no dynamic dimensions: the profile's min, opt and max must be equal and the engine
    then runs at that one batch (TensorRT Developer Guide, "DLA Supported Layers and
    Restrictions"). Layers that cannot run on DLA fall back to the GPU without an error ("GPU
    Fallback Mode"), so a dynamic range would give a "DLA" engine that runs on the GPU.

    Raises:
        EnginesInputError: ``dla_core`` is set and ``batch`` is not one fixed size.
    """
    if dla_core is not None and not batch.min == batch.opt == batch.max:
        raise EnginesInputError(
            f"--dla-core={dla_core} with --batch {batch.min},{batch.opt},{batch.max}: DLA has no dynamic "
            f"shapes; give one fixed batch, e.g. --batch {batch.max},{batch.max},{batch.max}"
        )


def profile_shapes(
    inputs: dict[str, tuple[int, ...]], batch: BatchRange
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Optimization-profile shapes for inputs whose first axis is the dynamic batch.

    Args:
        inputs: ``{name: (C, H, W)}`` per-sample shapes (all static).
        batch: Batch range.

    Returns:
        ``{name: (min_shape, opt_shape, max_shape)}`` full NCHW shapes.
    """
    out = {}
    for name, shape in inputs.items():
        if not shape or any(int(d) <= 0 for d in shape):
            raise EnginesInputError(f"input {name!r}: per-sample shape {shape} must be static and positive")
        out[name] = tuple((b, *shape) for b in (batch.min, batch.opt, batch.max))
    return out  # type: ignore[return-value]


def precision_chain(precision: str, fallback: bool) -> tuple[str, ...]:
    """Precisions to try in order: the requested one, then (with ``fallback``) the wider ones.

    ``int8`` falls back to ``fp16`` then ``fp32``; ``fp16`` to ``fp32``. A fallback step is taken
    when a plan is impossible on this TensorRT/target or the build itself fails.
    """
    if precision not in PRECISIONS:
        raise EnginesInputError(f"--precision={precision!r}: allowed {', '.join(PRECISIONS)}")
    chain = PRECISIONS[PRECISIONS.index(precision) :]
    return chain if fallback else chain[:1]
