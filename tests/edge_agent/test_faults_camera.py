"""Camera faults with real components: a real RTSP server on loopback, real damaged files, the real agent.

The RTSP server (`tests/rtsp_server.py`) serves ``one-by-one-person-detection.mp4`` in real time,
re-encoded as an IP camera streams it (25 fps, a keyframe every second). Faults: the server is
killed and restarted on the same port (``AFFECTLINE_RTSP_OUTAGE_S``, default 10 s), the server is
frozen with SIGSTOP (socket open, no frames) and damaged files of every kind go through the whole
agent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.config import Camera
from edge_agent.sources import open_source
from edge_agent.structures import CameraStatus
from tests.edge_agent.faultkit import env_float, finish, rtsp_server, start_agent, states, wait_for
from tests.edge_agent.test_app import frames_in, write_config
from tests.rtsp_server import RtspServer

__all__ = ["rtsp_server"]  # the fixture, imported for pytest

OUTAGE_S = env_float("AFFECTLINE_RTSP_OUTAGE_S", 10.0)
BACKOFF = {"initial_backoff_s": 0.25, "max_backoff_s": 1.0, "stall_timeout_s": 2.0}


class Timeline:
    """Status reports with the monotonic time they arrived (they come from capture threads)."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, CameraStatus]] = []

    def __call__(self, status: CameraStatus) -> None:
        self.reports.append((time.monotonic(), status))

    def first(self, state: str, after: float = 0.0) -> float | None:
        return next((t for t, s in self.reports if s.state == state and t >= after), None)

    def states(self) -> list[str]:
        return [s.state for _, s in self.reports]


def rtsp_camera(url: str, **source: Any) -> Camera:
    return Camera.model_validate(
        {"name": "rtsp", "source": {"type": "rtsp", "url": url, **source}, "reconnect": BACKOFF}
    )


class Consumer:
    """Reads a source in a thread like the agent loop does and records when frames arrived."""

    def __init__(self, src: Any):
        self.src = src
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.src.read(timeout=0.05) is not None:
                self.arrivals.append(time.monotonic())

    def max_gap(self, start: float, end: float) -> float:
        t = [start, *(a for a in self.arrivals if start <= a <= end), end]
        return float(np.max(np.diff(t)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize(
    "backend,fps",
    [
        ("pyav", 10),  # the slowest common camera rate: OpenCV's open alone would take 2.8 s
        ("opencv", 25),  # OpenCV meets the target only at the 25-30 fps of IP camera main streams
    ],
)
def test_rtsp_killed_and_restarted_reconnects_and_other_camera_never_stalls(
    rtsp_server: Callable[..., RtspServer], single_face_clip: Path, backend: str, fps: int
) -> None:
    server = rtsp_server(fps=fps)
    timeline = Timeline()
    camera = rtsp_camera(server.url(), open_timeout_s=10, read_timeout_s=3, backend=backend)
    rtsp = open_source(camera, on_status=timeline)
    other = open_source(
        Camera.model_validate(
            {
                "name": "file",
                "source": {"type": "file", "path": str(single_face_clip), "loop": True, "realtime": True},
            }
        )
    )
    t_start = time.monotonic()
    rtsp.start()
    other.start()
    readers = [Consumer(rtsp), Consumer(other)]
    try:
        assert wait_for(lambda: rtsp.status().state == "online", 30), timeline.states()
        open_s = timeline.first("online", t_start) - t_start  # type: ignore[operator]
        time.sleep(2)
        t_kill = time.monotonic()
        server.kill()
        assert wait_for(lambda: rtsp.status().state in ("reconnecting", "offline"), 10), timeline.states()
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_kill)))
        t_restart = time.monotonic()
        server.start()
        assert wait_for(lambda: rtsp.status().state == "online", BACKOFF["max_backoff_s"] + open_s + 10)
        t_back = timeline.first("online", t_restart)
        frames_before = len(readers[0].arrivals)
        assert wait_for(lambda: len(readers[0].arrivals) > frames_before + 5, 10)
        other_gap = readers[1].max_gap(t_kill, time.monotonic())
    finally:
        for reader in readers:
            reader.close()
        rtsp.close()
        other.close()
    after_kill = [s for t, s in timeline.reports if t >= t_kill]
    went_down = [s.state for s in after_kill[:-2]]
    assert {"reconnecting", "offline"} & set(went_down) and after_kill[-2].state == "online"
    assert all("rtsp://127.0.0.1" in s.detail for _, s in timeline.reports if s.state != "stopped")
    reconnect_s = t_back - t_restart  # type: ignore[operator]
    # Issue 6's target: the restart is noticed by the next retry (at most max_backoff_s away) and the
    # reopen fits in 2 s. Through OpenCV an H.264 RTSP open costs FFmpeg ~28 frames (1.2 s at 25 fps,
    # 2.8 s at 10 fps); PyAV skips the frame-rate probe (0.8 s at 10 fps). docs/reliability.md.
    assert reconnect_s <= BACKOFF["max_backoff_s"] + 2.0, (reconnect_s, open_s)
    assert other_gap < 1.0, other_gap  # 30 fps file: any stall over a second is a stall
    print(
        f"{backend} at {fps} fps: first open {open_s:.2f} s, back online {reconnect_s:.2f} s after restart, "
        f"other camera's longest gap {other_gap:.3f} s"
    )


