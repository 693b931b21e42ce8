"""``affectline train evaluate`` on exported models: the agent's inference code gives the PyTorch numbers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.cli import build_parser
from edge_agent.infer import ModelLoadError
from edge_agent.modelmeta import ModelMeta
from edge_agent.views import crop_square, square_boxes
from engines.artifacts import sha256_file
from tests.conftest import shared_path
from tests.model_factory import CLASSES, make_tiny_model, tiny_meta
from train.checkpoint import load_model
from train.evaluate import agent_predictor, mirror_averaged, torch_predictor


def _cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def _views(meta: ModelMeta, images: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Person and scene crops (uint8 RGB) of real faces, cut with the agent's view code."""
    person: list[np.ndarray] = []
    scene: list[np.ndarray] = []
    for path in images:
        rgb = np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])
        whole = np.array([[0, 0, rgb.shape[1], rgb.shape[0]]], np.float32)
        for view, out in (("person", person), ("scene", scene)):
            geometry = meta.input_for(view).geometry
            out.append(crop_square(rgb, square_boxes(whole, geometry)[0], geometry.size))
    return np.stack(person), np.stack(scene)


def _faces(n: int) -> list[Path]:
    return sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[:n]


@pytest.mark.parametrize("mirror", [False, True])
def test_onnx_through_the_agent_matches_pytorch(checkpoint: Path, fp32_onnx: Path, mirror: bool) -> None:
    """Single pass and mirror-averaged alike: the agent's ``predict`` and evaluation's wrapper agree."""
    model, meta = load_model(checkpoint)
    person, scene = _views(meta, _faces(16))
    reference = torch_predictor(model)
    want_p, want_va = (mirror_averaged(reference) if mirror else reference)(person, scene)
    predict, meta = agent_predictor(str(fp32_onnx), mirror_average=mirror)
    got_p, got_va = predict(person, scene)
    assert meta.classes == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    np.testing.assert_allclose(got_p, want_p, atol=1e-4)
    np.testing.assert_allclose(got_va, want_va, atol=1e-4)


def test_cli_evaluates_an_onnx_file_with_its_hash(tmp_path: Path, checkpoint: Path, fp32_onnx: Path) -> None:
    faces = _faces(12)
    (tmp_path / "m.csv").write_text("image,label\n" + "".join(f"{p},happy\n" for p in faces))
    reports = {}
    for name, model in (("pt", checkpoint), ("onnx", fp32_onnx)):
        out = tmp_path / name
        argv = [
            "train",
            "evaluate",
            str(model),
            "--data",
            f"manifest:{tmp_path / 'm.csv'}",
            "--out",
            str(out),
        ]
        assert _cli(argv) == 0
        reports[name] = json.loads((out / "manifest_test.json").read_text())
    assert reports["onnx"]["n_samples"] == reports["pt"]["n_samples"] == 12
    assert reports["onnx"]["classification"]["confusion"] == reports["pt"]["classification"]["confusion"]
    assert sha256_file(fp32_onnx) in reports["onnx"]["checkpoint"]


@pytest.mark.parametrize("content", [b"", b"not a model"])
def test_cli_names_an_unreadable_onnx_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        agent_predictor(str(bad))
    (tmp_path / "m.csv").write_text("image,label\n")  # a valid spec: the model file is what is wrong
    assert _cli(["train", "evaluate", str(bad), "--data", f"manifest:{tmp_path / 'm.csv'}"]) == 2
    assert "bad.onnx" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("classes", "error"),
    [
        ((*CLASSES[:-1], "contempt"), "evaluation needs"),  # another class set: refused, not mis-scored
        (tuple(reversed(CLASSES)), None),  # same classes, another order: reordered into ours
    ],
)
def test_agent_model_classes_are_mapped_onto_ours(tmp_path: Path, classes: tuple, error: str | None) -> None:
    ours = make_tiny_model(tmp_path / "ours.onnx")
    theirs = make_tiny_model(tmp_path / "theirs.onnx", meta=dataclasses.replace(tiny_meta(), classes=classes))
    if error:
        with pytest.raises(ModelLoadError, match=error):
            agent_predictor(str(theirs))
        return
    rng = np.random.default_rng(0)
    person, scene = (rng.integers(0, 255, (4, 32, 32, 3), np.uint8) for _ in range(2))
    want, _ = agent_predictor(str(ours))[0](person, scene)
    got, meta = agent_predictor(str(theirs))
    # The same weights with the class list reversed: column k of the file is class 6-k of ours.
    np.testing.assert_allclose(got(person, scene)[0], want[:, ::-1], atol=1e-6)
    assert meta.classes == CLASSES
