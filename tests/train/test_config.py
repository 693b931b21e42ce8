"""Run-config flags: every numeric flag parses to its config field's type and overrides only that field."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from train.config import FinetuneConfig, PretrainConfig, finetune_args, merge_config, pretrain_args


@pytest.mark.parametrize("cls,add_flags", [(FinetuneConfig, finetune_args), (PretrainConfig, pretrain_args)])
def test_numeric_flags_take_the_field_type(
    cls: type[FinetuneConfig] | type[PretrainConfig], add_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = argparse.ArgumentParser()
    add_flags(p)
    args = p.parse_args(["--epochs", "3", "--lr", "0.01", "--scene-y-shift", "1", "--no-resume"])
    cfg = cls(**merge_config(cls, args))
    assert cfg.epochs == 3 and type(cfg.epochs) is int
    assert cfg.lr == 0.01 and type(cfg.scene_y_shift) is float
    assert cfg.resume is False
    assert (
        dataclasses.replace(cfg, epochs=cls.epochs, lr=cls.lr, scene_y_shift=cls.scene_y_shift, resume=True)
        == cls()
    )


@pytest.mark.parametrize("cls,add_flags", [(FinetuneConfig, finetune_args), (PretrainConfig, pretrain_args)])
def test_resample_flag_reaches_both_view_geometries(
    cls: type[FinetuneConfig] | type[PretrainConfig], add_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = argparse.ArgumentParser()
    add_flags(p)
    assert {g.resample for g in cls(**merge_config(cls, p.parse_args([]))).geometries()} == {"bilinear"}
    cfg = cls(**merge_config(cls, p.parse_args(["--resample", "area"])))
    assert {g.resample for g in cfg.geometries()} == {"area"}


def test_flags_left_out_keep_the_defaults() -> None:
    p = argparse.ArgumentParser()
    pretrain_args(p)
    assert PretrainConfig(**merge_config(PretrainConfig, p.parse_args([]))) == PretrainConfig()


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("ema_decay", 1.0, r"ema_decay=1.0 outside \[0, 1\)"),
        ("ema_decay", -0.5, "ema_decay"),
        ("select", "loss", "select='loss' not one of"),
        ("select", "", "select='' not one of"),
        ("resample", "nearest", "resample='nearest' not one of"),
        ("data", ["expw:/d/expw", "expw:/d/expw"], "data source 'expw:/d/expw' given twice"),
        ("data", ["expw:/d/expw", "expw:/d/../d/expw/"], "given twice"),  # the same folder, spelt apart
    ],
)
def test_finetune_config_refuses_bad_values(field: str, value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FinetuneConfig(**{field: value})


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("teacher", "", "teacher='' not one of"),
        ("teacher", "CLIP", "teacher='CLIP' not one of"),
        ("mask_ratio", 1.0, r"mask_ratio=1.0 outside \[0, 1\)"),
        ("mask_ratio", -0.1, "mask_ratio=-0.1"),
        ("teacher_scene_weight", 1.5, r"teacher_scene_weight=1.5 outside \[0, 1\]"),
        ("teacher_scene_weight", -1.0, "teacher_scene_weight=-1.0"),
        ("resample", "", "resample='' not one of"),
        ("data", ["video:/v.mp4", "video:/v.mp4"], "data source 'video:/v.mp4' given twice"),
    ],
)
def test_pretrain_config_refuses_bad_values(field: str, value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**{field: value})


@pytest.mark.parametrize(
    "model,sizes",
    [
        ("affectline_mnv2_32", (32, 32)),
        ("affectline_mnv2_96", (96, 96)),
        ("affectline_mnv2_96_96", (96, 96)),
        ("affectline_mnv2_96_64", None),
        ("affectline_mnv2_64_128", None),
    ],
)
@pytest.mark.parametrize("cls", [FinetuneConfig, PretrainConfig])
def test_runs_train_only_views_of_equal_size(
    cls: type[FinetuneConfig] | type[PretrainConfig], model: str, sizes: tuple[int, int] | None
) -> None:
    cfg = cls(model=model)
    if sizes is None:
        with pytest.raises(ValueError, match=rf"{model}'.*unequal size.*BatchNorm"):
            cfg.geometries()
    else:
        person, scene = cfg.geometries()
        assert (person.size, scene.size) == sizes


def test_default_recipe_file_is_a_valid_finetune_config() -> None:
    """``train/recipes/default.yaml`` (docs/training.md) loads through ``--config`` as the runs had it."""
    recipe = Path(__file__).parents[2] / "train" / "recipes" / "default.yaml"
    cfg = FinetuneConfig(**merge_config(FinetuneConfig, argparse.Namespace(config=str(recipe))))
    assert cfg.source_weights == {"ferplus": 1.0, "expw": 1.5, "emotion6": 1.0}