def test_rtsp_hang_with_socket_open_is_caught_by_the_watchdog(rtsp_server: Callable[..., RtspServer]) -> None:
    server = rtsp_server()
    timeline = Timeline()
    # FFmpeg's own read timeout is far away: only the watchdog (stall_timeout_s = 2) can notice.
    src = open_source(rtsp_camera(server.url(), open_timeout_s=5, read_timeout_s=60), on_status=timeline)
    src.start()
    reader = Consumer(src)
    try:
        assert wait_for(lambda: src.status().state == "online", 30), timeline.states()
        time.sleep(1)
        t_freeze = time.monotonic()
        server.pause()
        assert wait_for(lambda: src.status().state == "reconnecting", BACKOFF["stall_timeout_s"] + 3)
        noticed_s = time.monotonic() - t_freeze
        server.resume()
        t_resume = time.monotonic()
        assert wait_for(lambda: timeline.first("online", t_resume) is not None, 30), timeline.states()
        t0 = time.monotonic()
    finally:
        reader.close()
        src.close()
    close_s = time.monotonic() - t0
    stalls = [s.detail for _, s in timeline.reports if "no frame from" in s.detail]
    assert stalls and "rtsp://127.0.0.1" in stalls[0]
    assert noticed_s <= BACKOFF["stall_timeout_s"] + 2.0, noticed_s
    assert close_s < 3.0  # abandoned hung reads do not hold up shutdown
    back_s = timeline.first("online", t_resume) - t_resume  # type: ignore[operator]
    print(f"hang noticed after {noticed_s:.2f} s, back online {back_s:.2f} s after resume")


@pytest.mark.parametrize("realtime", [False, True])
def test_looping_file_keeps_time_moving_forward_across_laps(single_face_clip: Path, realtime: bool) -> None:
    """Regression: a lossless looping file used to stamp the next lap 2.2 s in the past (tracker error)."""
    source = {"type": "file", "path": str(single_face_clip), "loop": True, "realtime": realtime}
    src = open_source(Camera.model_validate({"name": "loop", "source": source}))
    src.start()
    stamps: list[float] = []
    deadline = time.monotonic() + 20
    while len(stamps) < 160 and time.monotonic() < deadline:  # 72-frame clip: over two laps
        frame = src.read(timeout=0.5)
        if frame is not None:
            stamps.append(frame.t_mono)
    status = src.status()
    src.close()
    assert len(stamps) == 160 and np.all(np.diff(stamps) > 0)
    assert status.errors == 0 and status.state == "online"


# ----------------------------------------------------------------------------- damaged files, whole agent
def _mixed_resolution(clip: Path, path: Path) -> int:
    """A raw MJPEG stream whose frames switch from 640x360 to 320x180 and back; returns the frame count."""
    cap = cv2.VideoCapture(str(clip))
    with path.open("wb") as f:
        for i in range(30):
            image = cap.read()[1]
            if 10 <= i < 20:
                image = cv2.resize(image, (320, 180))
            f.write(cv2.imencode(".jpg", image)[1].tobytes())
    cap.release()
    return 30


