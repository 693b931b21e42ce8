"""Checkpoint save → load_model round trip, metadata, resolved config beside it, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE
from train.checkpoint import (
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


def test_config_without_model_name_is_rejected(tmp_path: Path) -> None:
    model = build_model("affectline_mnv2_64", pretrained=False)
    meta = make_meta(CLASSES, DEFAULT_PERSON, DEFAULT_SCENE, {}, "x")
    with pytest.raises(ValueError, match="model_kwargs"):
        save_checkpoint(tmp_path / "c.pt", model, None, 0, {"model": "affectline_mnv2_64"}, meta, {})


@pytest.mark.parametrize("content,match", [(None, "does not exist"), (b"garbage", "not readable")])
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
