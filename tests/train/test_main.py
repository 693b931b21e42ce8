"""Tiny real runs: 2-step pretraining and fine-tuning on a handful of real samples, resume, init."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import shared_path
from train.checkpoint import load_checkpoint, load_model
from train.main_finetune import FinetuneConfig
from train.main_finetune import run as finetune
from train.main_pretrain import PretrainConfig
from train.main_pretrain import run as pretrain


@pytest.fixture
def specs() -> list[str]:
    return [f"ferplus:{shared_path('data', 'ferplus')}", f"expw:{shared_path('data', 'expw')}"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_finetune_two_steps_then_resume(tmp_path: Path, specs: list[str]) -> None:
    cfg = FinetuneConfig(
        data=specs,
        out=str(tmp_path),
        max_samples=16,
        max_steps=2,
        batch_size=8,
        threads=1,
        warmup_steps=1,
        epochs=3,
    )
    finetune(cfg)
    rows = _rows(tmp_path / "log.csv")
    assert len(rows) == 1 and rows[0]["global_step"] == "2" and 0 <= float(rows[0]["val_acc"]) <= 1
    model, meta = load_model(tmp_path / "best.pt")
    assert meta.classes[3] == "happy" and not model.training
    cfg.max_steps = 4
    finetune(cfg)
    rows = _rows(tmp_path / "log.csv")
    assert [r["global_step"] for r in rows] == ["2", "4"]
    assert load_checkpoint(tmp_path / "last.pt")["extra"]["state"]["epoch"] == 2


def test_pretrain_two_steps_then_finetune_from_it(tmp_path: Path, specs: list[str]) -> None:
    pre = PretrainConfig(
        data=specs[1:],
        out=str(tmp_path / "pre"),
        max_samples=8,
        max_steps=2,
        batch_size=4,
        threads=1,
        warmup_steps=1,
    )
    pretrain(pre)
    row = _rows(tmp_path / "pre" / "log.csv")[0]
    assert float(row["l3_recon"]) > 0 and float(row["l2_embed"]) > 0 and float(row["l1_profile"]) >= 0
    fine = FinetuneConfig(
        data=specs[1:],
        out=str(tmp_path / "fine"),
        init=str(tmp_path / "pre" / "last.pt"),
        max_samples=8,
        max_steps=1,
        batch_size=4,
        threads=1,
        warmup_steps=1,
    )
    finetune(fine)
    assert (tmp_path / "fine" / "last.pt").exists()


def test_finetune_rejects_empty_data(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image,label\n")
    with pytest.raises(ValueError, match="no training samples"):
        finetune(FinetuneConfig(data=[f"manifest:{tmp_path / 'm.csv'}"], out=str(tmp_path / "o"), threads=1))
