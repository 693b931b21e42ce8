"""Camera sources on real clips: lossless and realtime files, loop, fps cap, ROI, drops, failures, stalls."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.config import Camera, Reconnect
from edge_agent.sources import Source, _as_bgr, next_backoff, open_source, redact
from edge_agent.structures import CameraStatus, Frame

FAST = {"initial_backoff_s": 0.1, "max_backoff_s": 0.4, "stall_timeout_s": 0.5}


def camera(source: dict[str, Any], **kw: Any) -> Camera:
    return Camera.model_validate({"name": "cam", "source": source, "reconnect": FAST, **kw})


def file_camera(path: Path | str, **kw: Any) -> Camera:
    source = {"type": "file", "path": str(path)}
    source.update({k: kw.pop(k) for k in ("loop", "realtime") if k in kw})
    return camera(source, **kw)


class Recorder:
    """Collects status reports (they arrive from capture threads)."""

    def __init__(self) -> None:
        self.reports: list[CameraStatus] = []

    def __call__(self, status: CameraStatus) -> None:
        self.reports.append(status)

    @property
    def states(self) -> list[str]:
        return [s.state for s in self.reports]


def drain(src: Source, limit_s: float = 20.0) -> list[Frame]:
    """All frames until the source ends (or the time limit, which fails the caller's asserts)."""
    frames = []
    deadline = time.monotonic() + limit_s
    while not src.ended and time.monotonic() < deadline:
        frame = src.read(timeout=0.1)
        if frame is not None:
            frames.append(frame)
    return frames


def wait_for(predicate: Any, limit_s: float = 10.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def clip_frames(single_face_clip: Path) -> int:
    cap = cv2.VideoCapture(str(single_face_clip))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return count


# ----------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("attempt", "initial", "maximum", "expected"),
    [
        (0, 1.0, 1.0, 1.0),  # initial == max: constant
        (1000, 0.5, 30.0, 30.0),  # huge attempt: capped, no overflow
        (0, 0.5, 30.0, 0.5),
        (1, 0.5, 30.0, 1.0),
        (3, 0.5, 30.0, 4.0),
        (6, 0.5, 30.0, 30.0),
    ],
)
def test_next_backoff_doubles_up_to_max(
    attempt: int, initial: float, maximum: float, expected: float
) -> None:
    cfg = Reconnect(initial_backoff_s=initial, max_backoff_s=maximum, stall_timeout_s=5)
    assert next_backoff(attempt, cfg) == pytest.approx(expected)


def test_next_backoff_rejects_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt=-1"):
        next_backoff(-1, Reconnect())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("rtsp://host/stream", "rtsp://host/stream"),
        ("rtsp://user@host/s", "rtsp://***@host/s"),
        ("rtsp://admin:p%40ss:w0rd@10.0.0.2:554/h264", "rtsp://***@10.0.0.2:554/h264"),
        ("lost rtsps://a:b@cam/1 and rtsp://c:d@cam/2", "lost rtsps://***@cam/1 and rtsp://***@cam/2"),
        ("rtsp://admin:p@ss@cam/1", "rtsp://***@cam/1"),  # raw '@' in the password
        ('{"url": "rtsp://u:p@cam/1", "note": "x@y"}', '{"url": "rtsp://***@cam/1", "note": "x@y"}'),
        ("mail me@example.com", "mail me@example.com"),  # no scheme: untouched
    ],
)
def test_redact_hides_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("image", "shape"),
    [
        (None, None),
        (np.zeros((0, 0, 3), np.uint8), None),
        (np.zeros((4, 4, 3), np.float32), None),  # not 8-bit
        (np.zeros((4, 4, 2), np.uint8), None),  # unknown channel count
        (np.zeros((4, 5), np.uint8), (4, 5, 3)),  # grey
        (np.zeros((4, 5, 1), np.uint8), (4, 5, 3)),
        (np.zeros((4, 5, 4), np.uint8), (4, 5, 3)),  # BGRA
        (np.zeros((4, 5, 3), np.uint8), (4, 5, 3)),
    ],
)
def test_as_bgr_accepts_or_rejects_decoded_images(
    image: np.ndarray | None, shape: tuple[int, ...] | None
) -> None:
    out = _as_bgr(image)
    assert (None if out is None else out.shape) == shape


