"""Shared helpers of the fault-injection, load and security tests (issue 6).

- `SLOW`: marks a test ``slow`` and skips it unless ``AFFECTLINE_SLOW=1`` (long outages, soaks).
- `rtsp_server`: a real GStreamer RTSP server on loopback serving a real clip as an IP camera
  streams it (25 fps, keyframe every second; `tests/rtsp_server.py`).
- `start_agent` / `finish`: ``affectline run`` as a subprocess with stdout and stderr captured
  together (the tests read the whole log).
- `states` / `seqs`: what a subscriber saw, per topic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.edge_agent.conftest import Received, free_port
from tests.rtsp_server import CAMERA_FPS, RtspServer, camera_clip, unavailable

ROOT = Path(__file__).resolve().parents[2]
SLOW_ENV = "AFFECTLINE_SLOW"
SLOW = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get(SLOW_ENV) != "1", reason=f"slow: set {SLOW_ENV}=1 to run"),
]


def env_float(name: str, default: float) -> float:
    """A duration from the environment (so CI runs short and docs runs long with the same test)."""
    return float(os.environ.get(name, default))


@pytest.fixture
def rtsp_server(
    one_by_one_clip: Path, pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RtspServer]]:
    """``make(user=None, password=None, fps=25) -> RtspServer``, started; stopped after.

    Serves the first 60 s of ``one-by-one-person-detection.mp4`` re-encoded at ``fps`` (made once,
    kept in pytest's cache directory, or in the session's temporary directory when the cache
    plugin is off). 25 fps is a typical IP camera main stream; at 10 fps, the original's rate, an
    RTSP open through OpenCV takes 2.8 s (docs/reliability.md, Known limits).
    """
    why = unavailable()
    if why:
        pytest.skip(why)
    cache = getattr(pytestconfig, "cache", None)
    folder = cache.mkdir("rtsp-camera-clips") if cache else tmp_path_factory.mktemp("rtsp-camera-clips")
    servers: list[RtspServer] = []

    def make(user: str | None = None, password: str | None = None, fps: int = CAMERA_FPS) -> RtspServer:
        server = RtspServer(free_port(), camera_clip(one_by_one_clip, folder, fps), user, password)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


def start_agent(config: Path, *args: str) -> subprocess.Popen[str]:
    """``affectline -v run CONFIG`` with stdout and stderr in one pipe (DEBUG: the most log there is)."""
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "-v", "run", str(config), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 60.0, own_exit_s: float = 0.0) -> str:
    """Give the agent ``own_exit_s`` to exit by itself, then SIGTERM it; wait and return its whole log."""
    try:
        proc.wait(timeout=own_exit_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"agent did not exit within {timeout_s} s of SIGTERM:\n{out[-3000:]}") from None
    return out


def states(msgs: list[Received], suffix: str) -> list[str]:
    """The ``state`` field of every message on topics ending with ``suffix``, in arrival order."""
    return [m.json["state"] for m in msgs if m.topic.endswith(suffix)]


def seqs(msgs: list[Received], suffix: str) -> list[int]:
    """Distinct ``seq`` numbers on topics ending with ``suffix`` in arrival order (QoS 1 may repeat)."""
    return list(dict.fromkeys(m.json["seq"] for m in msgs if m.topic.endswith(suffix)))


def wait_for(predicate: Callable[[], Any], limit_s: float = 10.0, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return False
