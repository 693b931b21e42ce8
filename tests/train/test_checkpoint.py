"""Checkpoint save → load_model round trip, metadata, resolved config beside it, bad files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE
from train.checkpoint import (
    FORMAT,
    CheckpointError,
    config_sha256,
    load_checkpoint,
    load_model,
    make_meta,
    save_checkpoint,
)
from train.data.records import CLASSES
from train.models import build_model

CONFIG = {"model": "affectline_mnv2_64", "model_kwargs": {"fusion_dim": 64}, "lr": 1e-3}


def test_round_trip(tmp_path: Path) -> None:
    model = build_model("affectline_mnv2_64", pretrained=False, fusion_dim=64).eval()
    opt = torch.optim.AdamW(model.parameters())
    meta = make_meta(CLASSES, DEFAULT_PERSON, DEFAULT_SCENE, CONFIG, "test")
    path = save_checkpoint(tmp_path / "c.pt", model, opt, 3, CONFIG, meta, {"acc": 0.5})
    loaded, meta2 = load_model(path)
    assert not loaded.training
    assert meta2 == meta and meta2.train_config_sha256 == config_sha256(CONFIG)
    assert meta2.input_for("scene").geometry == DEFAULT_SCENE and meta2.classes == CLASSES
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x, x)[0], loaded(x, x)[0])
    resolved = yaml.safe_load((tmp_path / "c.config.yaml").read_text())
    assert resolved["config_sha256"] == config_sha256(CONFIG) and resolved["lr"] == 1e-3
    blob = load_checkpoint(path)
    assert blob["epoch"] == 3 and blob["extra"] == {"acc": 0.5} and blob["optimizer"] is not None


@pytest.mark.parametrize("recorded_in_meta", [True, False], ids=["recorded", "older-checkpoint"])
def test_the_training_split_travels_with_the_model(tmp_path: Path, recorded_in_meta: bool) -> None:
    config = {**CONFIG, "test_fraction": 0.3, "split_seed": 4, "val_fraction": 0.05}
    model = build_model("affectline_mnv2_64", pretrained=False, fusion_dim=64).eval()
    meta = make_meta(CLASSES, DEFAULT_PERSON, DEFAULT_SCENE, config, "test")
    assert meta.train_split == {"test_fraction": 0.3, "split_seed": 4, "val_fraction": 0.05}
    if not recorded_in_meta:  # written before the key existed: the checkpoint's config still has it
        meta = dataclasses.replace(meta, train_split={})
    path = save_checkpoint(tmp_path / "c.pt", model, None, 0, config, meta, {})
    assert load_model(path)[1].train_split == {"test_fraction": 0.3, "split_seed": 4, "val_fraction": 0.05}


def test_config_without_model_name_is_rejected(tmp_path: Path) -> None:
    model = build_model("affectline_mnv2_64", pretrained=False)
    meta = make_meta(CLASSES, DEFAULT_PERSON, DEFAULT_SCENE, {}, "x")
    with pytest.raises(ValueError, match="model_kwargs"):
        save_checkpoint(tmp_path / "c.pt", model, None, 0, {"model": "affectline_mnv2_64"}, meta, {})


@pytest.mark.parametrize(
    "content,match", [(None, "does not exist"), (b"garbage", "not a readable PyTorch checkpoint")]
)
def test_bad_checkpoint_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "c.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_model(path)


def test_foreign_torch_file_is_rejected(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="not an Affectline checkpoint"):
        load_checkpoint(tmp_path / "c.pt")


def _saved(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    model = build_model("affectline_mnv2_64", pretrained=False, fusion_dim=64)
    meta = make_meta(CLASSES, DEFAULT_PERSON, DEFAULT_SCENE, CONFIG, "test")
    path = save_checkpoint(tmp_path / "c.pt", model, None, 0, CONFIG, meta, {})
    return path, torch.load(path, weights_only=True)


@pytest.mark.parametrize("drop", ["state_dict", "meta_props", "model_kwargs", "model"])
def test_incomplete_checkpoint_names_the_missing_entry(tmp_path: Path, drop: str) -> None:
    path, blob = _saved(tmp_path)
    del blob[drop]
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match=rf"c\.pt: an incomplete checkpoint, missing {drop}$"):
        load_model(path)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("model", "resnet50", "model name 'resnet50' unknown"),
        ("model_kwargs", {"width": 2}, "unexpected keyword"),
    ],
)
def test_a_model_this_version_cannot_build_names_the_file(
    tmp_path: Path, key: str, value: object, match: str
) -> None:
    path, blob = _saved(tmp_path)
    blob[key] = value
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match=rf"c\.pt: cannot build its model: .*{match}"):
        load_model(path)


class _RunsCode:
    """Unpickling this calls a function (here a harmless one): what a malicious .pt would do."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran while loading",))


def test_a_checkpoint_that_would_run_code_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint"):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out
