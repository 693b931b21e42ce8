"""``affectline engines ...``: real commands on real models; errors are one line and an exit code."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from calibration.viewset import ViewSet
from edge_agent.config import ConfigError
from engines.cli import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_OK, _guarded, register
from engines.errors import EnginesInputError, VerificationError


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="affectline")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def eval_npz(engines_dir: Path, eval_views: ViewSet) -> Path:
    path = engines_dir / "eval.npz"
    eval_views.save(path)
    return path


def test_export_and_verify(
    tmp_path: Path, checkpoint: Path, eval_npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    assert (
        run(["engines", "export", str(checkpoint), "--out", str(out), "--samples", str(eval_npz)]) == EXIT_OK
    )
    assert run(["engines", "verify", str(out), "--samples", str(eval_npz)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "ONNX Runtime vs PyTorch: top-1 agreement 100.00%" in text
    assert f"{out} (fp32) vs {checkpoint}" in text and "— OK" in text


def test_calibrate_from_datasets(
    tmp_path: Path, fp32_onnx: Path, specs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.npz"
    argv = ["engines", "calibrate", "--model", str(fp32_onnx), "--out", str(out), "--count", "21"]
    for spec in specs:
        argv += ["--data", spec]
    assert run(argv) == EXIT_OK
    text = capsys.readouterr().out
    assert "samples: 21 (0 unlabelled)" in text and "per class: angry 3, disgust 3" in text
    assert ViewSet.load(out).content_hash() in text


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["engines", "export", "{ckpt}", "--out", "{tmp}/m.onnx", "--samples", "{eval}", "--opset", "9"],
            EXIT_BAD_INPUT,
            "--opset=9: allowed 17..20",
        ),
        (
            ["engines", "calibrate", "--model", "{onnx}", "--out", "{tmp}/c.npz", "--no-datasets"],
            EXIT_BAD_INPUT,
            "no calibration source",
        ),
        (
            [
                "engines",
                "calibrate",
                "--model",
                "{onnx}",
                "--out",
                "{tmp}/c.npz",
                "--from-video",
                "nowhere.mp4",
            ],
            EXIT_BAD_INPUT,
            "--from-video='nowhere.mp4'",
        ),
        (
            [
                "engines",
                "quantize",
                "{onnx}",
                "--calibration",
                "{tmp}/none.npz",
                "--out",
                "{tmp}/q.onnx",
                "--samples",
                "{eval}",
            ],
            EXIT_BAD_INPUT,
            "not a readable view set",
        ),
        (
            ["engines", "build", "{onnx}", "--out", "{tmp}/m.engine"],
            EXIT_BAD_INPUT,
            "--samples FILE.npz is needed",
        ),
        (
            ["engines", "build", "{onnx}", "--out", "{tmp}/m.engine", "--no-verify", "--batch", "8,4,2"],
            EXIT_BAD_INPUT,
            "batch range min=8 opt=4 max=2",
        ),
        (
            ["engines", "verify", "{tmp}/none.onnx", "--samples", "{eval}"],
            EXIT_BAD_INPUT,
            "none.onnx is not a file (or a built-in name: default, default-int8, default-int8-cpu)",
        ),
        (
            ["engines", "calibrate", "--model", "auto", "--out", "{tmp}/c.npz"],
            EXIT_BAD_INPUT,
            "model 'auto' is the agent's choice per CPU, not one file: name one of default, default-int8",
        ),
        (
            ["engines", "quantize", "auto", "--calibration", "{eval}", "--out", "{tmp}/q.onnx"],
            EXIT_BAD_INPUT,
            "model 'auto' is the agent's choice per CPU",
        ),
        (
            ["engines", "verify", "{garbage}", "--samples", "{eval}"],
            EXIT_BAD_INPUT,
            "garbage.onnx: not a readable ONNX file",
        ),
        (
            ["engines", "quantize", "{garbage}", "--calibration", "{eval}", "--out", "{tmp}/q.onnx"],
            EXIT_BAD_INPUT,
            "garbage.onnx: not a readable ONNX file",
        ),
        (  # named before the model loads or the clip is watched
            [
                "engines",
                "calibrate",
                "--model",
                "{onnx}",
                "--out",
                "{tmp}/c.txt",
                "--from-video",
                "nowhere.mp4",
            ],
            EXIT_BAD_INPUT,
            "--out={tmp}/c.txt: a view set file must end in .npz",
        ),
        (
            ["engines", "export", "{garbage_pt}", "--out", "{tmp}/m.onnx", "--samples", "{eval}"],
            EXIT_BAD_INPUT,
            "garbage.pt is not a readable PyTorch checkpoint",
        ),
        (
            ["engines", "verify", "{onnx}", "--samples", "{eval}", "--reference", "{tmp}/none.onnx"],
            EXIT_BAD_INPUT,
            "--reference '{tmp}/none.onnx': {tmp}/none.onnx is not a file (or a built-in name: default,",
        ),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path,
    checkpoint: Path,
    fp32_onnx: Path,
    eval_npz: Path,
    argv: list[str],
    code: int,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xff\xff\xff")  # wire type 7 does not exist: never parses as protobuf
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    subs = {
        "{garbage_pt}": str(tmp_path / "garbage.pt"),
        "{garbage}": str(garbage),
        "{ckpt}": str(checkpoint),
        "{onnx}": str(fp32_onnx),
        "{eval}": str(eval_npz),
        "{tmp}": str(tmp_path),
    }
    filled = [_fill(a, subs) for a in argv]
    assert run(filled) == code
    err = capsys.readouterr().err
    assert _fill(message, subs) in err and err.count("\n") == 1 and "Traceback" not in err


def _fill(arg: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_without_tensorrt_fails_with_exit_1(
    tmp_path: Path, int8_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(["engines", "build", str(int8_onnx), "--out", str(tmp_path / "m.engine"), "--no-verify"])
        == EXIT_FAIL
    )
    err = capsys.readouterr().err
    assert "TensorRT is not importable" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "exc,code,line",
    [
        (EnginesInputError("--opset=9: allowed 17..20"), EXIT_BAD_INPUT, "--opset=9: allowed 17..20"),
        (ConfigError("c.yaml", ["no such key"]), EXIT_BAD_INPUT, "c.yaml: no such key"),
        (VerificationError("parity off"), EXIT_FAIL, "parity off"),
        (OSError("disk full"), EXIT_FAIL, "OSError: disk full"),
    ],
)
def test_guarded_maps_errors_to_one_line_and_code(
    exc: Exception, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise exc

    assert _guarded(fail)(argparse.Namespace(engines_command="export")) == code
    assert capsys.readouterr().err == f"engines export: {line}\n"


def test_guarded_lets_programming_errors_through() -> None:
    def fail(args: argparse.Namespace) -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        _guarded(fail)(argparse.Namespace(engines_command="export"))


def test_quantize_flag_defaults_are_the_library_defaults() -> None:
    """The parser is built without importing the quantizer (fast --help), so its defaults are
    written twice; this keeps them from drifting apart."""
    from engines.cli import register
    from engines.quantize import MAX_TOP1_DROP, MIN_AGREEMENT

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["engines", "quantize", "m.onnx", "--calibration", "c.npz", "--out", "q.onnx"])
    assert (args.max_drop, args.min_agreement) == (MAX_TOP1_DROP, MIN_AGREEMENT)


def test_calibrate_flag_defaults_are_the_library_defaults() -> None:
    from calibration.build import DEFAULT_COUNT
    from calibration.video import DEFAULT_EVERY_S
    from engines.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["engines", "calibrate", "--model", "m.onnx", "--out", "c.npz"])
    assert (args.every, args.count) == (DEFAULT_EVERY_S, DEFAULT_COUNT)


def test_engines_commands_run_where_torch_is_not_installed(tmp_path: Path) -> None:
    """A Jetson image may hold TensorRT and ONNX Runtime but no torch: bad input stays one line, exit 2."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
        "from edge_agent.cli import main\n"
        f"sys.exit(main(['engines', 'verify', {str(tmp_path / 'none.onnx')!r}, '--samples', 'x.npz']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_BAD_INPUT and "Traceback" not in proc.stderr, proc.stderr
    assert "none.onnx is not a file" in proc.stderr
