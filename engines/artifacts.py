"""Provenance of what `engines` writes: file hashes and the sidecar JSON beside every artefact.

Every exported, quantized or built file ``X`` gets ``X.json`` describing what it is, how it was
made (inputs, their sha256, tolerances, tool versions) and how it was checked, so a file found on
a device can be traced back and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_agent.cpu import host_int8_kernel
from engines.errors import EnginesInputError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def load_onnx(path: str | Path) -> Any:
    """The ``onnx.ModelProto`` of a file, without external weight data.

    Raises:
        EnginesInputError: the file cannot be read or parsed as ONNX.
    """
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...: all mean "not an ONNX file"
        raise EnginesInputError(f"{path}: not a readable ONNX file ({exc})") from None


def sidecar_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write JSON so a crash never leaves a half-written file where a reader expects a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; sidecars ship beside models and must be world-readable
    os.replace(tmp, path)


def write_sidecar(artifact: str | Path, kind: str, record: dict[str, Any]) -> Path:
    """Write ``<artifact>.json`` with the artefact's own hash, its kind, tool versions and ``record``.

    Args:
        artifact: The file just written.
        kind: ``onnx-fp32``, ``onnx-int8-qdq``, ``tensorrt-engine`` or ``calibration-set``.
        record: What was built from what, and how it was verified.

    Returns:
        The sidecar path.
    """
    artifact = Path(artifact)
    full = {
        "kind": kind,
        "artifact": artifact.name,
        "sha256": sha256_file(artifact),
        "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": tool_versions(),
        **record,
    }
    path = sidecar_path(artifact)
    write_json_atomic(path, full)
    return path


def read_sidecar(artifact: str | Path) -> dict[str, Any]:
    """The sidecar of an artefact.

    Raises:
        EnginesInputError: no sidecar, or it is not a JSON object.
    """
    path = sidecar_path(artifact)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EnginesInputError(
            f"{artifact}: sidecar {path} is missing (it is written next to every "
            "file `affectline engines` builds)"
        ) from None
    except json.JSONDecodeError as exc:
        raise EnginesInputError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EnginesInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made an artefact: those this process has imported.

    Only already-imported modules are listed, so writing a sidecar never drags in torch.
    """
    out = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        # INT8 results are the same on every CPU (`ort_session_options`), INT8 speed is not.
        "int8_kernels": host_int8_kernel(),
    }
    for name in ("numpy", "onnx", "onnxruntime", "torch", "tensorrt"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = str(getattr(module, "__version__", "unknown"))
    return out
