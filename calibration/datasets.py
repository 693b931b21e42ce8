"""Calibration and evaluation samples from labelled datasets, cut exactly as training cuts them.

Datasets are read with the training readers (`train.data.sources`) and their fixed splits, and
views are cut by `train.data.dataset.DualViewDataset.views` (no augmentation) with the model's own
view geometry, so INT8 scales are fitted on what the model saw in training. Calibration draws from
the ``train`` split; accuracy reports use the held-out ``test`` split, never both. A source without
splits (a manifest, a class folder) has no held-out part: all of it calibrates, and an evaluation
on the same file then scores images the INT8 scales were fitted on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from calibration.viewset import ViewSet
from edge_agent.modelmeta import ModelMeta

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class CalibrationDataError(ValueError):
    """No usable samples, or a bad data argument (message names it)."""


def luma(views_rgb: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB -> (N,) float32 mean luma (ITU-R BT.601 weights)."""
    w = np.array([0.299, 0.587, 0.114], np.float32)
    return (views_rgb.astype(np.float32) @ w).mean(axis=(1, 2)).astype(np.float32)


def normalise(meta: ModelMeta, person_rgb: np.ndarray, scene_rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Uint8 RGB views -> ``{input_name: float32 (N, 3, S, S)}`` with the agent's own normaliser."""
    from edge_agent.infer import Preprocessor

    pre = Preprocessor(meta)
    views = {meta.input_for("person").name: person_rgb, meta.input_for("scene").name: scene_rgb}
    return {name: pre.normalise(name, arr) for name, arr in views.items()}


def balanced_order(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """All indices, ordered so that any prefix is as even across classes as the data allows.

    Classes are interleaved round-robin (each shuffled); a class that runs out simply stops
    contributing, and unlabelled rows (-1) come last. Taking the first ``n`` gives a balanced draw
    without replacement.

    Args:
        labels: (M,) class index per candidate, -1 unknown.
        num_classes: Number of classes.
        rng: Random generator (fixed seed = reproducible set).

    Returns:
        (M,) int64 permutation of ``range(M)``.
    """
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    rounds = max((len(p) for p in pools), default=0)
    table = np.full((rounds, num_classes), -1, np.int64)
    for c, pool in enumerate(pools):
        table[: len(pool), c] = pool
    interleaved = table[table >= 0]
    return np.concatenate([interleaved, rng.permutation(np.flatnonzero(labels < 0))]).astype(np.int64)


def dataset_views(
    meta: ModelMeta,
    specs: Sequence[str],
    split: str,
    n: int,
    seed: int = 0,
    balanced: bool = True,
    held_out: dict[str, float] | None = None,
) -> ViewSet:
    """Class-balanced real samples from labelled datasets.

    Args:
        meta: Model metadata (view geometry, normalisation, input names, classes, and the split
            settings of its training, so held-out parts are the ones training held out; a model
            without them gets the default fine-tuning split).
        specs: Training data specs ``kind:path`` (e.g. ``expw:../shared/data/expw``).
        split: ``train`` (calibration) or ``test``/``val`` (held-out evaluation).
        n: Wanted samples (fewer if the data has fewer).
        seed: Draw seed.
        balanced: Even draw across classes (calibration); False keeps the split's natural class mix
            (accuracy reports).
        held_out: Split settings (``test_fraction``, ``split_seed``, ``val_fraction``) overriding
            the model's own.

    Raises:
        CalibrationDataError: bad split or spec, or no usable sample.
    """
    if split not in SPLITS:
        raise CalibrationDataError(f"split={split!r}: allowed {SPLITS}")
    if n < 1:
        raise CalibrationDataError(f"n={n}: must be >= 1")
    from train.data.sources import as_train

    held = held_out_split(meta, **(held_out or {}))
    parts = [load_parts(spec, held) for spec in specs]
    if split == "train":  # a manifest, folder or image set has no split: all of it calibrates
        parts = [as_train(p, spec) for p, spec in zip(parts, specs, strict=True)]
    samples = [s for p in parts for s in getattr(p, split)]
    if not samples:
        readers = "; ".join(p.readers() for p in parts)
        raise CalibrationDataError(f"no {split} samples in {list(specs)} ({readers})")
    return _views(meta, samples, specs, split, n, seed, balanced)


def gate_views(meta: ModelMeta, specs: Sequence[str], n: int, seed: int = 0) -> tuple[str, ViewSet]:
    """The part an INT8 build is gated on, and up to ``n`` of its samples in their natural class mix.

    ``val`` when some source has a validation part under the model's training split, else
    ``test``: a build picks its fallback step by its score on this part, and scoring the choice on
    the part it was picked on would flatter it, so the validation part comes first.

    Raises:
        CalibrationDataError: bad spec, ``n`` < 1, or no usable sample.
    """
    if n < 1:
        raise CalibrationDataError(f"n={n}: must be >= 1")
    held = held_out_split(meta)
    parts = [load_parts(spec, held) for spec in specs]  # label files read once
    split = "val" if any(p.val for p in parts) else "test"
    samples = [s for p in parts for s in getattr(p, split)]
    return split, _views(meta, samples, specs, split, n, seed, balanced=False)


def _views(
    meta: ModelMeta, samples: list[Any], specs: Sequence[str], split: str, n: int, seed: int, balanced: bool
) -> ViewSet:
    """Views of up to ``n`` of ``samples`` (see `dataset_views`); unreadable images are skipped."""
    from train.data.dataset import BadImageError, DualViewDataset

    if meta.classes != _train_classes():
        raise CalibrationDataError(
            f"model classes {meta.classes} differ from the dataset classes {_train_classes()}"
        )
    labels = np.array([s.label for s in samples], np.int64)
    rng = np.random.default_rng(seed)
    order = balanced_order(labels, len(meta.classes), rng) if balanced else rng.permutation(len(samples))
    ds = DualViewDataset(samples, meta.input_for("person").geometry, meta.input_for("scene").geometry)
    person: list[np.ndarray] = []
    scene: list[np.ndarray] = []
    kept: list[int] = []
    unusable: list[str] = []
    for i in order:
        if len(kept) == n:
            break
        try:
            pv, sv = ds.views(samples[i], None)
        except BadImageError as exc:
            log.warning("skipping sample: %s", exc)
            unusable.append(str(exc))
            continue
        person.append(pv)
        scene.append(sv)
        kept.append(int(i))
    if not kept:
        why = f" (all {len(unusable)} tried unusable, first: {unusable[0]})" if unusable else ""
        raise CalibrationDataError(f"no usable {split} samples in {list(specs)}{why}")
    if unusable:
        log.warning("skipped %d unusable %s image(s); kept %d", len(unusable), split, len(kept))
    return _viewset(
        meta,
        np.stack(person),
        np.stack(scene),
        labels[kept],
        [f"{samples[i].source}:{samples[i].image}" for i in kept],
    )


def _viewset(
    meta: ModelMeta, person: np.ndarray, scene: np.ndarray, labels: np.ndarray, origin: list[str]
) -> ViewSet:
    return ViewSet(normalise(meta, person, scene), labels, luma(person), np.array(origin), meta.classes)


def _train_classes() -> tuple[str, ...]:
    from train.data.records import CLASSES

    return tuple(CLASSES)


def held_out_split(meta: ModelMeta, **overrides: float | None) -> dict[str, float]:
    """The split settings training used: ``overrides`` that are not None, else the model's
    recorded ones (`ModelMeta.train_split`), else those of a default fine-tuning run."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return {**default_train_split(), **meta.train_split, **given}


def load_parts(spec: str, held: dict[str, float]) -> Any:
    """`train.data.sources.load_source` under the split settings ``held``.

    Raises:
        CalibrationDataError: the spec does not load.
    """
    from train.data.records import DataError
    from train.data.sources import load_source

    try:
        return load_source(spec, held["test_fraction"], int(held["split_seed"]), held["val_fraction"])
    except DataError as exc:
        raise CalibrationDataError(str(exc)) from None


def default_train_split() -> dict[str, float]:
    """The split settings of a default fine-tuning run (for model files that do not record theirs)."""
    from train.config import FinetuneConfig

    d = FinetuneConfig()
    return {"test_fraction": d.test_fraction, "split_seed": d.split_seed, "val_fraction": d.val_fraction}
