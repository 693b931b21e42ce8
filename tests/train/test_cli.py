"""``affectline train ...`` end to end through the real CLI parser: evaluation report and bad input."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch

from edge_agent.cli import build_parser
from edge_agent.cpu import cpu_flags, int8_kernel
from edge_agent.infer import BUILTIN_MODELS, auto_model
from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE
from tests.conftest import shared_path
from train.checkpoint import make_meta, save_checkpoint
from train.data.records import CLASSES
from train.models import build_model


def _cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return _checkpoint(tmp_path)


def _checkpoint(tmp_path: Path, **split: float) -> Path:
    torch.manual_seed(0)
    cfg = {"model": "affectline_mnv2_64", "model_kwargs": {}, "test_fraction": 0.2, "split_seed": 0, **split}
    model = build_model("affectline_mnv2_64", pretrained=False)
    return save_checkpoint(
        tmp_path / "c.pt",
        model,
        None,
        0,
        cfg,
        make_meta(CLASSES, DEFAULT_PERSON, DEFAULT_SCENE, cfg, "t"),
        {},
    )


def test_evaluate_manifest_writes_report_and_skips_bad_samples(tmp_path: Path, checkpoint: Path) -> None:
    faces = sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[:5]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    lines = ["image,label,x1,y1,x2,y2"] + [f"{p},happy,4,4,44,44" for p in faces]
    lines += [f"{tmp_path / 'broken.png'},sad,,,,", f"{faces[0]},neutral,0,0,400,400"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    assert (
        _cli(
            [
                "train",
                "evaluate",
                str(checkpoint),
                "--data",
                f"manifest:{tmp_path / 'm.csv'}",
                "--out",
                str(tmp_path / "ev"),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "ev" / "manifest_test.json").read_text())
    assert report["n_samples"] == 5 and report["n_skipped"] == 2
    assert report["classification"]["support"]["happy"] == 5
    assert (tmp_path / "ev" / "manifest_test_confusion.png").stat().st_size > 0


@pytest.mark.parametrize("model", ["checkpoint", "default", "auto"])
@pytest.mark.parametrize("flag", ["--no-mirror", "--mirror", None])
def test_evaluate_records_mirror_average(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, checkpoint: Path, model: str, flag: str | None
) -> None:
    """Mirror averaging is on unless --no-mirror, for checkpoints and agent models alike, and said so."""
    caplog.set_level("INFO", logger="edge_agent.infer")
    faces = sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[:3]
    (tmp_path / "m.csv").write_text("image,label\n" + "".join(f"{p},happy\n" for p in faces))
    name = str(checkpoint) if model == "checkpoint" else model
    data = f"manifest:{tmp_path / 'm.csv'}"
    argv = ["train", "evaluate", name, "--data", data, "--out", str(tmp_path / "ev")]
    assert _cli([*argv, "--threads", "1", *([flag] if flag else [])]) == 0
    report = json.loads((tmp_path / "ev" / "manifest_test.json").read_text())
    assert report["mirror_average"] is (flag != "--no-mirror")
    assert report["n_samples"] == 3
    if model == "auto":  # the file the agent would run on this CPU, named with its hash
        chosen = BUILTIN_MODELS[auto_model(int8_kernel(platform.machine(), cpu_flags()))]
        assert report["checkpoint"].startswith(f"{chosen} (sha256 ")
    # auto's choice is said once: the report's provenance re-resolves the name without repeating it
    assert caplog.text.count("model auto:") == (model == "auto")


@pytest.mark.parametrize(
    ("model", "degrade"), [("checkpoint", None), ("checkpoint", "dark:0.1"), ("default", "downscale:16")]
)
def test_evaluate_records_the_degradation(
    tmp_path: Path, checkpoint: Path, model: str, degrade: str | None
) -> None:
    """--degrade reaches checkpoints and agent models alike, and the report says which one it measured."""
    faces = sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[:4]
    (tmp_path / "m.csv").write_text("image,label\n" + "".join(f"{p},happy\n" for p in faces))
    name = str(checkpoint) if model == "checkpoint" else model
    argv = ["train", "evaluate", name, "--data", f"manifest:{tmp_path / 'm.csv'}", "--threads", "1"]
    outs = {}
    for d in (None, degrade):
        out = tmp_path / f"ev-{d}"
        assert _cli([*argv, "--out", str(out), *(["--degrade", d] if d else [])]) == 0
        outs[d] = json.loads((out / "manifest_test.json").read_text())
    assert outs[degrade]["degradation"] == degrade
    if model == "default":  # the shipped model's output moves when its views are degraded this much
        assert outs[degrade]["calibration"]["nll"] != pytest.approx(
            outs[None]["calibration"]["nll"], abs=1e-4
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fog:1", "degradation kind 'fog' not one of"),
        ("jpeg:0", "jpeg severity 0 outside [1, 100]"),
        ("blur", "not KIND:SEVERITY"),
    ],
)
def test_evaluate_refuses_a_bad_degradation(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        _cli(["train", "evaluate", "default", "--data", "ferplus:/nope", "--degrade", value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "val_fraction,spec,report,n",
    [
        (None, "manifest", "manifest_test", 5),  # a manifest has no val part: test, and said so
        (None, "emotion6", "emotion6_test", 323),  # a checkpoint from before val parts: empty val
        (0.1, "emotion6", "emotion6_val", 172),  # the checkpoint's own val part
    ],
)
def test_evaluate_val_split_follows_the_checkpoint(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    val_fraction: float | None,
    spec: str,
    report: str,
    n: int,
) -> None:
    faces = sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[:5]
    (tmp_path / "m.csv").write_text("image,label\n" + "".join(f"{p},happy\n" for p in faces))
    source = {
        "manifest": f"manifest:{tmp_path / 'm.csv'}",
        "emotion6": f"emotion6:{shared_path('data', 'emotion6')}",
    }
    ckpt = _checkpoint(tmp_path, **({"val_fraction": val_fraction} if val_fraction else {}))
    argv = [
        "train",
        "evaluate",
        str(ckpt),
        "--data",
        source[spec],
        "--split",
        "val",
        "--out",
        str(tmp_path / "ev"),
    ]
    assert _cli([*argv, "--threads", "1"]) == 0
    assert json.loads((tmp_path / "ev" / f"{report}.json").read_text())["n_samples"] == n
    assert ("no val part" in capsys.readouterr().out) == report.endswith("_test")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--data", "ferplus:/does/not/exist"], "does not exist"),
        (["--data", "weird:/tmp"], "kind in"),
    ],
)
def test_evaluate_bad_input_exit_2(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert _cli(["train", "evaluate", str(checkpoint), *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_finetune_with_unequal_view_sizes_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "finetune", "--model", "affectline_mnv2_96_64", "--data", f"manifest:{tmp_path}/m.csv"]
    assert _cli([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "affectline_mnv2_96_64" in err and "unequal size" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("none.pt", "none.pt does not exist"),
        # An ONNX file goes through the agent's resolver; the error names this command's argument.
        ("none.onnx", "affectline train: checkpoint: '{tmp}/none.onnx' is not a file"),
    ],
)
def test_evaluate_missing_checkpoint_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    (tmp_path / "m.csv").write_text("image,label\n")  # a valid spec: the checkpoint is what is wrong
    assert _cli(["train", "evaluate", str(tmp_path / name), "--data", f"manifest:{tmp_path / 'm.csv'}"]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_manifest_missing_column_exit_2(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.csv").write_text("path,label\na.png,happy\n")
    assert _cli(["train", "evaluate", str(checkpoint), "--data", f"manifest:{tmp_path / 'm.csv'}"]) == 2
    assert "m.csv:1" in capsys.readouterr().err


def test_finetune_bad_config_key_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text("lr: 0.1\nlearning_rate: 3\n")
    assert _cli(["train", "finetune", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["train.main_finetune", "train.main_pretrain"])
@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "missing.yaml"),  # the file does not exist
        ("resample: nearest\n", "resample='nearest' not one of"),
        ("learning_rate: 3\n", "learning_rate"),
    ],
)
def test_module_entry_points_report_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], module: str, config: str | None, message: str
) -> None:
    """``python -m train.main_*`` (what torchrun starts) answers bad input like ``affectline train``."""
    import importlib

    path = tmp_path / ("c.yaml" if config else "missing.yaml")
    if config:
        path.write_text(config)
    argv = ["--config", str(path), "--data", f"manifest:{tmp_path}/m.csv", "--out", str(tmp_path / "run")]
    assert importlib.import_module(module).main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


FER2013_TRAINING_ONLY = "emotion,pixels,Usage\n3," + " ".join(["9"] * 48 * 48) + ",Training\n"


@pytest.mark.parametrize(
    ("spec", "content", "message"),
    [
        ("manifest:m.csv", "image,label\n", "no usable sample (manifest:m.csv: kept 0)"),  # header only
        ("manifest:m.csv", "image,label\nbroken.png,happy\nbroken.png,sad\n", "no usable test image among 2"),
        ("fer2013csv:m.csv", FER2013_TRAINING_ONLY, "m.csv: no test part (fer2013: kept 1)"),
    ],
)
def test_evaluate_with_nothing_usable_exit_2(
    tmp_path: Path,
    checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    spec: str,
    content: str,
    message: str,
) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "m.csv").write_text(content)
    kind = spec.split(":")[0]
    argv = ["train", "evaluate", str(checkpoint), "--data", f"{kind}:{tmp_path / 'm.csv'}"]
    assert _cli([*argv, "--out", str(tmp_path / "ev"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list((tmp_path / "ev").glob("*.json"))  # no report of 0 %


def test_evaluate_summary_counts_the_rows_the_reader_skipped(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FER+ layout whose Test label.csv has a row without a vote in the 7 classes."""
    root = tmp_path / "ferplus"
    faces = sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[:3]
    for split in ("FER2013Train", "FER2013Valid", "FER2013Test"):
        (root / split).mkdir(parents=True)
        for p in faces:
            (root / split / p.name).write_bytes(p.read_bytes())
        votes = ["10,0,0,0,0,0,0,0,0,0", "0,10,0,0,0,0,0,0,0,0", "0,0,0,0,0,0,0,10,0,0"]  # last: contempt
        (root / split / "label.csv").write_text(
            "".join(f'{p.name},"(0, 0, 48, 48)",{v}\n' for p, v in zip(faces, votes, strict=True))
        )
    argv = ["train", "evaluate", str(checkpoint), "--data", f"ferplus:{root}", "--no-mirror"]
    assert _cli([*argv, "--out", str(tmp_path / "ev"), "--threads", "1"]) == 0
    assert "ferplus_test: n=2 skipped=0 (+1 rows skipped by the reader)" in capsys.readouterr().out


