"""Run configurations and their command-line flags (light: no torch import, so ``affectline --help``
and ``affectline validate`` stay fast).

Every run resolves one of these dataclasses (defaults < ``--config`` file < flags) and stores it,
with its sha256, next to every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

from edge_agent.ranges import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, Range, flag_type
from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE, RESAMPLES, ViewGeometry

TEACHERS = ("offline", "clip", "none")
SELECT = ("last", "mean_acc", "accuracy")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (0 disables each)."""

    flip: float = 0.5
    shift: float = 0.06
    scale: float = 0.10
    rotate_deg: float = 10.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    grayscale: float = 0.15
    erase: float = 0.25
    # Probability that a sample's two views get one camera degradation (train.data.degrade: a small face
    # scaled up, blur, JPEG, sensor noise or under-exposure) at a random strength. 0 keeps the draws of
    # every run before it exactly as they were.
    degrade: float = 0.0


# Allowed strength of each augmentation (``augment:`` in a recipe); probabilities are in [0, 1].
AUGMENT_RANGES: dict[str, Range] = {
    "flip": Range(0, 1),
    "shift": Range(0, 0.5),
    "scale": Range(0, 1, hi_open=True),
    "rotate_deg": Range(0, 180),
    "brightness": Range(0, 1),
    "contrast": Range(0, 1),
    "saturation": Range(0, 1),
    "grayscale": Range(0, 1),
    "erase": Range(0, 1),
    "degrade": Range(0, 1),
}


def resolve_augment(given: dict[str, Any], defaults: AugmentConfig) -> dict[str, float]:
    """``given`` over ``defaults``, every strength checked: the full dict a run records.

    Raises:
        ValueError: an unknown key (naming the allowed ones), a value that is not a number, or one
            outside its ``AUGMENT_RANGES`` entry (``augment.flip=1.5: must be in [0, 1]``).
    """
    if not isinstance(given, dict):
        raise ValueError(f"augment={given!r}: must be a mapping of {sorted(AUGMENT_RANGES)}")
    unknown = set(given) - set(AUGMENT_RANGES)
    if unknown:
        raise ValueError(f"augment: unknown key(s) {sorted(unknown)}; allowed {sorted(AUGMENT_RANGES)}")
    merged = {**dataclasses.asdict(defaults), **given}
    for name, value in merged.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"augment.{name}={value!r}: {_not_a_number(value, float)}")
        AUGMENT_RANGES[name].check(f"augment.{name}", value)
    return {k: float(v) for k, v in merged.items()}


class _RunViews:
    """The view geometries of a run config (a mixin: the dataclasses below own the fields)."""

    model: str
    person_scale: float
    scene_scale: float
    scene_y_shift: float
    resample: str

    def check_resample(self) -> None:
        if self.resample not in RESAMPLES:
            raise ValueError(f"resample={self.resample!r} not one of {RESAMPLES}")

    def geometries(self) -> tuple[ViewGeometry, ViewGeometry]:
        """Person and scene view geometry: the config's scales with the model's input sizes.

        Raises:
            ValueError: the model's views differ in size. They cannot then share one 2N batch, so
                BatchNorm would train each view on its own batch statistics but run both on shared
                running statistics at inference (docs/results.md, ``r7``: raw FER+ Valid 56.5 % after
                one epoch at 96/64, against 68.6 % at 64/64).
        """
        from train.models import view_sizes

        sp, ss = view_sizes(self.model)
        if sp != ss:
            raise ValueError(
                f"model {self.model!r}: person and scene views of unequal size ({sp} and {ss} px) cannot "
                f"be trained (BatchNorm statistics would differ between training and inference); "
                f"use one size for both views, e.g. affectline_mnv2_{sp}"
            )
        return (
            ViewGeometry(self.person_scale, sp, resample=self.resample),
            ViewGeometry(self.scene_scale, ss, self.scene_y_shift, self.resample),
        )


