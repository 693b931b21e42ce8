"""`scripts/with_resample.py`: a copy of a real model file whose views are cut the other way."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from edge_agent.modelmeta import ModelMeta

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "edge_agent" / "models" / "affectline-default.onnx"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "scripts" / "with_resample.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)


def meta_of(path: Path) -> ModelMeta:
    return ModelMeta.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props}, str(path))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("{src}", "{dst}", "nearest"), "not one of"),
        (("{src}.txt", "{dst}", "area"), "not a .pt or .onnx file"),
        (("{dst}.missing.onnx", "{dst}", "area"), "is not a file"),
    ],
)
def test_bad_arguments_exit_2_naming_them(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    fmt = {"src": str(SHIPPED), "dst": str(tmp_path / "out.onnx")}
    res = run(*(a.format(**fmt) for a in args))
    assert res.returncode == 2
    assert message in res.stderr
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("mode", ["area", "bilinear"])
def test_onnx_copy_changes_only_the_resample_mode(tmp_path: Path, mode: str) -> None:
    dst = tmp_path / "copy.onnx"
    assert run(str(SHIPPED), str(dst), mode).returncode == 0
    before, after = meta_of(SHIPPED), meta_of(dst)
    for view in ("person", "scene"):
        b, a = before.input_for(view), after.input_for(view)
        assert a.geometry.resample == mode
        assert a.geometry == replace(b.geometry, resample=mode)
        assert (a.name, a.mean, a.std, a.color) == (b.name, b.mean, b.std, b.color)
    assert after.classes == before.classes
    assert onnx.load(str(dst)).graph == onnx.load(str(SHIPPED)).graph
