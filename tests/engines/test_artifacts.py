"""Hashes and sidecar files."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import pytest

from edge_agent.cpu import cpu_flags, int8_kernel
from engines.artifacts import read_sidecar, sha256_file, sidecar_path, tool_versions, write_sidecar
from engines.errors import EnginesInputError


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 7])
def test_sha256_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_sidecar_path_appends_json() -> None:
    assert sidecar_path("a/model.int8.onnx") == Path("a/model.int8.onnx.json")


def test_write_and_read(tmp_path: Path) -> None:
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"model")
    path = write_sidecar(artifact, "onnx-fp32", {"opset": 17})
    record = read_sidecar(artifact)
    assert path == sidecar_path(artifact)
    assert record["kind"] == "onnx-fp32" and record["opset"] == 17 and record["artifact"] == "m.onnx"
    assert record["sha256"] == hashlib.sha256(b"model").hexdigest()
    assert record["versions"]["numpy"] and "written_utc" in record
    assert not list(tmp_path.glob("*.tmp")) and path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "is missing"), ("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")],
)
def test_read_rejects(tmp_path: Path, content: str | None, match: str) -> None:
    artifact = tmp_path / "m.onnx"
    if content is not None:
        sidecar_path(artifact).write_text(content)
    with pytest.raises(EnginesInputError, match=match):
        read_sidecar(artifact)


def test_tool_versions_lists_only_imported_modules() -> None:
    versions = tool_versions()
    assert versions["python"].count(".") == 2 and "numpy" in versions
    # The INT8 kernels of the machine that wrote it: the speed of an INT8 file depends on them.
    assert versions["int8_kernels"] == int8_kernel(platform.machine(), cpu_flags())
    json.dumps(versions)
