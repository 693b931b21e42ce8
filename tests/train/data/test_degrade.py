"""Camera degradations: parsing with named ranges, what each one does to a real face, training draws."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import shared_path
from train.data.degrade import (
    RANGES,
    TRAIN_RANGES,
    Degradation,
    apply,
    apply_batch,
    parse_degradation,
    random_degradation,
    scaled_side,
)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "is not KIND:SEVERITY"),
        ("blur", "is not KIND:SEVERITY"),
        ("blur:", "severity '' is not a number"),
        ("blur:x", "severity 'x' is not a number"),
        ("fog:2", "kind 'fog' not one of"),
        ("downscale:7", "downscale severity 7 outside [8, 128]"),
        ("downscale:129", "outside [8, 128]"),
        ("jpeg:0", "jpeg severity 0 outside [1, 100]"),
        ("dark:0", "dark severity 0 outside [0.05, 1]"),
        ("noise:nan", "noise severity nan outside"),
        ("blur:inf", "blur severity inf outside"),
    ],
)
def test_parse_refuses_naming_the_rule(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_degradation(spec)


@pytest.mark.parametrize(
    "spec", ["downscale:8", "downscale:128", "blur:0.1", "jpeg:100", "noise:0.5", "dark:1"]
)
def test_parse_accepts_the_range_ends(spec: str) -> None:
    assert parse_degradation(spec).spec == spec


@pytest.mark.parametrize(
    ("view", "ref", "side"), [(128, 24, 24), (64, 24, 12), (96, 8, 6), (32, 8, 2), (128, 128, 128)]
)
def test_scaled_side_keeps_the_fraction_of_a_128_px_view(view: int, ref: float, side: int) -> None:
    assert scaled_side(view, ref) == side


def _face() -> np.ndarray:
    """A real FER+ face at the default 128-px view side (RGB)."""
    root = shared_path("data/ferplus/FER2013Test")
    path = sorted(root.glob("*.png"))[0]
    grey = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (128, 128), interpolation=cv2.INTER_LINEAR)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _high_freq(x: np.ndarray) -> float:
    """Mean absolute Laplacian: fine detail a downscale or blur removes."""
    return float(np.abs(cv2.Laplacian(x[:, :, 0].astype(np.float32), cv2.CV_32F)).mean())


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ("downscale:128", "same"),
        ("downscale:16", "less_detail"),
        ("blur:3", "less_detail"),
        ("jpeg:5", "changed"),
        ("noise:20", "more_detail"),
        ("dark:0.25", "darker"),
        ("dark:1", "same"),
    ],
)
def test_each_degradation_on_a_real_face(spec: str, check: str) -> None:
    face = _face()
    out = apply(face, parse_degradation(spec), np.random.default_rng(0))
    assert out.shape == face.shape and out.dtype == np.uint8
    if check == "same":
        np.testing.assert_array_equal(out, face)
    elif check == "less_detail":
        assert _high_freq(out) < 0.6 * _high_freq(face)
        assert abs(float(out.mean()) - float(face.mean())) < 3  # the face is still there, only coarser
    elif check == "more_detail":
        assert _high_freq(out) > 1.5 * _high_freq(face)
    elif check == "darker":
        assert out.mean() == pytest.approx(face.mean() * 0.25, abs=1)
        assert len(np.unique(out)) < len(np.unique(face))  # under-exposure loses grey levels
    else:
        assert np.abs(out.astype(int) - face).mean() > 1


def test_noise_is_reproducible_from_the_seed_and_batches_keep_their_shape() -> None:
    views = np.stack([_face(), _face()[::-1]])
    d = Degradation("noise", 8)
    a = apply_batch(views, d, np.random.default_rng(3))
    b = apply_batch(views, d, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == views.shape and not np.array_equal(a[0], views[0])
    assert apply_batch(views[:0], d, np.random.default_rng(0)).shape == (0, 128, 128, 3)


def test_random_degradation_draws_every_kind_inside_its_training_range() -> None:
    rng = np.random.default_rng(0)
    drawn = [random_degradation(rng) for _ in range(500)]
    assert {d.kind for d in drawn} == set(TRAIN_RANGES) == set(RANGES)
    for d in drawn:
        lo, hi = TRAIN_RANGES[d.kind]
        assert lo <= d.severity <= hi
