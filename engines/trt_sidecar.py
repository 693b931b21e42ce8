"""The JSON sidecar written next to every TensorRT engine, and the check that an engine fits here.

A serialized TensorRT engine only runs under the exact TensorRT version and on the GPU model
(compute capability) it was built for. The sidecar records both, plus everything needed to
rebuild it (source ONNX and its sha256, precision, batch range, calibration hash) and the
model's metadata (`edge_agent.modelmeta` keys), so the agent reads classes and normalisation
from it without parsing the engine.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.artifacts import read_sidecar
from engines.errors import EngineMismatchError, EnginesInputError
from engines.trt_plan import PRECISIONS

KIND = "tensorrt-engine"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine is and where it may run.

    Attributes:
        tensorrt_version: ``tensorrt.__version__`` at build time (exact match required).
        gpu_name: CUDA device name at build time (e.g. ``Orin``).
        compute_capability: ``"major.minor"`` (Orin: ``8.7``).
        precision: ``int8``, ``fp16`` or ``fp32`` (what the engine computes in).
        inputs: ``{name: {"min": shape, "opt": shape, "max": shape}}`` of the optimization profile.
        outputs: Output tensor names in order.
        source_onnx: File name of the ONNX the engine was built from.
        source_onnx_sha256: Its sha256.
        calibration_sha256: Content hash of the calibration set behind the INT8 scales ("" if none).
        model_props: The model's ``affectline.*`` metadata.
        plan: The `BuildPlan` as a dict (flags, typing, DLA core, notes).
        rebuild: The command that rebuilds this engine from its ONNX.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    inputs: dict[str, dict[str, list[int]]]
    outputs: list[str]
    source_onnx: str
    source_onnx_sha256: str
    calibration_sha256: str
    model_props: dict[str, str]
    plan: dict[str, Any] = field(default_factory=dict)
    rebuild: str = ""

    @property
    def max_batch(self) -> int:
        return min(int(v["max"][0]) for v in self.inputs.values())

    @property
    def min_batch(self) -> int:
        """The smallest batch every input's profile takes (1 unless built with a larger min, e.g. DLA)."""
        return max(int(v["min"][0]) for v in self.inputs.values())

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, engine_path: str | Path) -> EngineSidecar:
        """Read and check the sidecar of an engine.

        Raises:
            EnginesInputError: missing, of another kind, missing fields, or fields the runtime
                cannot use (precision, profile shapes, the engine's sha256); the message names the key.
        """
        data = read_sidecar(engine_path)
        if data.get("kind") != KIND:
            raise EnginesInputError(f"{engine_path}: sidecar kind is {data.get('kind')!r}, expected {KIND!r}")
        names = cls.__dataclass_fields__.keys()
        missing = [n for n in names if n not in data and n not in ("plan", "rebuild")]
        if missing:
            raise EnginesInputError(f"{engine_path}: sidecar lacks {missing}; rebuild the engine")
        problem = _sidecar_problem(data)
        if problem:
            raise EnginesInputError(f"{engine_path}: sidecar {problem}; rebuild the engine")
        return cls(**{n: data[n] for n in names if n in data})


def _sidecar_problem(data: dict[str, Any]) -> str:
    """What makes a sidecar unusable by the runtime ("" if nothing)."""
    sha = data.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or not set(sha) <= _HEX:
        return f"sha256 {sha!r} is not 64 lower-case hex digits"
    if data["precision"] not in PRECISIONS:
        return f"precision {data['precision']!r} not one of {PRECISIONS}"
    inputs = data["inputs"]
    if not isinstance(inputs, dict) or not inputs:
        return f"inputs {inputs!r} must name at least one input with its min/opt/max shapes"
    for name, shapes in inputs.items():
        ok = isinstance(shapes, dict) and all(
            isinstance(shapes.get(k), list)
            and len(shapes[k]) == 4
            and all(isinstance(d, int) and d >= 1 for d in shapes[k])
            for k in ("min", "opt", "max")
        )
        if not ok:
            return f"inputs.{name} {shapes!r} must hold min, opt and max as 4 positive integers each"
    if not isinstance(data["outputs"], list) or not all(isinstance(o, str) for o in data["outputs"]):
        return f"outputs {data['outputs']!r} must be a list of tensor names"
    return ""


def rebuild_command(
    onnx: str,
    engine: str,
    precision: str,
    batch: tuple[int, int, int],
    dla_core: int | None,
    *,
    samples: str | None = None,
    calibration: str | None = None,
    device: int = 0,
) -> str:
    """The ``affectline engines build`` line that makes this engine again on the current device.

    Args:
        onnx: The ONNX the engine was built from (after any fallback: no ``--fp32-onnx`` needed).
        engine: The engine file.
        precision: The precision it was built in (so a rebuild cannot fall back further).
        batch: (min, opt, max) batch of its profile.
        dla_core: Its DLA core, or None for the GPU.
        samples: The ``.npz`` it was checked on; None = it was not checked (``--no-verify``).
        calibration: The ``.npz`` of an implicitly calibrated INT8 engine, else None.
        device: CUDA device index it was built on.
    """
    args = [
        "affectline",
        "engines",
        "build",
        onnx,
        "--out",
        engine,
        "--precision",
        precision,
        "--batch",
        ",".join(str(b) for b in batch),
    ]
    if dla_core is not None:
        args += ["--dla-core", str(dla_core)]
    if calibration is not None:
        args += ["--calibration", calibration]
    if device:
        args += ["--device", str(device)]
    args += ["--samples", samples] if samples is not None else ["--no-verify"]
    return shlex.join(args)


def check_engine_bytes(blob: bytes, sidecar: EngineSidecar, recorded_sha256: str, engine_path: str) -> None:
    """Refuse an engine file that is not the one its sidecar describes (replaced or truncated).

    Raises:
        EngineMismatchError: with the rebuild command.
    """
    if hashlib.sha256(blob).hexdigest() != recorded_sha256:
        raise EngineMismatchError(
            f"{engine_path}: file does not match the sha256 in its sidecar (replaced or truncated); "
            f"rebuild it: {sidecar.rebuild or 'affectline engines build MODEL.onnx'}"
        )


def check_compatible(
    sidecar: EngineSidecar, engine_path: str, trt_version: str, gpu_name: str, cc: str
) -> None:
    """Refuse an engine built for another TensorRT version or GPU.

    Args:
        sidecar: The engine's sidecar.
        engine_path: For the message.
        trt_version: ``tensorrt.__version__`` here.
        gpu_name: This device's name.
        cc: This device's compute capability ``"major.minor"``.

    Raises:
        EngineMismatchError: with what differs and the exact rebuild command.
    """
    problems = []
    if sidecar.tensorrt_version != trt_version:
        problems.append(f"TensorRT {sidecar.tensorrt_version} (here {trt_version})")
    if sidecar.gpu_name != gpu_name or sidecar.compute_capability != cc:
        problems.append(
            f"GPU {sidecar.gpu_name!r} sm_{sidecar.compute_capability} (here {gpu_name!r} sm_{cc})"
        )
    if problems:
        raise EngineMismatchError(
            f"{engine_path}: built for {' and '.join(problems)}; TensorRT engines run only where they "
            f"were built. Rebuild it on this device: "
            f"{sidecar.rebuild or 'affectline engines build MODEL.onnx'}"
        )
