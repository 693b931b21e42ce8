"""``train.soup``: the averaged checkpoint is the elementwise mean, loads like any other, and
ingredients that differ in network, views or held-out split are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from edge_agent.cli import build_parser
from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE, ViewGeometry
from train.checkpoint import CheckpointError, load_checkpoint, load_model, make_meta, save_checkpoint
from train.data.records import CLASSES
from train.models import build_model
from train.soup import average_checkpoints, average_state_dicts

BASE = {
    "model": "affectline_mnv2_64",
    "model_kwargs": {"fusion_dim": 64},
    "test_fraction": 0.2,
    "split_seed": 0,
}


def _ingredient(path: Path, seed: int, person: ViewGeometry = DEFAULT_PERSON, **config: Any) -> Path:
    torch.manual_seed(seed)
    cfg = {**BASE, **config, "seed": seed}
    model = build_model(cfg["model"], pretrained=False, **cfg["model_kwargs"])
    with torch.no_grad():  # BatchNorm statistics differ between runs too; give them distinct values
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                mean, var = module.running_mean, module.running_var
                assert mean is not None and var is not None
                mean.uniform_(-1, 1)
                var.uniform_(0.5, 2)
    meta = make_meta(CLASSES, person, DEFAULT_SCENE, cfg, f"run {seed}")
    opt = torch.optim.AdamW(model.parameters())
    return save_checkpoint(path, model, opt, seed, cfg, meta, {})


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"model_kwargs": {"fusion_dim": 32}}, "model_kwargs"),
        ({"test_fraction": 0.3}, "meta"),
        ({"split_seed": 1}, "meta"),
        ({"person": ViewGeometry(size=64, scale=1.5, y_shift=0.0)}, "meta"),
    ],
)
def test_different_ingredients_are_refused_by_name(
    tmp_path: Path, change: dict[str, Any], names: str
) -> None:
    a = _ingredient(tmp_path / "a.pt", 0)
    b = _ingredient(tmp_path / "b.pt", 1, **change)
    with pytest.raises(CheckpointError, match=rf"b\.pt: {names} differs from .*a\.pt"):
        average_checkpoints([a, b], tmp_path / "soup.pt")
    assert not (tmp_path / "soup.pt").exists()


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_checkpoints_are_refused(tmp_path: Path, count: int) -> None:
    paths = [_ingredient(tmp_path / f"{i}.pt", i) for i in range(count)]
    with pytest.raises(ValueError, match=f"need at least 2 to average, got {count}"):
        average_checkpoints(paths, tmp_path / "soup.pt")


def test_one_file_twice_is_refused(tmp_path: Path) -> None:
    a = _ingredient(tmp_path / "a.pt", 0)
    b = _ingredient(tmp_path / "b.pt", 1)
    with pytest.raises(
        ValueError, match=r"checkpoints: '.*/sub/\.\./a\.pt' is given twice \(as '.*/a\.pt'\)"
    ):
        average_checkpoints([a, b, tmp_path / "sub" / ".." / "a.pt"], tmp_path / "soup.pt")
    with pytest.raises(ValueError, match=r"checkpoints: '.*/b\.pt' is given twice$"):
        average_checkpoints([a, b, b], tmp_path / "soup.pt")
    assert not (tmp_path / "soup.pt").exists()


def test_missing_ingredient_names_the_file(tmp_path: Path) -> None:
    a = _ingredient(tmp_path / "a.pt", 0)
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        average_checkpoints([a, tmp_path / "nope.pt"], tmp_path / "soup.pt")


def test_soup_is_the_elementwise_mean_and_loads_as_a_model(tmp_path: Path) -> None:
    paths = [_ingredient(tmp_path / f"{i}.pt", i) for i in range(3)]
    out = average_checkpoints(paths, tmp_path / "soup" / "best.pt")
    blob = load_checkpoint(out)
    states = [load_checkpoint(p)["state_dict"] for p in paths]
    for key, value in blob["state_dict"].items():
        if value.is_floating_point():
            expected = (states[0][key].double() + states[1][key].double() + states[2][key].double()) / 3
            torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, states[0][key])
    assert blob["optimizer"] is None
    assert [s["path"] for s in blob["config"]["soup_of"]] == [str(p) for p in paths]
    model, meta = load_model(out)
    assert meta.model_version == "run 0 soup of 3"
    assert meta.train_split == load_model(paths[0])[1].train_split
    assert meta.train_config_sha256 == blob["config_sha256"] != load_checkpoint(paths[0])["config_sha256"]
    assert (tmp_path / "soup" / "best.config.yaml").is_file()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, va = model(x, x)
    assert logits.shape == (2, len(CLASSES)) and va.shape == (2, 2)


def test_soup_of_copies_of_one_checkpoint_changes_nothing(tmp_path: Path) -> None:
    a = _ingredient(tmp_path / "a.pt", 0)
    state = load_checkpoint(a)["state_dict"]
    averaged = average_state_dicts([state, state])
    assert all(torch.equal(averaged[k], state[k]) for k in state)


@pytest.mark.parametrize(("argv_count", "code"), [(1, 2), (2, 0)])
def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv_count: int, code: int) -> None:
    paths = [str(_ingredient(tmp_path / f"{i}.pt", i)) for i in range(argv_count)]
    args = build_parser().parse_args(["train", "soup", *paths, "--out", str(tmp_path / "s.pt")])
    assert args.func(args) == code
    captured = capsys.readouterr()
    if code:
        assert captured.err.count("\n") == 1 and "need at least 2" in captured.err
    else:
        assert (tmp_path / "s.pt").is_file() and "wrote" in captured.out


@pytest.mark.parametrize(
    ("damaged", "match"),
    [
        ("b", r"b\.pt: weight 'fuse\.weight' differs in name or shape from .*a\.pt"),
        ("both", r"a\.pt: weights do not fit model 'affectline_mnv2_64'"),
    ],
)
def test_weights_that_do_not_fit_are_refused(tmp_path: Path, damaged: str, match: str) -> None:
    paths = {name: _ingredient(tmp_path / f"{name}.pt", seed) for seed, name in enumerate("ab")}
    for name in ("a", "b") if damaged == "both" else (damaged,):
        blob = load_checkpoint(paths[name])
        del blob["state_dict"]["fuse.weight"]
        torch.save(blob, paths[name])
    with pytest.raises(CheckpointError, match=match):
        average_checkpoints([paths["a"], paths["b"]], tmp_path / "soup.pt")
    assert not (tmp_path / "soup.pt").exists()
