"""The typed container: shapes validated on construction, columns stay parallel."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.structures import Detections, Frame


def dets(n: int) -> Detections:
    xyxy = np.array([[i, i, i + 10, i + 20] for i in range(n)], np.float32).reshape(-1, 4)
    return Detections(xyxy=xyxy, confidence=np.linspace(0.1, 0.9, n))


def test_empty() -> None:
    d = Detections.empty()
    assert d.face_xyxy is not None and d.tracker_id is not None
    assert len(d) == 0 and d.face_xyxy.shape == (0, 4) and d.tracker_id.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"xyxy": np.zeros((2, 3)), "confidence": np.zeros(2)}, "xyxy must have shape"),
        ({"xyxy": [[0, 0, 1, 1]], "confidence": np.zeros(2)}, "confidence must have shape"),
        ({"xyxy": [[5, 0, 1, 1]], "confidence": [0.5]}, "x1 < x2"),
        ({"xyxy": [[0, 0, np.nan, 1]], "confidence": [0.5]}, "finite"),
        ({"xyxy": [[0, 0, 1, 1]], "confidence": [0.5], "tracker_id": [1, 2]}, "tracker_id"),
        ({"xyxy": [[0, 0, 1, 1]], "confidence": [0.5], "data": {"probs": np.zeros((2, 7))}}, "first axis 1"),
    ],
)
def test_invalid_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Detections(**kwargs)


def test_defaults_and_selection() -> None:
    d = dets(3)
    d.set("probs", np.eye(3, 7))
    assert not d.has_face.any() and np.all(d.tracker_id == -1)
    sub = d[np.array([True, False, True])]
    assert len(sub) == 2 and sub.data["probs"].shape == (2, 7)
    assert len(d[1]) == 1
    with pytest.raises(ValueError):
        d.set("va", np.zeros((2, 2)))


def test_merge() -> None:
    a, b = dets(2), dets(3)
    for x in (a, b):
        x.set("q", np.ones(len(x)))
    m = Detections.merge([a, Detections.empty(), b])
    assert len(m) == 5 and m.data["q"].shape == (5,)
    assert len(Detections.merge([])) == 0
    b.set("other", np.ones(3))
    with pytest.raises(ValueError, match="same data columns"):
        Detections.merge([a, b])


def test_frame_validates_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Frame("c", np.zeros((4, 4), np.uint8), 0, 0.0, 0.0)
    f = Frame("c", np.zeros((4, 6, 3), np.uint8), 0, 0.0, 0.0)
    assert f.size == (6, 4)