def _damaged(clip: Path, tmp_path: Path) -> dict[str, Path]:
    data = clip.read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, 120_000, dtype=np.uint8).tobytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "corrupt": data[:30_000] + noise + data[150_000:],
        "garbage": noise[:5000],
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.mp4"
        paths[name].write_bytes(content)
    return paths


def test_agent_skips_damaged_files_and_resolution_changes(
    tmp_path: Path, mosquitto: Any, recorder: Callable[..., Any], single_face_clip: Path
) -> None:
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    mixed = tmp_path / "mixed.mjpeg"
    n_mixed = _mixed_resolution(single_face_clip, mixed)
    paths = {"mixed": mixed, **_damaged(single_face_clip, tmp_path)}
    cameras = [{"name": name, "source": {"type": "file", "path": str(p)}} for name, p in paths.items()]
    proc = start_agent(write_config(tmp_path, mosquitto.port, cameras))
    log = finish(proc, own_exit_s=120)  # the files end by themselves
    # The readable files did their work; the three that gave no frame fail the run, by name.
    assert proc.returncode == 1, log[-3000:]
    assert "error: no frame from camera(s) empty, truncated, garbage (see the summary above)" in log
    assert "Traceback" not in log and "pipeline failed" not in log
    assert "loop errors 0" in log
    msgs = rec.wait(
        lambda m: any(x.topic.endswith("/status") and x.json["state"] == "stopped" for x in m), 10
    )
    # How each camera ended, before the agent closed it at exit ("camera X: closed").
    final = {
        name: [
            m.json
            for m in msgs
            if m.topic.endswith(f"/{name}/state") and not m.json["detail"].endswith("closed")
        ][-1]
        for name in paths
    }
    for name in ("empty", "truncated", "garbage"):
        assert final[name]["state"] == "offline" and str(paths[name]) in final[name]["detail"]
    assert final["corrupt"]["state"] == "stopped" and final["corrupt"]["errors"] > 0
    assert final["mixed"]["state"] == "stopped" and final["mixed"]["frames"] == n_mixed
    assert frames_in(tmp_path / "mixed.mp4") == n_mixed  # preview kept every frame, resized
    assert states(msgs, "/status")[-1] == "stopped"


@pytest.mark.parametrize("outage_s", [3.0])
def test_agent_reports_rtsp_outage_over_mqtt_and_keeps_other_camera(
    tmp_path: Path,
    mosquitto: Any,
    recorder: Callable[..., Any],
    rtsp_server: Callable[..., RtspServer],
    single_face_clip: Path,
    outage_s: float,
) -> None:
    server = rtsp_server()
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    cameras = [
        {"name": "rtsp", "source": {"type": "rtsp", "url": server.url()}, "fps_cap": 5, "reconnect": BACKOFF},
        {
            "name": "file",
            "source": {"type": "file", "path": str(single_face_clip), "loop": True, "realtime": True},
            "fps_cap": 5,
        },
    ]
    proc = start_agent(write_config(tmp_path, mosquitto.port, cameras))
    try:
        rec.wait(
            lambda m: (
                "online" in states(m, "/rtsp/state") and any(x.topic.endswith("/file/persons") for x in m)
            ),
            60,
        )
        server.kill()
        rec.wait(lambda m: {"reconnecting", "offline"} & set(states(m, "/rtsp/state")), 15)
        t_down = time.monotonic()
        n_file = len(rec.on("/file/persons"))
        time.sleep(outage_s)
        server.start()
        rec.wait(lambda m: states(m, "/rtsp/state")[-1] == "online", 30)
        during = len(rec.on("/file/persons")) - n_file
        elapsed = time.monotonic() - t_down
    finally:
        log = finish(proc)
    assert proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    seen = states(rec.messages, "/rtsp/state")
    first_down = next(i for i, s in enumerate(seen) if s in ("reconnecting", "offline"))
    assert "online" in seen[:first_down] and "online" in seen[first_down:]
    # persons_hz 5: the other camera kept publishing through the outage (allow for a slow loaded machine).
    assert during >= 2 * elapsed, (during, elapsed)
