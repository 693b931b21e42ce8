"""Linear probing: the logistic probe on known data, real encoders on real images, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.cli import build_parser
from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE, ViewGeometry
from tests.conftest import shared_path
from train.checkpoint import CheckpointError, make_meta, save_checkpoint
from train.data.records import CLASSES, DataError
from train.data.sources import load_source
from train.models import build_model
from train.probe import fit_logistic, load_encoder, load_probe_data


def _cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize(
    "classes,spread",
    [
        (1, 1.0),  # one class only: the probe must still predict it
        (3, 0.2),  # well separated clusters
        (7, 0.5),
    ],
)
def test_fit_logistic_separates_clusters(classes: int, spread: float) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, 16)) * 3
    y = rng.integers(0, classes, 600)
    x = centres[y] + rng.normal(size=(600, 16)) * spread
    predict = fit_logistic(x[:400], y[:400], 7)
    assert (predict(x[400:]) == y[400:]).mean() > 0.95


def test_pretraining_checkpoint_encoder_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = build_model("affectline_mnv2_64", pretrained=False)
    cfg = {"model": "affectline_mnv2_64", "model_kwargs": {}}
    meta = make_meta(CLASSES, DEFAULT_PERSON, DEFAULT_SCENE, cfg, "t")
    path = save_checkpoint(tmp_path / "p.pt", net, None, 0, cfg, meta, {})
    key = "features.3.conv.0.0.weight"

    def weight(model: torch.nn.Module) -> torch.Tensor:
        return dict(model.named_parameters())[key]

    assert torch.equal(weight(load_encoder(str(path)).net), weight(net))
    assert not torch.equal(weight(load_encoder("imagenet").net), weight(net))


def _checkpoint_at(tmp_path: Path, person: ViewGeometry, scene: ViewGeometry) -> Path:
    name = f"affectline_mnv2_{person.size}_{scene.size}"
    cfg = {"model": name, "model_kwargs": {"fusion_dim": 128, "dropout": 0.0}}
    net = build_model(name, pretrained=False, fusion_dim=128, dropout=0.0)
    meta = make_meta(CLASSES, person, scene, cfg, "t")
    return save_checkpoint(tmp_path / f"{name}.pt", net, None, 0, cfg, meta, {})


def test_encoder_keeps_the_model_and_view_geometry_of_its_checkpoint(tmp_path: Path) -> None:
    person, scene = ViewGeometry(1.6, 96), ViewGeometry(3.0, 128, 0.3)
    enc = load_encoder(str(_checkpoint_at(tmp_path, person, scene)))
    assert enc.geometry == (person, scene)
    assert enc.net.fuse.out_features == 128  # built with the checkpoint's kwargs, not the defaults
    assert load_encoder("imagenet").geometry == (DEFAULT_PERSON, DEFAULT_SCENE)


@pytest.mark.parametrize("content,error", [(b"not a checkpoint", CheckpointError), (None, CheckpointError)])
def test_bad_encoder_is_refused(tmp_path: Path, content: bytes | None, error: type[Exception]) -> None:
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match="x.pt"):
        load_encoder(str(path))


def test_probe_data_needs_a_training_part(tmp_path: Path) -> None:
    faces = sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[:3]
    (tmp_path / "m.csv").write_text("image,label\n" + "".join(f"{p},happy\n" for p in faces))
    with pytest.raises(ValueError, match="no labelled training images"):
        load_probe_data([f"manifest:{tmp_path / 'm.csv'}"], 10)
    with pytest.raises(ValueError, match="train_per_source=0"):
        load_probe_data([f"manifest:{tmp_path / 'm.csv'}"], 0)


def test_probe_scores_test_images_on_their_majority_label_as_evaluate_does() -> None:
    spec = f"ferplus:{shared_path('data', 'ferplus')}"
    data = load_probe_data([spec], 2)
    test = load_source(spec).test
    majority = [s.label for s in test if s.label >= 0]
    assert len(majority) < len(test)  # some FER+ Test faces have contempt/unknown/not-a-face majorities
    assert data.label[~data.train].tolist() == majority


def test_probe_cli_on_real_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"emotion6:{shared_path('data', 'emotion6')}"
    argv = ["train", "probe", "imagenet", "--data", spec, "--train-per-source", "60", "--out", str(tmp_path)]
    assert _cli([*argv, "--threads", "1"]) == 0
    report = json.loads((tmp_path / "probe.json").read_text())
    result = report["results"]["imagenet"]
    assert set(result) == {"person", "person+scene"}
    assert result["person"]["emotion6"]["n"] == 323 and 0 <= result["person"]["emotion6"]["accuracy"] <= 1
    assert "60 training and 323 test images" in capsys.readouterr().out
    assert _cli(["train", "probe", str(tmp_path / "missing.pt"), "--data", spec, "--out", str(tmp_path)]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err


def test_probe_cli_cuts_views_at_each_encoders_geometry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"emotion6:{shared_path('data', 'emotion6')}"
    other = _checkpoint_at(tmp_path, ViewGeometry(1.6, 96), ViewGeometry(3.0, 96, 0.3))
    argv = ["train", "probe", "imagenet", str(other), "--data", spec, "--train-per-source", "20"]
    assert _cli([*argv, "--out", str(tmp_path), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "at person 64 px, scene 64 px" in out and "at person 96 px, scene 96 px" in out
    report = json.loads((tmp_path / "probe.json").read_text())
    assert report["geometry"][str(other)]["person"] == {
        "scale": 1.6,
        "size": 96,
        "y_shift": 0.0,
        "resample": "bilinear",
    }
    assert report["results"][str(other)]["person"]["emotion6"]["n"] == 323  # same images, other cut


@pytest.mark.parametrize("broken", ["train", "test"])
def test_probe_data_needs_a_readable_image_in_each_part(tmp_path: Path, broken: str) -> None:
    """An ExpW-layout copy of 10 real faces whose training (or test) images are all truncated."""
    lines = shared_path("data", "expw", "label.lst").read_text().splitlines()
    kept = list({line.split()[0]: line for line in lines}.values())[::50][:10]
    root = tmp_path / "expw"
    (root / "Images").mkdir(parents=True)
    (root / "label.lst").write_text("\n".join(kept) + "\n")
    for line in kept:
        name = line.split()[0]
        (root / "Images" / name).write_bytes(shared_path("data", "expw", "Images", name).read_bytes())
    for s in getattr(load_source(f"expw:{root}"), broken):
        Path(s.image).write_bytes(Path(s.image).read_bytes()[:40])
    part = "training" if broken == "train" else "test"
    with pytest.raises(DataError, match=f"no usable {part} image among .*not a decodable image"):
        load_probe_data([f"expw:{root}"], 10)