# What each numeric field allows; the same table checks recipe files and command-line flags.
RANGES: dict[str, Range] = {
    "epochs": AT_LEAST_1,
    "max_steps": AT_LEAST_0,  # 0 = no step limit
    "batch_size": AT_LEAST_1,
    "threads": AT_LEAST_1,
    "workers": AT_LEAST_0,
    "seed": AT_LEAST_0,
    "split_seed": Range(),  # only hashed into the split's name: any integer
    "max_samples": AT_LEAST_0,  # 0 = all
    "warmup_steps": AT_LEAST_0,
    "budget_minutes": AT_LEAST_0,  # 0 = no budget
    "checkpoint_minutes": Range(0, infinite_ok=True),  # 0 = every step, inf = only at epoch ends
    "lr": POSITIVE,
    "min_lr": AT_LEAST_0,
    "encoder_lr_scale": AT_LEAST_0,
    "weight_decay": AT_LEAST_0,
    "class_power": AT_LEAST_0,
    "va_weight": AT_LEAST_0,
    "prior_va_weight": AT_LEAST_0,
    "label_smoothing": FRACTION,
    "test_fraction": FRACTION,
    "val_fraction": FRACTION,
    "ema_decay": FRACTION,
    "person_scale": POSITIVE,
    "scene_scale": POSITIVE,
    "scene_y_shift": Range(),
    "mask_ratio": FRACTION,  # one patch must stay visible
    "w_profile": AT_LEAST_0,
    "w_embed": AT_LEAST_0,
    "w_recon": AT_LEAST_0,
    "teacher_scene_weight": Range(0, 1),
}


def check_ranges(cfg: Any) -> None:
    """Refuse a numeric field of ``cfg`` outside `RANGES` (``name=value: rule``).

    Raises:
        ValueError: the first field outside its range, a float for an integer field (``epochs: 2.5``
            would silently round), or a value that is not a number at all.
    """
    types = get_type_hints(type(cfg))
    for name, allowed in RANGES.items():
        if not hasattr(cfg, name):
            continue
        value, want = getattr(cfg, name), types[name]
        if isinstance(value, bool) or not isinstance(value, int if want is int else int | float):
            raise ValueError(f"{name}={value!r}: {_not_a_number(value, want)}")
        allowed.check(name, value)


def _not_a_number(value: Any, want: type) -> str:
    """Why ``value`` is no value for a field of type ``want``, with the YAML pitfall spelt out."""
    rule = "must be an integer" if want is int else "must be a number"
    try:
        float(value)
    except (TypeError, ValueError):
        return rule
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
        return f"{rule} (YAML reads it as text; write it with a dot and a signed exponent, e.g. 1.0e-3)"
    return rule


@dataclass
class FinetuneConfig(_RunViews):
    """Everything that defines a fine-tuning run (resolved and stored next to every checkpoint)."""

    data: list[str] = field(default_factory=list)
    out: str = "runs/finetune"
    model: str = "affectline_mnv2_64"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"fusion_dim": 512, "dropout": 0.2})
    init: str = ""
    person_scale: float = DEFAULT_PERSON.scale
    scene_scale: float = DEFAULT_SCENE.scale
    scene_y_shift: float = DEFAULT_SCENE.y_shift
    resample: str = DEFAULT_SCENE.resample
    epochs: int = 30
    budget_minutes: float = 0.0
    max_steps: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    encoder_lr_scale: float = 0.5
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 300
    label_smoothing: float = 0.05
    class_power: float = 0.5
    source_weights: dict[str, float] = field(
        default_factory=lambda: {"ferplus": 1.0, "expw": 1.5, "emotion6": 0.5}
    )
    va_weight: float = 0.5
    prior_va_weight: float = 0.3
    augment: dict[str, float] = field(default_factory=lambda: dataclasses.asdict(AugmentConfig()))
    # Exponential moving average of the weights (0 = off); validated, selected and saved as best.pt.
    ema_decay: float = 0.999
    # best.pt: "last" = the weights after the final epoch (the schedule has annealed; with the EMA on,
    # the average); "mean_acc" = the epoch with the best mean over sources of validation accuracy
    # (each dataset counts once); "accuracy" = best pooled validation accuracy (FER+ decides alone).
    # "last" is the default: in two 100-minute runs, "mean_acc" picked a mid-run epoch on an Emotion6
    # swing (172 validation images) that was worse on every test set (docs/results.md).
    select: str = "last"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    threads: int = 2
    workers: int = 0
    checkpoint_minutes: float = 10.0
    max_samples: int = 0
    resume: bool = True

    def __post_init__(self) -> None:
        """Refuse values the loop cannot use, naming the field, the value and the allowed range.

        Raises:
            ValueError: a number outside its `RANGES` entry, ``select`` not one of ``SELECT``,
                ``resample`` not one of ``RESAMPLES`` or a data source given twice.
        """
        self.check_resample()
        check_unique_data(self.data)
        check_ranges(self)
        self.augment = resolve_augment(self.augment, AugmentConfig())
        if self.select not in SELECT:
            raise ValueError(f"select={self.select!r} not one of {SELECT}")


