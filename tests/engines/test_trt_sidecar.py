"""Engine sidecars: round trip through the JSON file and the refusal of engines built elsewhere."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from engines.artifacts import sidecar_path, write_sidecar
from engines.errors import EngineMismatchError, EnginesInputError
from engines.trt_sidecar import KIND, EngineSidecar, check_compatible, check_engine_bytes, rebuild_command

REBUILD = rebuild_command("m-int8.onnx", "m.engine", "int8", (1, 8, 16), None)
SIDECAR = EngineSidecar(
    tensorrt_version="10.3.0.30",
    gpu_name="Orin",
    compute_capability="8.7",
    precision="int8",
    inputs={
        "person": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [16, 3, 64, 64]},
        "scene": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [12, 3, 64, 64]},
    },
    outputs=["logits", "valence_arousal"],
    source_onnx="m-int8.onnx",
    source_onnx_sha256="ab" * 32,
    calibration_sha256="cd" * 32,
    model_props={"affectline.format": "1"},
    plan={"precision": "int8"},
    rebuild=REBUILD,
)


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    path = tmp_path / "m.engine"
    path.write_bytes(b"serialized engine bytes")
    write_sidecar(path, KIND, SIDECAR.to_record())
    return path


def test_round_trip(engine: Path) -> None:
    assert EngineSidecar.read(engine) == SIDECAR
    record = json.loads(sidecar_path(engine).read_text())
    assert record["kind"] == KIND and len(record["sha256"]) == 64


def test_max_batch_is_smallest_profile_max() -> None:
    assert SIDECAR.max_batch == 12


def test_min_batch_is_largest_profile_min() -> None:
    assert SIDECAR.min_batch == 1
    fixed = {n: {"min": [8, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [8, 3, 64, 64]} for n in SIDECAR.inputs}
    assert replace(SIDECAR, inputs=fixed).min_batch == 8


def test_rebuild_command() -> None:
    assert REBUILD == (
        "affectline engines build m-int8.onnx --out m.engine --precision int8 --batch 1,8,16 --no-verify"
    )
    assert rebuild_command("a b.onnx", "e", "fp16", (1, 1, 4), 1, samples="v.npz").endswith(
        "--batch 1,1,4 --dla-core 1 --samples v.npz"
    )
    assert "'a b.onnx'" in rebuild_command("a b.onnx", "e", "fp16", (1, 1, 4), 1)
    implicit = rebuild_command("m.onnx", "e", "int8", (1, 8, 16), None, calibration="c.npz", device=1)
    assert implicit.endswith("--calibration c.npz --device 1 --no-verify")


def test_the_rebuild_command_parses_as_a_build(tmp_path: Path) -> None:
    """What the sidecar tells a user to run is a command the CLI accepts (every flag exists)."""
    import argparse
    import shlex

    from engines.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    line = rebuild_command(
        "m.onnx", "e", "int8", (1, 8, 16), 0, samples="v.npz", calibration="c.npz", device=1
    )
    args = parser.parse_args(shlex.split(line)[1:])
    assert (args.samples, args.calibration, args.device, args.dla_core) == ("v.npz", "c.npz", 1, 0)
    assert parser.parse_args(shlex.split(REBUILD)[1:]).no_verify


def test_missing_sidecar(tmp_path: Path) -> None:
    with pytest.raises(EnginesInputError, match="sidecar .* is missing"):
        EngineSidecar.read(tmp_path / "none.engine")


def test_wrong_kind_and_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "x.engine"
    path.write_bytes(b"x")
    write_sidecar(path, "onnx-fp32", {})
    with pytest.raises(EnginesInputError, match="kind is 'onnx-fp32'"):
        EngineSidecar.read(path)
    write_sidecar(path, KIND, {"tensorrt_version": "10.3"})
    with pytest.raises(EnginesInputError, match="sidecar lacks"):
        EngineSidecar.read(path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sha256": "zz"}, "sha256 'zz' is not 64"),
        ({"sha256": None}, "sha256 None"),
        ({"precision": "int4"}, r"precision 'int4' not one of \('int8', 'fp16', 'fp32'\)"),
        ({"inputs": {}}, "inputs {} must name at least one input"),
        ({"inputs": {"person": {"min": [1, 3, 64, 64]}}}, "inputs.person .* must hold min, opt and max"),
        ({"inputs": {"person": {"min": [1], "opt": [1], "max": [1]}}}, "inputs.person"),
        (
            {"inputs": {"person": {"min": [0, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [1, 3, 8, 8]}}},
            "inputs.person .* positive",
        ),
        ({"outputs": "logits"}, "outputs 'logits' must be a list"),
    ],
)
def test_unusable_sidecar_fields_are_named(engine: Path, change: dict[str, object], match: str) -> None:
    record = json.loads(sidecar_path(engine).read_text())
    sidecar_path(engine).write_text(json.dumps({**record, **change}))
    with pytest.raises(EnginesInputError, match=rf"m\.engine: sidecar {match}"):
        EngineSidecar.read(engine)


def test_matching_device_passes() -> None:
    check_compatible(SIDECAR, "m.engine", "10.3.0.30", "Orin", "8.7")


@pytest.mark.parametrize(
    ("trt", "gpu", "cc", "match"),
    [
        ("10.3.0.26", "Orin", "8.7", r"TensorRT 10.3.0.30 \(here 10.3.0.26\)"),
        (
            "10.3.0.30",
            "NVIDIA H100 80GB HBM3",
            "9.0",
            r"GPU 'Orin' sm_8.7 \(here 'NVIDIA H100 80GB HBM3' sm_9.0\)",
        ),
        ("10.3.0.30", "Orin", "8.6", r"sm_8.7 \(here 'Orin' sm_8.6\)"),
        ("11.0.0", "Xavier", "7.2", r"TensorRT .* and GPU"),
    ],
)
def test_mismatch_says_how_to_rebuild(trt: str, gpu: str, cc: str, match: str) -> None:
    with pytest.raises(EngineMismatchError, match=match) as info:
        check_compatible(SIDECAR, "m.engine", trt, gpu, cc)
    assert REBUILD in str(info.value)


def test_mismatch_without_recorded_command_still_names_the_command() -> None:
    with pytest.raises(EngineMismatchError, match="affectline engines build"):
        check_compatible(replace(SIDECAR, rebuild=""), "m.engine", "9.0", "Orin", "8.7")


def test_engine_bytes_must_match_sidecar(engine: Path) -> None:
    recorded = json.loads(sidecar_path(engine).read_text())["sha256"]
    check_engine_bytes(engine.read_bytes(), SIDECAR, recorded, str(engine))
    with pytest.raises(
        EngineMismatchError, match="does not match the sha256 .* rebuild it: affectline engines"
    ):
        check_engine_bytes(engine.read_bytes()[:-1], SIDECAR, recorded, str(engine))
