"""View geometry shared by training, calibration and the agent."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.views import ViewGeometry, crop_square, cut_views, person_box_from_face, square_boxes


@pytest.mark.parametrize(("scale", "size"), [(0.1, 64), (20, 64), (1, 4), (1, 1024)])
def test_geometry_ranges(scale: float, size: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        ViewGeometry(scale=scale, size=size)


def test_square_boxes_centre_and_side() -> None:
    boxes = square_boxes(np.array([[10, 20, 30, 60]]), ViewGeometry(scale=2.0, size=32, y_shift=0.5))
    x1, y1, x2, y2 = boxes[0]
    assert x2 - x1 == pytest.approx(80) and y2 - y1 == pytest.approx(80)  # 2 x longer side (40)
    assert (x1 + x2) / 2 == pytest.approx(20) and (y1 + y2) / 2 == pytest.approx(40 + 20)


def test_crop_outside_image_is_padded_grey() -> None:
    img = np.full((10, 10, 3), 255, np.uint8)
    out = crop_square(img, np.array([-10, -10, 0, 0]), 8)
    assert out.shape == (8, 8, 3) and (out == 114).all()
    inside = crop_square(img, np.array([0, 0, 10, 10]), 8)
    assert (inside == 255).all()


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