def test_evaluate_two_sources_of_one_kind_keep_both_reports(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faces = sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[:3]
    (tmp_path / "a.csv").write_text(f"image,label\n{faces[0]},happy\n")
    (tmp_path / "b.csv").write_text(f"image,label\n{faces[1]},happy\n{faces[2]},\n")  # one unlabelled
    data = ["--data", f"manifest:{tmp_path / 'a.csv'}", "--data", f"manifest:{tmp_path / 'b.csv'}"]
    assert (
        _cli(["train", "evaluate", str(checkpoint), *data, "--out", str(tmp_path / "ev"), "--threads", "1"])
        == 0
    )
    reports = {p.name: json.loads(p.read_text()) for p in (tmp_path / "ev").glob("*.json")}
    assert {n: (r["data"].rsplit("/", 1)[-1], r["n_samples"]) for n, r in reports.items()} == {
        "manifest_test.json": ("a.csv", 1),
        "manifest2_test.json": ("b.csv", 2),
    }
    out = capsys.readouterr().out.splitlines()
    assert "labelled)" not in out[0] and "(of 1 labelled)" in out[1]


def test_evaluate_checks_every_data_spec_before_loading_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    """The checkpoint is missing too, but the spec is named first: a typo must not wait for a model load."""
    assert _cli(["train", "evaluate", "/nope.pt", "--data", "ferplus:/nope", "--data", "nope:x"]) == 2
    assert "data source 'ferplus:/nope': path /nope does not exist" in capsys.readouterr().err
