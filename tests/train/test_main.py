"""Tiny real runs: 2-step pretraining and fine-tuning on a handful of real samples, resume, init."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import shared_path
from train.checkpoint import CheckpointError, load_checkpoint, load_model
from train.data.records import DataError
from train.data.sources import load_source
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
    common: dict[str, Any] = {
        "data": specs,
        "out": str(tmp_path),
        "max_samples": 16,
        "batch_size": 8,
        "threads": 1,
    }
    finetune(FinetuneConfig(**common, warmup_steps=1, epochs=1, ema_decay=0.0))
    finetune(FinetuneConfig(**common, warmup_steps=1, epochs=2))  # the average switched on midway
    last = load_checkpoint(tmp_path / "last.pt")
    assert int(last["extra"]["heads"]["ema"]["updates"]) == 2  # the second epoch's steps only


@pytest.mark.parametrize(
    "change,named",
    [
        ({"batch_size": 4}, "batch_size: 8 -> 4"),
        ({"model": "affectline_mnv2_64", "model_kwargs": {"fusion_dim": 256}}, "model_kwargs:"),
        ({"lr": 0.01}, "lr: 0.001 -> 0.01"),
    ],
    ids=["batch", "model", "lr"],
)
def test_resume_refuses_a_run_written_with_another_config(
    tmp_path: Path, specs: list[str], change: dict[str, Any], named: str
) -> None:
    common: dict[str, Any] = {
        "data": specs,
        "out": str(tmp_path),
        "max_samples": 16,
        "threads": 1,
        "warmup_steps": 1,
    }
    finetune(FinetuneConfig(**{"batch_size": 8, "max_steps": 1, **common}))
    with pytest.raises(CheckpointError, match=f"another config \\(.*{named}.*--no-resume"):
        finetune(FinetuneConfig(**{"batch_size": 8, "max_steps": 2, **common, **change}))
    # Where and how long it runs may change: a larger step limit resumes.
    finetune(FinetuneConfig(**{"batch_size": 8, "max_steps": 2, **common, "checkpoint_minutes": 5.0}))
    assert load_checkpoint(tmp_path / "last.pt")["extra"]["state"]["global_step"] == 2


def test_a_finished_run_says_there_is_nothing_to_train(
    tmp_path: Path, specs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = FinetuneConfig(data=specs, out=str(tmp_path), max_samples=16, batch_size=8, threads=1, max_steps=1)
    finetune(cfg)
    capsys.readouterr()
    assert finetune(cfg) == {}
    assert f"nothing to train (1 step(s) and 0 of {cfg.epochs} epoch(s) done" in capsys.readouterr().out


def test_an_epoch_cut_by_the_step_limit_is_finished_by_a_resume(tmp_path: Path, specs: list[str]) -> None:
    common: dict[str, Any] = {
        "data": specs,
        "out": str(tmp_path),
        "max_samples": 32,
        "batch_size": 8,
        "threads": 1,
    }
    finetune(FinetuneConfig(**common, max_steps=1))  # 4 steps per epoch: cut after the first
    state = load_checkpoint(tmp_path / "last.pt")["extra"]["state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 1, 1)
    finetune(FinetuneConfig(**common, max_steps=4))
    state = load_checkpoint(tmp_path / "last.pt")["extra"]["state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 4)
    rows = _rows(tmp_path / "log.csv")
    assert [(r["epoch"], r["global_step"]) for r in rows] == [("1", "1"), ("1", "4")]


def test_unusable_images_are_dropped_from_training_and_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ExpW-layout copy of 16 real faces, every other image file truncated: training counts and
    drops them, and validation scores only the readable ones."""
    root = tmp_path / "expw"
    (root / "Images").mkdir(parents=True)
    lines = Path(shared_path("data", "expw", "label.lst")).read_text().splitlines()
    chosen = {line.split()[0]: line for line in lines}  # one face per image
    kept = list(chosen.values())[::50][:16]
    for i, line in enumerate(kept):
        name = line.split()[0]
        data = Path(shared_path("data", "expw", "Images", name)).read_bytes()
        (root / "Images" / name).write_bytes(data if i % 2 else data[:40])
    (root / "label.lst").write_text("\n".join(kept) + "\n")
    cfg = FinetuneConfig(
        data=[f"expw:{root}"],
        out=str(tmp_path / "run"),
        batch_size=4,
        threads=1,
        max_steps=2,
        test_fraction=0.2,
        val_fraction=0.5,
    )
    finetune(cfg)
    out = capsys.readouterr().out
    row = json.loads([x for x in out.splitlines() if x.startswith("{")][-1])
    splits = load_source(cfg.data[0], 0.2, 0, 0.5)
    truncated = {line.split()[0] for line in kept[::2]}
    bad_val = sum(Path(s.image).name in truncated for s in splits.val)
    assert 0 < bad_val < len(splits.val)  # the split put readable and truncated images in val
    assert row["val_skipped"] == bad_val and row["val_n"] == len(splits.val) - bad_val
    state = load_checkpoint(tmp_path / "run" / "last.pt")["extra"]["state"]
    assert state["skipped_images"] == row["skipped_images"] > 0
    assert f"skipped {state['skipped_images']} unusable image draw(s) in training, e.g. " in out
    assert "not a decodable image" in out


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
    linear, norm = torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)
    net = torch.nn.Sequential(linear, norm)
    ema = WeightEma(net, decay=0.9)
    w0 = linear.weight.detach().clone()
    with torch.no_grad():
        linear.weight.add_(1.0)
    assert norm.num_batches_tracked is not None
    norm.num_batches_tracked += 5
    ema.update(net)  # first update: decay min(0.9, 1/10) = 0.1
    averaged = dict(ema.module.named_parameters()) | dict(ema.module.named_buffers())
    assert torch.allclose(averaged["0.weight"], 0.1 * w0 + 0.9 * (w0 + 1))
    assert int(averaged["1.num_batches_tracked"]) == 5 and not averaged["0.weight"].requires_grad


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
    assert float(row["l3_recon"]) > 0 and float(row["l2_embed"]) > 0 and float(row["l1_profile"]) > 0
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


def test_finetune_on_only_unusable_images_stops_without_a_model(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "m.csv").write_text("image,label\n" + "broken.png,happy\n" * 4)
    cfg = FinetuneConfig(
        data=[f"manifest:{tmp_path / 'm.csv'}"], out=str(tmp_path / "o"), batch_size=2, threads=1, max_steps=1
    )
    with pytest.raises(DataError, match=r"no usable training image among 4 \(e.g. .*not a decodable image"):
        finetune(cfg)
    assert not (tmp_path / "o" / "best.pt").exists() and not (tmp_path / "o" / "last.pt").exists()
