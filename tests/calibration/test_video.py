"""Calibration samples from a real clip through the agent's sources, detector and crop code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.datasets import CalibrationDataError
from calibration.video import camera_from_uri, recording_label, source_label, video_views
from edge_agent.modelmeta import ModelMeta


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("rtsp://user:pw@cam.local/stream1", "rtsp"),
        ("rtsps://cam/s", "rtsp"),
        ("0", "usb"),
        ("12", "usb"),
        ("v4l2src ! videoconvert ! appsink", "gstreamer"),
    ],
)
def test_camera_from_uri(uri: str, kind: str) -> None:
    cam = camera_from_uri(uri)
    assert cam.source.type == kind and cam.name == "calibration"


@pytest.mark.parametrize(
    ("uri", "label"),
    [
        ("rtsp://user:pw@cam.local/stream1", "rtsp://***@cam.local/stream1"),  # credentials never stored
        ("3", "usb3"),
        ("v4l2src ! videoconvert ! appsink", "gstreamer-"),
    ],
)
def test_source_label_names_the_stream(uri: str, label: str) -> None:
    assert source_label(camera_from_uri(uri)).startswith(label)


def test_different_clips_never_share_an_origin(single_face_clip: Path, one_by_one_clip: Path) -> None:
    """Origins decide the calibration/evaluation overlap check: two clips at the same times must differ."""
    a, b = (source_label(camera_from_uri(str(c))) for c in (single_face_clip, one_by_one_clip))
    assert a == str(single_face_clip.resolve()) and a != b


@pytest.mark.parametrize(
    ("uri", "same_for_two_recordings"),
    [("rtsp://cam/1", False), ("0", False), ("{clip}", True)],  # a file's frames are the same frames again
)
def test_recordings_of_a_live_camera_never_share_origins(
    single_face_clip: Path, uri: str, same_for_two_recordings: bool
) -> None:
    camera = camera_from_uri(uri.replace("{clip}", str(single_face_clip)))
    first, second = recording_label(camera, 1_700_000_000.0), recording_label(camera, 1_700_000_060.0)
    assert (first == second) is same_for_two_recordings
    assert first.startswith(source_label(camera))


def test_a_file_that_is_not_a_video_is_named(meta: ModelMeta, tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(CalibrationDataError, match=r"--from-video: no frame could be read from .*notes\.mp4"):
        video_views(meta, camera_from_uri(str(text)), seconds=1.0, n=2)


def test_camera_from_file(single_face_clip: Path) -> None:
    assert camera_from_uri(str(single_face_clip)).source.type == "file"


@pytest.mark.parametrize("uri", ["", "http://cam/stream", "no/such/clip.mp4"])
def test_camera_from_uri_rejects(uri: str) -> None:
    with pytest.raises(CalibrationDataError, match="--from-video"):
        camera_from_uri(uri)


def test_faces_from_a_real_clip(meta: ModelMeta, single_face_clip: Path) -> None:
    vs, seen = video_views(meta, camera_from_uri(str(single_face_clip)), seconds=2.0, n=6, every_s=0.1)
    assert 1 <= len(vs) <= 6 and seen.faces >= len(vs) and seen.frames_with_faces >= 1
    assert seen.frames > 0 and 0 < seen.seconds <= 2.1
    assert (vs.labels == -1).all() and all(
        o.startswith(f"video:{single_face_clip.resolve()}@") for o in vs.origin
    )
    times = [float(o.rsplit("@", 1)[1].split("s#")[0]) for o in vs.origin]
    assert times == sorted(times) and times[-1] - times[0] > 0.5  # spread over the clip, not one burst
    assert set(vs.inputs) == {"person", "scene"} and vs.inputs["person"].shape[1:] == (3, 32, 32)
    assert np.isfinite(vs.inputs["scene"]).all() and (vs.brightness > 20).all()


@pytest.mark.parametrize(
    ("seconds", "n", "every_s", "match"),
    [
        (0.0, 4, 0.2, "--seconds=0.0"),
        (4000.0, 4, 0.2, "--seconds=4000.0"),
        (1.0, 0, 0.2, "n=0"),
        (1.0, 4, -0.1, "--every=-0.1"),
        (1.0, 4, 61.0, "--every=61.0"),
    ],
)
def test_video_rejects(
    meta: ModelMeta, single_face_clip: Path, seconds: float, n: int, every_s: float, match: str
) -> None:
    with pytest.raises(CalibrationDataError, match=match):
        video_views(meta, camera_from_uri(str(single_face_clip)), seconds=seconds, n=n, every_s=every_s)


@pytest.mark.parametrize("every_s", [0.0, 0.5])
def test_frames_are_spaced_by_every(meta: ModelMeta, single_face_clip: Path, every_s: float) -> None:
    vs, seen = video_views(meta, camera_from_uri(str(single_face_clip)), seconds=2.0, n=1000, every_s=every_s)
    times = sorted({float(o.split("@")[1].split("s#")[0]) for o in vs.origin})
    assert len(vs) == seen.faces  # n above the faces seen keeps them all
    assert min(np.diff(times)) >= every_s - 0.01  # origin times are written to 0.01 s
    if every_s == 0:
        assert seen.frames_with_faces == len(times) > 2.0 / 0.5 + 1  # denser than the 0.5-s case allows
