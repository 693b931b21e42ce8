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
    downscale,
    jpeg,
    parse_degradation,
    random_degradation,
)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "is not KIND:SEVERITY"),
        ("blur", "is not KIND:SEVERITY"),
        ("blur:", "severity '' is not a number"),
        ("blur:x", "severity 'x' is not a number"),
        ("fog:2", "kind 'fog' not one of"),
        ("downscale:7", "downscale severity 7 outside [8, 512]"),
        ("downscale:513", "outside [8, 512]"),
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
    "spec", ["downscale:8", "downscale:512", "blur:0.1", "jpeg:100", "noise:0.5", "dark:1"]
)
def test_parse_accepts_the_range_ends(spec: str) -> None:
    assert parse_degradation(spec).spec == spec


@pytest.mark.parametrize(
    ("view", "side", "unchanged"), [(128, 128, True), (64, 64, True), (64, 96, True), (64, 32, False)]
)
def test_downscale_counts_camera_pixels_whatever_the_view_size(view: int, side: int, unchanged: bool) -> None:
    """A 32-px face crop holds 32 px of detail whether the model scales it to 64 or 128 px."""
    x = np.random.default_rng(0).integers(0, 256, (view, view, 3), dtype=np.uint8)
    out = downscale(x, side)
    assert out.shape == x.shape and np.array_equal(out, x) is unchanged
    if not unchanged:  # what is left is exactly what a side-px image holds, scaled up
        small = cv2.resize(x, (side, side), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(out, cv2.resize(small, (view, view), interpolation=cv2.INTER_LINEAR))


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


def test_jpeg_keeps_colours_where_they_were() -> None:
    """A red face stays red: OpenCV's BGR encoder must see the channels in its own order."""
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 200
    out = jpeg(red, 90)
    assert out[..., 0].mean() > 190 and out[..., 2].mean() < 10
    # Chroma is subsampled, luma is not: a red/green edge blurs less than if the channels were swapped.
    edge = np.zeros((64, 64, 3), np.uint8)
    edge[:, :32, 0], edge[:, 32:, 1] = 255, 255
    swapped = cv2.imdecode(cv2.imencode(".jpg", edge, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], cv2.IMREAD_COLOR)
    assert np.abs(jpeg(edge, 30).astype(int) - edge).mean() < np.abs(swapped.astype(int) - edge).mean()
