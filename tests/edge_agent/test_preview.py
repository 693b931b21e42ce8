"""Annotated preview video and console table."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import Preview
from edge_agent.preview import ConsoleTable, PreviewWriter, annotate, format_table, person_rows
from edge_agent.structures import Detections, Frame, FrameResult
from tests.model_factory import CLASSES


def smoothed_result(index: int = 0, n: int = 2, shape: tuple[int, int] = (120, 160)) -> FrameResult:
    rng = np.random.default_rng(index)
    img = rng.integers(0, 255, (*shape, 3), np.uint8)
    xyxy = np.array([[10 + 60 * i, 10, 60 + 60 * i, 100] for i in range(n)], np.float32).reshape(-1, 4)
    face = xyxy.copy()
    face[:, 3] = face[:, 1] + 30
    probs = np.full((n, 7), 0.05, np.float32)
    probs[:, 3] = 0.7
    det = Detections(
        xyxy=xyxy,
        confidence=np.full(n, 0.9),
        face_xyxy=face,
        tracker_id=np.arange(1, n + 1),
        data={
            "probs": probs,
            "valence_arousal": np.tile([[0.6, -0.2]], (n, 1)).astype(np.float32),
            "label": np.array([3] + [-1] * (n - 1)),
            "confidence": np.full(n, 0.7, np.float32),
            "seconds_observed": np.full(n, 2.5, np.float32),
        },
    )
    return FrameResult(Frame("cam", img, index, 0.0, 0.0), det, CLASSES)


def test_annotate_draws_without_touching_input() -> None:
    r = smoothed_result()
    before = r.frame.image.copy()
    out = annotate(r)
    assert out.shape == before.shape and not np.array_equal(out, before)
    assert np.array_equal(r.frame.image, before)


def test_blur_faces_changes_face_region_only() -> None:
    r = smoothed_result(n=1)
    plain, blurred = annotate(r), annotate(r, blur_faces=True)
    assert not np.array_equal(plain[14:38, 14:56], blurred[14:38, 14:56])
    assert np.array_equal(plain[110:, 100:], blurred[110:, 100:])


def test_preview_file_is_playable(tmp_path: Path) -> None:
    writer = PreviewWriter(Preview(path=str(tmp_path / "{camera}.mp4")), {"cam": 10.0})
    for i in range(12):
        writer.write(smoothed_result(i, shape=(120, 160) if i < 6 else (240, 320)))  # resolution change
    writer.close()
    cap = cv2.VideoCapture(str(tmp_path / "cam.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    ok, frame = cap.read()
    assert ok and frame.shape == (120, 160, 3)


@pytest.mark.parametrize(
    "frames,keep,expected,first",
    [
        (1, 0, [1], 0),  # a single frame: one short segment
        (10, 0, [10], 0),  # exactly one segment's worth: no empty second file
        (35, 0, [10, 10, 10, 5], 0),
        (35, 2, [10, 5], 0),  # the newest two remain
        (35, 2, [10, 5], 9_998),  # segments 9999, 10000, ...: the counter outgrows its 4 digits
    ],
)
def test_preview_segments_rotate_and_prune(
    tmp_path: Path, frames: int, keep: int, expected: list[int], first: int
) -> None:
    stale = tmp_path / "cam-20200101T000000Z-0001.mp4"  # a segment left by an earlier run
    stale.write_bytes(b"old")
    writer = PreviewWriter(
        Preview(path=str(tmp_path / "{camera}.mp4"), segment_s=1, keep=keep), {"cam": 10.0}
    )
    writer._segments = first  # as after `first` segments of a long run
    for i in range(frames):
        writer.write(smoothed_result(i, shape=(120, 160) if i < 15 else (240, 320)))  # resolution change
    writer.close()
    files = sorted(tmp_path.glob("cam-*.mp4"))
    if not keep:
        assert files[0] == stale
        files = files[1:]
    counts = [int(cv2.VideoCapture(str(f)).get(cv2.CAP_PROP_FRAME_COUNT)) for f in files]
    assert counts == expected and writer.paths["cam"] == files[-1]
    ok, frame = cv2.VideoCapture(str(files[-1])).read()
    assert ok and frame.shape == (120, 160, 3)  # a camera keeps its first size across segments


@pytest.mark.parametrize(
    "fields,match",
    [({"keep": 3}, "needs segment_s > 0"), ({"segment_s": -1}, "greater than or equal to 0")],
)
def test_preview_segment_config_is_checked(fields: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Preview(path="x.mp4", **fields)


def test_preview_needs_a_path() -> None:
    with pytest.raises(ValueError, match="preview.path"):
        PreviewWriter(Preview(), {})


def test_table_rows_and_format() -> None:
    rows = person_rows({"cam": smoothed_result()})
    assert rows[0][:3] == ["cam", "1", "happy"] and rows[1][2] == "..."
    assert rows[0][7].startswith("happy:0.70")
    text = format_table(rows)
    assert "valence" in text and "+0.60" in text
    assert "(no persons)" in format_table([])


def test_console_prints_periodically_when_not_a_tty() -> None:
    stream = io.StringIO()
    table = ConsoleTable(stream)
    table.show(smoothed_result())
    assert "happy" in stream.getvalue()
