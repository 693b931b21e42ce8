"""The command line's flags refuse out-of-range numbers before anything starts (exit 2, one line)."""

from __future__ import annotations

import pytest

from edge_agent.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["run", "--max-seconds=-1"], "argument --max-seconds: -1: must be >= 0"),
        (["run", "--max-seconds", "nan"], "argument --max-seconds: nan: must be a finite number >= 0"),
        (["watch", "--seconds=-1"], "argument --seconds: -1: must be >= 0"),
        (["bench", "--frames", "1.5"], "argument --frames: '1.5': not an integer"),
        (
            ["train", "evaluate", "default", "--data", "x:y", "--threads", "0"],
            "argument --threads: 0: must be >= 1",
        ),
        (
            ["train", "evaluate", "default", "--data", "x:y", "--batch-size=-1"],
            "argument --batch-size: -1: must be >= 1",
        ),
        (["train", "profile", "m", "--steps=-3"], "argument --steps: -3: must be >= 0"),
        (
            ["train", "probe", "imagenet", "--data", "x:y", "--train-per-source=-5"],
            "argument --train-per-source: -5: must be >= 1",
        ),
        (["train", "finetune", "--epochs", "0"], "argument --epochs: 0: must be >= 1"),
        (["train", "pretrain", "--mask-ratio", "1.5"], "argument --mask-ratio: 1.5: must be in [0, 1)"),
        (["engines", "verify", "default", "--threads", "0"], "argument --threads: 0: must be >= 1"),
        (
            ["engines", "quantize", "default", "--calibration", "c.npz", "--out", "q.onnx", "--threads=-1"],
            "argument --threads: -1: must be >= 1",
        ),
        (
            ["engines", "build", "default-int8", "--out", "m.engine", "--device=-3"],
            "argument --device: -3: must be >= 0",
        ),
    ],
)
def test_out_of_range_flags_exit_2_naming_flag_value_and_rule(
    capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {error}")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--max-seconds", "0"],
        ["watch", "--seconds", "2.5"],
        ["bench", "--soak", "0.5", "--sample-s", "1"],
    ],
)
def test_in_range_flags_parse(argv: list[str]) -> None:
    build_parser().parse_args(argv)