# ----------------------------------------------------------------------------- files
def test_file_source_reads_every_frame_then_stops(single_face_clip: Path, clip_frames: int) -> None:
    rec = Recorder()
    src = open_source(file_camera(single_face_clip), on_status=rec)
    src.start()
    frames = drain(src)
    status = src.status()
    src.close()
    assert len(frames) == clip_frames == status.frames
    assert [f.index for f in frames] == list(range(clip_frames))
    assert [f.t_mono for f in frames] == sorted(f.t_mono for f in frames)
    assert all(f.camera == "cam" and f.size == (640, 360) for f in frames)
    assert (status.state, status.drops, status.errors) == ("stopped", 0, 0)
    assert rec.states == ["starting", "online", "stopped"]
    assert str(single_face_clip) in rec.reports[-1].detail
    assert src.ended and src.read(timeout=0.05) is None


def test_loop_wraps_around(single_face_clip: Path, clip_frames: int) -> None:
    src = open_source(file_camera(single_face_clip, loop=True))
    src.start()
    frames = [f for f in (src.read(timeout=1.0) for _ in range(clip_frames + 20)) if f is not None]
    status = src.status()
    src.close()
    assert len(frames) == clip_frames + 20
    assert [f.index for f in frames] == list(range(clip_frames + 20))
    assert status.state == "online" and status.reconnects == 0
    # The frame after the last one is the first one again.
    assert np.array_equal(frames[clip_frames].image, frames[0].image)


@pytest.mark.parametrize(
    ("roi", "size"),
    [
        (None, (640, 360)),
        ((0.0, 0.0, 1.0, 1.0), (640, 360)),
        ((0.999, 0.999, 1.0, 1.0), (1, 1)),  # smallest: one pixel survives
        ((0.25, 0.5, 0.75, 1.0), (320, 180)),
    ],
)
def test_roi_crops_in_the_source(single_face_clip: Path, roi: Any, size: tuple[int, int]) -> None:
    full = cv2.VideoCapture(str(single_face_clip)).read()[1]
    src = open_source(file_camera(single_face_clip, roi=roi))
    src.start()
    frame = src.read(timeout=5.0)
    src.close()
    assert frame is not None and frame.size == size
    if roi is not None:
        x1, y1 = int(roi[0] * 640), int(roi[1] * 360)
        assert np.array_equal(frame.image, full[y1 : y1 + size[1], x1 : x1 + size[0]])


def test_fps_cap_paces_a_lossless_file(single_face_clip: Path) -> None:
    src = open_source(file_camera(single_face_clip, fps_cap=25))
    src.start()
    first = src.read(timeout=2.0)
    t0 = time.monotonic()
    frames = [src.read(timeout=2.0) for _ in range(10)]
    elapsed = time.monotonic() - t0
    src.close()
    assert first is not None and all(f is not None for f in frames)
    # 10 intervals at <= 25 fps (10 % timing slack): the cap is a lower bound on elapsed time.
    assert elapsed >= 10 / 25 * 0.9


def test_lossless_file_frames_carry_media_time(single_face_clip: Path) -> None:
    """Read as fast as possible, frames are still 1/fps apart in time (the file's own clock)."""
    src = open_source(file_camera(single_face_clip))
    src.start()
    frames = drain(src)
    fps = src.source_fps
    src.close()
    t = np.array([f.t_mono for f in frames])
    assert fps > 0 and np.allclose(np.diff(t), 1 / fps)


