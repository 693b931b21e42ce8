"""View geometry shared by training, calibration and the agent."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.views import (
    RESAMPLES,
    ViewGeometry,
    crop_square,
    cut_views,
    person_box_from_face,
    square_boxes,
    warp_square,
)
from train.data.augment import crop_rotated


@pytest.mark.parametrize(("scale", "size"), [(0.1, 64), (20, 64), (1, 4), (1, 1024)])
def test_geometry_ranges(scale: float, size: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        ViewGeometry(scale=scale, size=size)


def test_square_boxes_centre_and_side() -> None:
    boxes = square_boxes(np.array([[10, 20, 30, 60]]), ViewGeometry(scale=2.0, size=32, y_shift=0.5))
    x1, y1, x2, y2 = boxes[0]
    assert x2 - x1 == pytest.approx(80) and y2 - y1 == pytest.approx(80)  # 2 x longer side (40)
    assert (x1 + x2) / 2 == pytest.approx(20) and (y1 + y2) / 2 == pytest.approx(40 + 20)


def test_geometry_refuses_unknown_resample() -> None:
    with pytest.raises(ValueError, match="resample='nearest' not one of"):
        ViewGeometry(scale=1.0, size=32, resample="nearest")
    with pytest.raises(ValueError, match="resample='cubic' not one of"):
        warp_square(np.zeros((4, 4), np.uint8), np.eye(2, 3, dtype=np.float32), 4, "cubic")


@pytest.mark.parametrize("resample", RESAMPLES)
@pytest.mark.parametrize(
    "box",
    [
        [-10, -10, 0, 0],  # outside, touching the image's corner
        [-20, -20, -10, -10],  # wholly outside, shrinking 1.25x
        [-400, -400, -300, -300],  # wholly outside, shrinking 12.5x
        [1000, 5, 1100, 105],
    ],
)
def test_crop_outside_image_is_padded_grey(box: list[float], resample: str) -> None:
    img = np.full((10, 10, 3), 255, np.uint8)
    out = crop_square(img, np.array(box), 8, resample)
    # Shrinking by a non-whole factor, the area mode blends the pixel that touches the image a little.
    touching = resample == "area" and box == [-10, -10, 0, 0]
    assert out.shape == (8, 8, 3) and (np.abs(out.astype(int) - 114) <= (5 if touching else 0)).all()


@pytest.mark.parametrize("resample", RESAMPLES)
def test_crop_of_the_whole_image_keeps_its_pixels(resample: str) -> None:
    img = np.full((10, 10, 3), 255, np.uint8)
    inside = crop_square(img, np.array([0, 0, 10, 10]), 8, resample)
    # The area mode averages the outer crop pixels with some padding (non-whole factor).
    assert (inside[1:-1, 1:-1] == 255).all() and inside.min() >= (200 if resample == "area" else 255)


@pytest.mark.parametrize("resample", RESAMPLES)
def test_grey_image_keeps_a_channel_axis(resample: str) -> None:
    out = crop_square(np.full((300, 300), 7, np.uint8), np.array([0, 0, 300, 300]), 32, resample)
    assert out.shape == (32, 32, 1) and (out[1:-1, 1:-1] == 7).all() and out.max() <= 12


@pytest.mark.parametrize(
    ("box", "size"),
    [
        ([100, 60, 484, 444], 96),  # 4x, the case that aliases worst
        ([100, 60, 390, 350], 96),  # 3.02x, not a whole factor
        ([0, 0, 500, 500], 64),  # the whole image
    ],
)
def test_area_crop_is_the_area_average_of_the_box(box: list[float], size: int) -> None:
    img = np.random.default_rng(0).integers(0, 256, (500, 500, 3), np.uint8)
    x1, y1, x2, y2 = box
    expected = cv2.resize(img[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)
    diff = np.abs(crop_square(img, np.array(box, np.float32), size, "area").astype(int) - expected)
    if (x2 - x1) % size == 0:
        assert diff.max() <= 1
    else:  # the small image's grid is off the crop's by under half a pixel: a slight blur
        assert diff.mean() < 2.5


def test_area_crop_of_a_huge_box_stays_small() -> None:
    """A 10,000-px box around a 100-px frame (a bad detection) must not allocate the box."""
    img = np.full((100, 100, 3), 255, np.uint8)
    out = crop_square(img, np.array([-4950, -4950, 5050, 5050], np.float32), 100, "area")
    assert out.shape == (100, 100, 3)
    assert (out[:40] == 114).all() and (out[60:] == 114).all()
    assert out[49:51, 49:51].mean() > 114  # the frame is one bright pixel near the centre


@pytest.mark.parametrize("crop", ["upright", "rotated"])
def test_area_crop_does_not_alias_fine_stripes(crop: str) -> None:
    """One-pixel stripes shrunk 6x: the true image is flat grey; a sampling warp shows stripes."""
    stripes = np.zeros((600, 600), np.uint8)
    stripes[:, ::2] = 255
    box = np.array([0, 0, 600, 600], np.float32)

    def cut(resample: str) -> np.ndarray:
        if crop == "upright":
            return crop_square(stripes, box, 100, resample)
        return crop_rotated(stripes, box, 100, 10.0, resample)[30:70, 30:70]  # inside the image

    def off_grey(crop: np.ndarray) -> float:
        return float(np.abs(crop.astype(float) - 127.5).mean())

    assert off_grey(cut("bilinear")) > 40  # the defect the area mode exists for
    assert off_grey(cut("area")) < 8


def test_area_crop_upsamples_like_bilinear() -> None:
    """A box smaller than the output is not averaged; it is interpolated, pixel centre on pixel centre."""
    img = np.random.default_rng(1).integers(0, 256, (100, 100, 3), np.uint8)
    out = crop_square(img, np.array([10, 10, 58, 58], np.float32), 96, "area")
    expected = cv2.resize(img[10:58, 10:58], (96, 96), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out.astype(int) - expected)[2:-2, 2:-2].max() <= 1  # edges: resize replicates


def test_crop_content_matches_region() -> None:
    img = np.zeros((100, 100, 3), np.uint8)
    img[20:40, 60:80] = 200
    out = crop_square(img, np.array([60, 20, 80, 40]), 16)
    assert out.mean() > 190


def test_cut_views_shapes() -> None:
    img = np.zeros((90, 160, 3), np.uint8)
    p, s = cut_views(img, np.array([[10, 10, 40, 40], [100, 50, 120, 70]]))
    assert p.shape == (2, 64, 64, 3) and s.shape == (2, 64, 64, 3)
    p0, s0 = cut_views(img, np.zeros((0, 4)))
    assert p0.shape == (0, 64, 64, 3) and s0.shape[0] == 0


def test_person_box_contains_face_and_stays_in_frame() -> None:
    faces = np.array([[50, 20, 70, 45], [0, 0, 30, 30]], np.float32)
    boxes = person_box_from_face(faces, (100, 80))
    assert (boxes[:, 0] <= faces[:, 0]).all() and (boxes[:, 2] >= faces[:, 2]).all()
    assert (boxes[:, 3] > faces[:, 3]).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 100 and boxes[:, 3].max() <= 80
