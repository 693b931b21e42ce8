"""Shutdown of the real agent: SIGTERM flushes the buffer and says ``stopped``; SIGKILL leaves the Last Will.

Both signals come while the agent streams a looping clip to a real mosquitto; the preview file
must be a playable video afterwards (its index written).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
