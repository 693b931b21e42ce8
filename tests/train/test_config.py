"""Run-config flags: every numeric flag parses to its config field's type and overrides only that field."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from train.config import (
    RANGES,
    AugmentConfig,
    FinetuneConfig,
    PretrainConfig,
    finetune_args,
    merge_config,
    pretrain_args,
    run_config,
)


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
        ("ema_decay", 1.0, r"ema_decay=1.0: must be in \[0, 1\)"),
        ("ema_decay", -0.5, "ema_decay"),
        ("epochs", 0, r"^epochs=0: must be >= 1$"),  # a recipe file's value, named by its key
        ("batch_size", 0, r"^batch_size=0: must be >= 1$"),
        ("threads", 0, r"^threads=0: must be >= 1$"),
        ("budget_minutes", -1.0, r"^budget_minutes=-1.0: must be >= 0$"),
        ("lr", 0.0, r"^lr=0.0: must be > 0$"),
        ("lr", float("nan"), r"^lr=nan: must be a finite number > 0$"),
        ("lr", "1e-3", r"^lr='1e-3': must be a number \(YAML reads it as text; write it with a dot"),
        ("epochs", 2.5, r"^epochs=2.5: must be an integer$"),  # would silently round
        ("budget_minutes", float("inf"), r"^budget_minutes=inf: must be a finite number >= 0$"),
        ("max_steps", -1, r"^max_steps=-1: must be >= 0$"),
        ("epochs", "3", r"^epochs='3': must be an integer"),
        ("select", "loss", "select='loss' not one of"),
        ("select", "", "select='' not one of"),
        ("resample", "nearest", "resample='nearest' not one of"),
        ("data", ["expw:/d/expw", "expw:/d/expw"], "data source 'expw:/d/expw' given twice"),
        ("data", ["expw:/d/expw", "expw:/d/../d/expw/"], "given twice"),  # the same folder, spelt apart
        ("augment", [], r"augment=\[\]: must be a mapping"),
        ("augment", {"blur": 0.5}, r"augment: unknown key\(s\) \['blur'\]; allowed \["),
        ("augment", {"degrade": 1.5}, r"^augment.degrade=1.5: must be in \[0, 1\]$"),
        ("augment", {"degrade": -0.1}, r"^augment.degrade=-0.1: must be in \[0, 1\]$"),
        ("augment", {"flip": "yes"}, r"^augment.flip='yes': must be a number$"),
        ("augment", {"erase": True}, r"^augment.erase=True: must be a number$"),
        ("augment", {"rotate_deg": 270}, r"^augment.rotate_deg=270: must be in \[0, 180\]$"),
        ("augment", {"scale": 1.0}, r"^augment.scale=1.0: must be in \[0, 1\)$"),
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
        ("mask_ratio", 1.0, r"mask_ratio=1.0: must be in \[0, 1\)"),
        ("mask_ratio", -0.1, "mask_ratio=-0.1"),
        ("teacher_scene_weight", 1.5, r"teacher_scene_weight=1.5: must be in \[0, 1\]"),
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


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--threads", "0"], "argument --threads: 0: must be >= 1"),
        (["--batch-size", "0"], "argument --batch-size: 0: must be >= 1"),
        (["--epochs", "0"], "argument --epochs: 0: must be >= 1"),
        (["--budget-minutes", "-1"], "argument --budget-minutes: -1: must be >= 0"),
        (["--lr", "nan"], "argument --lr: nan: must be a finite number > 0"),
        (["--val-fraction", "1"], "argument --val-fraction: 1: must be in [0, 1)"),
    ],
)
def test_finetune_flags_refuse_values_outside_their_range(
    capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    p = argparse.ArgumentParser(prog="finetune")
    finetune_args(p)
    with pytest.raises(SystemExit) as info:
        p.parse_args(args)
    assert info.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"finetune: error: {error}"


@pytest.mark.parametrize("cls", [FinetuneConfig, PretrainConfig])
def test_every_numeric_field_has_a_range(cls: type) -> None:
    numeric = {name for name, t in get_type_hints(cls).items() if t in (int, float)}
    assert numeric == numeric & set(RANGES), sorted(numeric - set(RANGES))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("checkpoint_minutes", float("inf")),
        ("split_seed", -1),
        ("warmup_steps", 0),
        ("checkpoint_minutes", 0.0),
    ],
)
def test_meaningful_edge_values_stay_allowed(field: str, value: Any) -> None:
    """inf = checkpoint only at epoch ends; split_seed is only hashed; 0 = no warmup / every step."""
    assert getattr(FinetuneConfig(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("content", "data", "match"),
    [
        (None, ["ferplus:/d"], r"^--config=.*missing\.yaml: cannot read it \(No such file or directory\)$"),
        (
            "hello\n",
            ["ferplus:/d"],
            r"^--config=.*c\.yaml: holds a str; expected a mapping of FinetuneConfig fields$",
        ),
        ("[1, 2\n", ["ferplus:/d"], r"^--config=.*c\.yaml: not YAML or JSON \("),
        ("\udcff", ["ferplus:/d"], r"^--config=.*c\.yaml: not YAML or JSON \("),  # binary: not UTF-8
        ("[]\n", ["ferplus:/d"], r"^--config=.*c\.yaml: holds a list; expected a mapping"),
        ("epochs: 0\n", ["ferplus:/d"], r"^epochs=0: must be >= 1$"),
        ("epochs: 3\n", None, r"^--data: no data source given; pass --data KIND:PATH"),
    ],
)
def test_run_config_names_what_is_wrong(
    tmp_path: Path, content: str | None, data: list[str] | None, match: str
) -> None:
    path = tmp_path / ("missing.yaml" if content is None else "c.yaml")
    if content is not None:
        path.write_text(content, errors="surrogateescape")  # '\udcff' writes the byte 0xff
    args = argparse.Namespace(config=str(path), data=data)
    with pytest.raises(ValueError, match=match):
        run_config(FinetuneConfig, args)


def test_run_config_takes_data_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("data: ['ferplus:/d']\nepochs: 3\n")
    cfg = run_config(
        FinetuneConfig, argparse.Namespace(config=str(tmp_path / "c.yaml"), data=None, epochs=None)
    )
    assert cfg.data == ["ferplus:/d"] and cfg.epochs == 3


@pytest.mark.parametrize(
    ("cls", "given", "erase", "degrade"),
    [
        (FinetuneConfig, {}, 0.25, 0.0),
        (FinetuneConfig, {"degrade": 0.3}, 0.25, 0.3),  # a partial mapping keeps the other defaults
        (PretrainConfig, {"degrade": 0.3}, 0.0, 0.3),  # pretraining's own default (no erasing) stays
        (PretrainConfig, {"erase": 1}, 1.0, 0.0),
    ],
)
def test_augment_mapping_resolves_over_each_command_default(
    cls: type, given: dict[str, float], erase: float, degrade: float
) -> None:
    """The resolved config records every strength, so a run's file says exactly what it drew."""
    aug = cls(augment=given).augment
    assert set(aug) == {f.name for f in dataclasses.fields(AugmentConfig)}
    assert aug["erase"] == erase and aug["degrade"] == degrade
    assert all(isinstance(v, float) for v in aug.values())