def test_fps_cap_skips_frames_of_a_realtime_file(single_face_clip: Path, clip_frames: int) -> None:
    src = open_source(file_camera(single_face_clip, realtime=True, fps_cap=10))
    src.start()
    frames = drain(src)
    status = src.status()
    src.close()
    assert status.frames == clip_frames and status.drops == 0
    # 2.4 s of 30 fps video capped at 10 fps: about a third of the frames, never all of them.
    assert clip_frames / 3 * 0.6 <= len(frames) <= clip_frames / 3 * 1.4
    assert [f.index for f in frames] == list(range(len(frames)))  # skipped frames leave no gaps


def test_slow_consumer_drops_oldest_frames_and_counts_them(single_face_clip: Path, clip_frames: int) -> None:
    src = open_source(file_camera(single_face_clip, realtime=True, queue_size=3))
    src.start()
    assert wait_for(lambda: src.status().state == "stopped")  # never read while the clip plays
    frames = drain(src)
    status = src.status()
    src.close()
    assert status.drops == clip_frames - 3
    assert [f.index for f in frames] == [clip_frames - 3, clip_frames - 2, clip_frames - 1]


def test_missing_file_goes_offline_for_good(tmp_path: Path) -> None:
    rec = Recorder()
    missing = tmp_path / "nope.mp4"
    src = open_source(file_camera(missing), on_status=rec)
    src.start()
    assert wait_for(lambda: src.ended)
    status = src.status()
    src.close()
    assert status.state == "offline"
    assert "cam" in status.detail and str(missing) in status.detail and "not found" in status.detail
    assert src.read(timeout=0.05) is None


def _garbage(data: bytes) -> bytes:
    return np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()


def _first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]  # the clip's index (moov) is at the end: this cannot be opened


def _middle_overwritten(data: bytes) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, 120_000, dtype=np.uint8).tobytes()
    return data[:30_000] + noise + data[150_000:]


@pytest.mark.parametrize(
    ("damage", "state", "decoded"),
    [
        (lambda data: b"", "offline", False),
        (_garbage, "offline", False),
        (_first_half, "offline", False),
        (_middle_overwritten, "stopped", True),
    ],
    ids=["empty", "garbage", "truncated", "corrupt-middle"],
)
def test_corrupt_file_is_reported_not_raised(
    tmp_path: Path, single_face_clip: Path, damage: Any, state: str, decoded: bool
) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(damage(single_face_clip.read_bytes()))
    src = open_source(file_camera(path))
    src.start()
    frames = drain(src)
    status = src.status()
    src.close()
    assert status.state == state and str(path) in status.detail and "cam" in status.detail
    assert bool(frames) == decoded
    if decoded:  # unreadable frames were skipped and counted
        assert status.errors > 0 and status.frames == len(frames)


def test_resolution_change_mid_stream_is_accepted(tmp_path: Path, single_face_clip: Path) -> None:
    cap = cv2.VideoCapture(str(single_face_clip))
    images = [cap.read()[1] for _ in range(6)]
    path = tmp_path / "mixed.mjpeg"  # a raw MJPEG stream may change size at any frame
    with path.open("wb") as f:
        for i, image in enumerate(images):
            small = cv2.resize(image, (320, 180)) if i >= 3 else image
            f.write(cv2.imencode(".jpg", small)[1].tobytes())
    src = open_source(file_camera(path))
    src.start()
    frames = drain(src)
    status = src.status()
    src.close()
    assert len(frames) == 6 and status.errors == 0 and status.state == "stopped"


def test_a_broken_camera_does_not_affect_another(
    tmp_path: Path, single_face_clip: Path, clip_frames: int
) -> None:
    bad = open_source(file_camera(tmp_path / "missing.mp4"))
    good = open_source(
        Camera.model_validate({"name": "good", "source": {"type": "file", "path": str(single_face_clip)}})
    )
    bad.start()
    good.start()
    frames = drain(good)
    assert bad.ended and bad.status().state == "offline"
    bad.close()
    good.close()
    assert len(frames) == clip_frames


