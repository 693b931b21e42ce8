"""The PyAV RTSP capture against a real GStreamer RTSP server on loopback (`tests/rtsp_server.py`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.pyav_capture import MAX_DAMAGED_RUN, PyAVCapture
from tests.edge_agent.conftest import free_port
from tests.edge_agent.faultkit import rtsp_server
from tests.rtsp_server import RtspServer

__all__ = ["rtsp_server"]  # the fixture, imported for pytest


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a camera that hangs on connect)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "url,expected",
    [
        ("rtsp://admin:s3cret@127.0.0.1:{closed}/stream", "Connection refused"),
        ("rtsp://127.0.0.1:{silent}/stream", "no answer within 1 s"),  # FFmpeg interrupted
    ],
)
def test_failed_open_is_not_opened_and_says_why(url: str, expected: str, silent_port: int) -> None:
    t0 = time.monotonic()
    cap = PyAVCapture(url.format(closed=free_port(), silent=silent_port), {}, 1.0, 1.0)
    assert not cap.isOpened() and expected.lower() in cap.error.lower(), cap.error
    assert "s3cret" not in cap.error and "rtsp://" not in cap.error  # the URL is the caller's to show
    assert time.monotonic() - t0 < 3.0  # the open timeout is kept
    assert cap.read() == (False, None) and cap.get(cv2.CAP_PROP_FPS) == 0.0
    cap.release()  # a second release is harmless


def test_wrong_path_on_a_real_server_names_the_server_answer(rtsp_server: Callable[..., RtspServer]) -> None:
    server = rtsp_server()
    cap = PyAVCapture(server.url().replace("/cam", "/nope"), {}, 5.0, 5.0)
    assert not cap.isOpened() and "404" in cap.error


def test_reads_a_10_fps_camera_as_bgr_frames_at_its_rate(rtsp_server: Callable[..., RtspServer]) -> None:
    server = rtsp_server(fps=10)
    cap = PyAVCapture(server.url(), {}, 10.0, 5.0)
    try:
        assert cap.isOpened(), cap.error
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
        assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 0.0  # a live stream has no length
        frames = [cap.read() for _ in range(5)]
    finally:
        cap.release()
    assert all(ok for ok, _ in frames)
    image = frames[-1][1]
    assert isinstance(image, np.ndarray) and image.shape == (432, 768, 3) and image.dtype == np.uint8
    assert 20 < image.mean() < 235 and image.std() > 10  # a real picture, not a blank or grey frame
    assert cap.read() == (False, None)  # released


def test_user_options_reach_ffmpeg_over_the_defaults(rtsp_server: Callable[..., RtspServer]) -> None:
    """Restoring FFmpeg's frame-rate probe (``fpsprobesize=-1``) brings back the ~2 s longer open
    at 10 fps that the default ``fpsprobesize=0`` avoids."""
    server = rtsp_server(fps=10)
    took = {}
    for name, options in (("default", {}), ("probe", {"fpsprobesize": "-1"})):
        t0 = time.monotonic()
        cap = PyAVCapture(server.url(), options, 10.0, 5.0)
        took[name] = time.monotonic() - t0
        assert cap.isOpened(), cap.error
        cap.release()
    assert took["probe"] > took["default"] + 1.0, took


def test_silent_stream_fails_the_read_after_the_read_timeout(rtsp_server: Callable[..., RtspServer]) -> None:
    server = rtsp_server()
    cap = PyAVCapture(server.url(), {}, 10.0, 1.0)
    try:
        assert cap.isOpened() and cap.read()[0], cap.error
        server.pause()  # SIGSTOP: the socket stays open, nothing is sent
        t0 = time.monotonic()
        while cap.read()[0] and time.monotonic() - t0 < 10:
            pass  # frames already buffered are still delivered
        waited = time.monotonic() - t0
    finally:
        server.resume()
        cap.release()
    assert waited < 4.0 and "no data within 1 s" in cap.error, (waited, cap.error)


def test_a_hanging_open_does_not_hold_up_another_cameras_open(
    rtsp_server: Callable[..., RtspServer], silent_port: int
) -> None:
    """OpenCV runs every FFmpeg open under one process-wide lock; PyAV opens run side by side."""
    server = rtsp_server()
    hung: list[PyAVCapture] = []
    thread = threading.Thread(
        target=lambda: hung.append(PyAVCapture(f"rtsp://127.0.0.1:{silent_port}/x", {}, 6.0, 6.0))
    )
    thread.start()
    time.sleep(0.3)  # the hanging open is under way
    t0 = time.monotonic()
    cap = PyAVCapture(server.url(), {}, 10.0, 5.0)
    took = time.monotonic() - t0
    cap.release()
    thread.join(10)
    assert cap.error == "" and hung and not hung[0].isOpened()
    assert took < 4.0, took  # a 25 fps stream opens in ~1 s; behind the hanging open it would take 6


def test_damaged_packets_cost_their_frames_not_the_stream(single_face_clip: Path, tmp_path: Path) -> None:
    """40 random 200-byte spans overwritten in a real clip: PyAV's own decode generator stops at the
    first refused packet (after 11 of 72 frames); packet-by-packet decoding goes on to the end."""
    data = bytearray(single_face_clip.read_bytes())
    rng = np.random.default_rng(0)
    for start in rng.integers(len(data) // 5, len(data) * 4 // 5, 40):
        data[start : start + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    damaged_clip = tmp_path / "damaged.mp4"
    damaged_clip.write_bytes(data)
    cap = PyAVCapture(str(damaged_clip), {}, 5.0, 5.0)  # any FFmpeg input; RTSP options go unused
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert cap.damaged >= 1 and cap.error == "end of stream"
    assert frames >= 60, frames  # of 72


def test_a_stream_the_decoder_refuses_throughout_ends_the_session(
    single_face_clip: Path, tmp_path: Path
) -> None:
    """The clip's H.264 parameter sets (avcC) zeroed: every packet is refused, so the capture gives up
    after MAX_DAMAGED_RUN of them (a reconnect would fetch the parameters afresh) instead of reading on."""
    data = bytearray(single_face_clip.read_bytes())
    at = data.find(b"avcC")
    assert at > 0
    data[at + 12 : at + 40] = bytes(28)  # SPS/PPS payload gone, box sizes intact
    clip = tmp_path / "no-parameter-sets.mp4"
    clip.write_bytes(data)
    cap = PyAVCapture(str(clip), {}, 5.0, 5.0)
    assert cap.isOpened(), cap.error
    assert cap.read() == (False, None)
    assert cap.damaged == MAX_DAMAGED_RUN and "refused 50 packets in a row" in cap.error
