"""Dataset samples for calibration (train split) and evaluation (held-out split)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from calibration.datasets import (
    CalibrationDataError,
    balanced_order,
    dataset_views,
    gate_views,
    luma,
    normalise,
)
from edge_agent.modelmeta import ModelMeta
from tests.conftest import shared_path
from train.data.records import CLASSES


@pytest.mark.parametrize(
    ("labels", "num_classes", "first"),
    [
        ([], 3, []),
        ([-1, -1], 3, [-1, -1]),
        ([0, 0, 0, 1, 2, -1], 3, [0, 1, 2, 0, 0, -1]),
        ([2, 2, 1, 1, 0], 3, [0, 1, 2, 1, 2]),
        ([1, 1, 1, 1], 3, [1, 1, 1, 1]),
    ],
)
def test_balanced_order(labels: list[int], num_classes: int, first: list[int]) -> None:
    arr = np.array(labels, np.int64)
    order = balanced_order(arr, num_classes, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(labels)))
    assert arr[order].tolist() == first


def test_balanced_prefix_is_even() -> None:
    labels = np.random.default_rng(1).integers(0, 7, 1000)
    order = balanced_order(labels, 7, np.random.default_rng(0))
    counts = np.bincount(labels[order[:70]], minlength=7)
    assert counts.tolist() == [10] * 7


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [((255, 255, 255), 255.0), ((0, 0, 0), 0.0), ((255, 0, 0), 0.299 * 255), ((0, 0, 255), 0.114 * 255)],
)
def test_luma(rgb: tuple[int, int, int], expected: float) -> None:
    views = np.broadcast_to(np.array(rgb, np.uint8), (2, 4, 4, 3))
    np.testing.assert_allclose(luma(views), [expected] * 2, rtol=1e-5)


def test_normalise_matches_contract(meta: ModelMeta) -> None:
    person = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = normalise(meta, person, person[::-1].copy())
    spec = meta.input_for("person")
    want = ((person / 255.0 - np.array(spec.mean)) / np.array(spec.std)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out["person"], want, atol=1e-5)
    assert out["scene"].shape == (2, 3, 32, 32) and out["person"].dtype == np.float32


def test_train_split_is_class_balanced(meta: ModelMeta, expw_spec: str, ferplus_spec: str) -> None:
    vs = dataset_views(meta, [expw_spec, ferplus_spec], "train", 28)
    assert len(vs) == 28 and np.bincount(vs.labels, minlength=7).tolist() == [4] * 7
    assert {o.split(":", 1)[0] for o in vs.origin} <= {"expw", "ferplus"}
    assert not any("FER2013Test" in o or "FER2013Valid" in o for o in vs.origin)
    # Brightness is the luma of the person view before normalisation.
    spec = meta.input_for("person")
    pixels = (vs.inputs["person"].transpose(0, 2, 3, 1) * np.array(spec.std) + np.array(spec.mean)) * 255
    np.testing.assert_allclose(luma(pixels.round().clip(0, 255).astype(np.uint8)), vs.brightness, atol=0.6)


@pytest.mark.parametrize("recorded", [{}, {"test_fraction": 0.5, "split_seed": 3, "val_fraction": 0.1}])
def test_held_out_part_is_the_one_the_model_was_trained_without(
    meta: ModelMeta, expw_spec: str, recorded: dict[str, float]
) -> None:
    """A model that records its training split is tested on that split's test part; one that does
    not, on the default split's."""
    from train.data.sources import load_source

    model = dataclasses.replace(meta, train_split=recorded)
    test = dataset_views(model, [expw_spec], "test", 100_000, balanced=False)
    held = {"test_fraction": 0.2, "split_seed": 0, **recorded}
    want = load_source(expw_spec, held["test_fraction"], int(held["split_seed"])).test
    assert sorted(test.origin) == sorted(f"expw:{s.image}" for s in want)


@pytest.mark.parametrize(
    ("val_fraction", "source", "want"),
    [(0.0, "expw", "test"), (0.1, "expw", "val"), (0.0, "ferplus", "val")],
    ids=["expw-without-val", "expw-with-val", "ferplus-official-valid"],
)
def test_the_int8_gate_uses_the_validation_part_when_there_is_one(
    meta: ModelMeta, expw_spec: str, ferplus_spec: str, val_fraction: float, source: str, want: str
) -> None:
    model = dataclasses.replace(
        meta, train_split={"test_fraction": 0.2, "split_seed": 0, "val_fraction": val_fraction}
    )
    spec = expw_spec if source == "expw" else ferplus_spec
    split, views = gate_views(model, [spec], 50)
    assert split == want
    same = dataset_views(model, [spec], want, 50, seed=0, balanced=False)
    assert views.origin.tolist() == same.origin.tolist()  # the same draw as asking for that part


def test_held_out_split_never_meets_train(meta: ModelMeta, expw_spec: str) -> None:
    train = dataset_views(meta, [expw_spec], "train", 300)
    test = dataset_views(meta, [expw_spec], "test", 300, balanced=False)
    assert not set(train.origin) & set(test.origin)


@pytest.mark.parametrize(("split", "n", "match"), [("holdout", 4, "split='holdout'"), ("train", 0, "n=0")])
def test_rejects(meta: ModelMeta, expw_spec: str, split: str, n: int, match: str) -> None:
    with pytest.raises(CalibrationDataError, match=match):
        dataset_views(meta, [expw_spec], split, n)


def test_bad_spec_is_named(meta: ModelMeta) -> None:
    with pytest.raises(CalibrationDataError, match="expw:/nonexistent"):
        dataset_views(meta, ["expw:/nonexistent"], "train", 4)


def test_a_manifest_calibrates_with_all_its_rows(meta: ModelMeta, tmp_path: Path) -> None:
    """A manifest has no split: for calibration all of it is training data."""
    faces = sorted(shared_path("data", "ferplus", "FER2013Train").glob("*.png"))[:6]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    rows = [f"{p},{CLASSES[i % 7]}" for i, p in enumerate(faces)] + ["broken.png,sad"]
    (tmp_path / "m.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    views = dataset_views(meta, [f"manifest:{tmp_path / 'm.csv'}"], "train", 10)
    assert len(views.labels) == 6  # the broken image skipped
    (tmp_path / "m.csv").write_text("image,label\nbroken.png,sad\n")
    with pytest.raises(CalibrationDataError, match="all 1 tried unusable, first: .*broken.png"):
        dataset_views(meta, [f"manifest:{tmp_path / 'm.csv'}"], "train", 10)