# ----------------------------------------------------------------------------- live failures
def _closed_port() -> int:
    """A local port with nothing listening (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("backend", "reason"), [("pyav", ": Connection refused"), ("opencv", "")])
def test_unreachable_rtsp_retries_with_backoff_and_hides_password(backend: str, reason: str) -> None:
    rec = Recorder()
    url = f"rtsp://admin:s3cret@127.0.0.1:{_closed_port()}/stream"
    source = {"type": "rtsp", "url": url, "open_timeout_s": 1, "backend": backend}
    src = open_source(camera(source), on_status=rec)
    src.start()
    assert wait_for(lambda: src.status().reconnects >= 2)
    status = src.status()
    src.close()
    assert status.state == "offline" and not src.read(timeout=0)
    assert "rtsp://***@127.0.0.1" in status.detail and "cam" in status.detail
    assert f"/stream{reason};" in status.detail  # PyAV says why the open failed; OpenCV cannot
    assert all("s3cret" not in r.detail and "admin" not in r.detail for r in rec.reports)
    retries = [r.detail.rsplit("retrying in ", 1)[1] for r in rec.reports if "retrying" in r.detail]
    assert retries[:3] == ["0.1 s", "0.2 s", "0.4 s"]  # doubling, then capped at max_backoff_s
    assert rec.states[-1] == "stopped"


def test_gstreamer_without_backend_goes_offline_for_good() -> None:
    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV has GStreamer; the no-backend path cannot be exercised")
    src = open_source(camera({"type": "gstreamer", "pipeline": "videotestsrc ! appsink"}))
    src.start()
    assert wait_for(lambda: src.ended)
    status = src.status()
    src.close()
    assert status.state == "offline" and "GStreamer" in status.detail


@pytest.fixture
def stalling_fifo(tmp_path: Path, single_face_clip: Path) -> Any:
    """A named pipe carrying the first half of an MJPEG AVI, then silence while the writer stays open."""
    cap = cv2.VideoCapture(str(single_face_clip))
    avi = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter.fourcc(*"MJPG"), 30, (640, 360))
    for _ in range(40):
        writer.write(cap.read()[1])
    writer.release()
    data = avi.read_bytes()
    fifo = tmp_path / "stream.avi"
    os.mkfifo(fifo)
    release = threading.Event()

    def write() -> None:
        with fifo.open("wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            release.wait(30)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    yield fifo
    release.set()
    thread.join(5)
    # Abandoned readers blocked opening the pipe need a writer to come and go before they return;
    # keep offering one for a second so none outlives the test.
    for _ in range(20):
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        time.sleep(0.05)


def test_stalled_stream_is_reconnected_with_backoff(stalling_fifo: Path) -> None:
    rec = Recorder()
    src = open_source(file_camera(stalling_fifo, realtime=True), on_status=rec)
    src.start()
    assert wait_for(lambda: src.status().reconnects >= 2, limit_s=15)
    frames = drain(src, limit_s=0.3)
    t0 = time.monotonic()
    src.close()
    closing_s = time.monotonic() - t0
    status = src.status()
    assert frames and status.frames >= len(frames)
    assert rec.states[:3] == ["starting", "online", "reconnecting"]
    assert any("no frame from file" in r.detail and str(stalling_fifo) in r.detail for r in rec.reports)
    assert closing_s < 3.0  # hung reads are abandoned, not waited for
    assert status.state == "stopped" and src.ended


# ----------------------------------------------------------------------------- lifecycle
def test_close_is_idempotent_and_start_after_close_does_nothing(single_face_clip: Path) -> None:
    rec = Recorder()
    src = open_source(file_camera(single_face_clip), on_status=rec)
    src.close()
    src.close()
    src.start()
    assert src.ended and src.read(timeout=0.05) is None
    assert rec.states == ["stopped"]


def test_a_failing_status_listener_does_not_stop_capture(single_face_clip: Path, clip_frames: int) -> None:
    def explode(status: CameraStatus) -> None:
        raise RuntimeError("listener bug")

    src = open_source(file_camera(single_face_clip), on_status=explode)
    src.start()
    frames = drain(src)
    src.close()
    assert len(frames) == clip_frames
