"""Tiny real runs: 2-step pretraining and fine-tuning on a handful of real samples, resume, init."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import shared_path
from train.checkpoint import load_checkpoint, load_model
from train.main_finetune import FinetuneConfig, WeightEma, per_source_accuracy
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


def test_best_holds_the_averaged_weights_and_resume_keeps_the_average(
    tmp_path: Path, specs: list[str]
) -> None:
    cfg = FinetuneConfig(
        data=specs,
        out=str(tmp_path),
        max_samples=16,
        max_steps=3,
        batch_size=8,
        threads=1,
        warmup_steps=1,
        epochs=1,
        ema_decay=0.5,
    )
    finetune(cfg)
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    ema = last["extra"]["heads"]["ema"]
    assert int(ema["updates"]) == 2  # 2 steps per epoch of 16 samples; the budget of 3 is not reached
    for name, value in best["state_dict"].items():
        assert torch.equal(value, ema[f"module.{name}"]), name
    moved = [
        n
        for n, v in last["state_dict"].items()
        if v.is_floating_point() and not torch.equal(v, ema[f"module.{n}"])
    ]
    assert moved  # the raw weights (kept for resuming) differ from their average
    row = _rows(tmp_path / "log.csv")[0]
    assert float(row["val_mean_acc"]) == pytest.approx(
        np.mean([float(row["val_acc_expw"]), float(row["val_acc_ferplus"])])
    )
    cfg.epochs = 2
    finetune(cfg)
    assert int(load_checkpoint(tmp_path / "last.pt")["extra"]["heads"]["ema"]["updates"]) == 3


def test_resume_without_saved_average_restarts_it(tmp_path: Path, specs: list[str]) -> None:
    common = {"data": specs, "out": str(tmp_path), "max_samples": 16, "batch_size": 8, "threads": 1}
    finetune(FinetuneConfig(**common, warmup_steps=1, epochs=1, ema_decay=0.0))
    finetune(FinetuneConfig(**common, warmup_steps=1, epochs=2))  # the average switched on midway
    last = load_checkpoint(tmp_path / "last.pt")
    assert int(last["extra"]["heads"]["ema"]["updates"]) == 2  # the second epoch's steps only


@pytest.mark.parametrize(
    "select,column", [("last", None), ("mean_acc", "val_mean_acc"), ("accuracy", "val_acc")]
)
def test_best_follows_the_selection_rule(
    tmp_path: Path, specs: list[str], select: str, column: str | None
) -> None:
    cfg = FinetuneConfig(
        data=specs,
        out=str(tmp_path),
        max_samples=16,
        batch_size=8,
        threads=1,
        warmup_steps=1,
        epochs=3,
        select=select,
        lr=0.05,  # a large rate, so that the epochs' scores differ
    )
    finetune(cfg)
    rows = _rows(tmp_path / "log.csv")
    best = load_checkpoint(tmp_path / "best.pt")["extra"]["metrics"]
    if column is None:
        assert best["val_mean_acc"] == pytest.approx(float(rows[-1]["val_mean_acc"]))
    else:
        first_best = max(rows, key=lambda r: float(r[column]))  # max() keeps the first of equals
        assert best[column] == pytest.approx(float(first_best[column]))
        assert best["val_mean_acc"] == pytest.approx(float(first_best["val_mean_acc"]))


@pytest.mark.parametrize(
    "labels,preds,sources,expected",
    [
        ([-1, -1], [0, 1], ["a", "b"], {}),  # nothing labelled: no mean to select on
        ([0, 1, -1], [0, 0, 3], ["a", "a", "b"], {"val_acc_a": 0.5, "val_mean_acc": 0.5}),
        (
            [0, 0, 0, 0, 2],
            [0, 0, 0, 1, 1],
            ["big", "big", "big", "big", "small"],
            {"val_acc_big": 0.75, "val_acc_small": 0.0, "val_mean_acc": 0.375},  # each source counts once
        ),
    ],
)
def test_per_source_accuracy(
    labels: list[int], preds: list[int], sources: list[str], expected: dict[str, float]
) -> None:
    got = per_source_accuracy(np.array(labels), np.array(preds), np.array(sources))
    assert got == pytest.approx(expected)


def test_weight_ema_follows_the_schedule() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEma(net, decay=0.9)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked += 5
    ema.update(net)  # first update: decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.module[0].weight, 0.1 * w0 + 0.9 * (w0 + 1))
    assert int(ema.module[1].num_batches_tracked) == 5 and not ema.module[0].weight.requires_grad


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