@dataclass
class PretrainConfig(_RunViews):
    """Everything that defines a pretraining run (resolved and stored next to every checkpoint)."""

    data: list[str] = field(default_factory=list)
    out: str = "runs/pretrain"
    model: str = "affectline_mnv2_64"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"fusion_dim": 512, "dropout": 0.2})
    teacher: str = "offline"
    clip_model: str = "ViT-B-32"
    clip_checkpoint: str = ""
    teacher_scene_weight: float = 0.5
    mask_ratio: float = 0.6
    w_profile: float = 1.0
    w_embed: float = 1.0
    w_recon: float = 1.0
    person_scale: float = DEFAULT_PERSON.scale
    scene_scale: float = DEFAULT_SCENE.scale
    scene_y_shift: float = DEFAULT_SCENE.y_shift
    resample: str = DEFAULT_SCENE.resample
    epochs: int = 10
    budget_minutes: float = 0.0
    max_steps: int = 0
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 200
    augment: dict[str, float] = field(default_factory=lambda: dataclasses.asdict(AugmentConfig(erase=0.0)))
    test_fraction: float = 0.2
    split_seed: int = 0
    seed: int = 0
    threads: int = 2
    workers: int = 0
    checkpoint_minutes: float = 10.0
    max_samples: int = 0
    resume: bool = True

    def __post_init__(self) -> None:
        """Refuse values the loop cannot use before any data is read, naming field, value and range.

        Raises:
            ValueError: ``teacher`` not one of ``TEACHERS``, a number outside its `RANGES` entry
                (``mask_ratio`` in [0, 1): one patch must stay visible), ``resample`` not one of
                ``RESAMPLES`` or a data source given twice.
        """
        self.check_resample()
        check_unique_data(self.data)
        check_ranges(self)
        self.augment = resolve_augment(self.augment, AugmentConfig(erase=0.0))
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher={self.teacher!r} not one of {TEACHERS}")


def check_unique_data(data: list[str]) -> None:
    """A source given twice would silently double its samples; ``source_weights`` is the knob.

    Raises:
        ValueError: naming the repeated source.
    """
    seen: set[str] = set()
    for spec in data:
        kind, _, path = spec.partition(":")
        key = f"{kind}:{os.path.realpath(path)}" if path else spec
        if key in seen:
            raise ValueError(f"data source {spec!r} given twice; weight a source with source_weights instead")
        seen.add(key)


RunConfig = TypeVar("RunConfig", FinetuneConfig, PretrainConfig)


def merge_config(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """Config file (``--config``, YAML or JSON) overlaid with the flags that were given.

    Raises:
        ValueError: the file cannot be read, is not a mapping, or has keys that are not fields of ``cls``.
    """
    import yaml

    base: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            with open(args.config, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh)
        except OSError as exc:
            raise ValueError(f"--config={args.config}: cannot read it ({exc.strerror})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"--config={args.config}: not YAML or JSON ({' '.join(str(exc).split())})"
            ) from None
        base = {} if loaded is None else loaded  # an empty file is an empty config; [] is not
        if not isinstance(base, dict):
            raise ValueError(
                f"--config={args.config}: holds a {type(base).__name__}; "
                f"expected a mapping of {cls.__name__} fields"
            )
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(base) - names
    if unknown:
        raise ValueError(f"{args.config}: unknown config key(s) {sorted(unknown)}; allowed {sorted(names)}")
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            base[name] = v
    return base


def run_config(cls: type[RunConfig], args: argparse.Namespace) -> RunConfig:
    """The resolved config of a training command: defaults < ``--config`` file < flags.

    Raises:
        ValueError: no data source at all (neither ``--data`` nor ``data:`` in the file), or a bad
            ``--config`` or field value.
    """
    merged = merge_config(cls, args)
    if not merged.get("data"):
        raise ValueError(
            "--data: no data source given; pass --data KIND:PATH (repeatable) or data: in --config"
        )
    return cls(**merged)


# The numeric fields each command exposes as flags, in --help order; the type comes from the config.
_LOOP_NUMBERS = ("epochs", "max_steps", "batch_size", "threads", "workers", "seed", "max_samples")
_FINETUNE_NUMBERS = (
    *_LOOP_NUMBERS,
    "split_seed",
    "warmup_steps",
    "budget_minutes",
    "lr",
    "class_power",
    "checkpoint_minutes",
    "va_weight",
    "prior_va_weight",
    "person_scale",
    "scene_scale",
    "scene_y_shift",
    "encoder_lr_scale",
    "label_smoothing",
    "weight_decay",
    "test_fraction",
    "val_fraction",
    "ema_decay",
)
_PRETRAIN_NUMBERS = (
    *_LOOP_NUMBERS,
    "warmup_steps",
    "split_seed",
    "budget_minutes",
    "lr",
    "mask_ratio",
    "w_profile",
    "w_embed",
    "w_recon",
    "checkpoint_minutes",
    "person_scale",
    "scene_scale",
    "scene_y_shift",
    "teacher_scene_weight",
)


def finetune_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``affectline train finetune``; each overrides the FinetuneConfig field of the same name."""
    _run_flags(p, FinetuneConfig, "data source kind:path (repeatable)")
    p.add_argument("--init", help="pretraining checkpoint to start from")
    p.add_argument("--select", choices=SELECT, help="best.pt selection (default last)")
    _number_flags(p, FinetuneConfig, _FINETUNE_NUMBERS)


def pretrain_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``affectline train pretrain``; each overrides the PretrainConfig field of the same name."""
    d = _run_flags(p, PretrainConfig, "data source kind:path (repeatable; labels ignored)")
    p.add_argument("--teacher", choices=TEACHERS, help=f"semantic teacher (default {d.teacher})")
    p.add_argument("--clip-model", dest="clip_model")
    p.add_argument("--clip-checkpoint", dest="clip_checkpoint")
    _number_flags(p, PretrainConfig, _PRETRAIN_NUMBERS)


def _run_flags(p: argparse.ArgumentParser, cls: type[RunConfig], data_help: str) -> RunConfig:
    """The flags every run command starts with: ``--config``, ``--data``, ``--out``, ``--model``.

    Returns:
        ``cls()``, whose defaults the callers quote in their own help texts.
    """
    d = cls()
    p.add_argument("--config", help=f"JSON/YAML file with {cls.__name__} fields (flags override it)")
    from train.data import KINDS

    p.add_argument("--data", action="append", help=f"{data_help}; kinds: {', '.join(KINDS)}")
    p.add_argument("--out", help=f"run folder (default {d.out})")
    p.add_argument("--model", help=f"factory name (default {d.model})")
    p.add_argument(
        "--resample",
        choices=RESAMPLES,
        help=f"how both views shrink large boxes; the model records it for the agent (default {d.resample})",
    )
    return d


def _number_flags(p: argparse.ArgumentParser, cls: type, names: tuple[str, ...]) -> None:
    """``--name-with-dashes`` for each numeric field (typed like the field), then ``--no-resume``."""
    types = get_type_hints(cls)
    for name in names:
        p.add_argument("--" + name.replace("_", "-"), type=flag_type(types[name], RANGES[name]), dest=name)
    p.add_argument("--no-resume", dest="resume", action="store_false", default=None)
