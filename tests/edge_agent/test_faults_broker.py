"""Broker faults against the real agent and a real mosquitto: outages and refused credentials.

The outage is ``AFFECTLINE_BROKER_OUTAGE_S`` seconds (default 3 s in CI); the `slow` variant stops
the broker for 30 s (``AFFECTLINE_SLOW=1``). ``summary`` messages (QoS 1, one per camera every
``summary_s``) are the yardstick: their ``seq`` numbers must arrive without gaps and in order
when the buffer holds the outage, and with a counted gap when it does not.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.edge_agent.conftest import Mosquitto, Received
from tests.edge_agent.faultkit import SLOW, env_float, finish, seqs, start_agent
from tests.edge_agent.test_app import frames_in, write_config

OUTAGE_S = env_float("AFFECTLINE_BROKER_OUTAGE_S", 3.0)
SUMMARY_S = 0.5


def looping_camera(clip: Path) -> list[dict[str, Any]]:
    source = {"type": "file", "path": str(clip), "loop": True, "realtime": True}
    return [{"name": "cam", "source": source, "fps_cap": 5}]


def republished(msgs: list[Received]) -> bool:
    """An ``online`` status newer than the first one arrived (a retained copy repeats the old seq)."""
    online = [m.json["seq"] for m in msgs if m.topic.endswith("/status") and m.json["state"] == "online"]
    return len(set(online)) >= 2


def last_stats(msgs: list[Received]) -> dict[str, Any]:
    return [m.json for m in msgs if m.topic.endswith("/stats")][-1]


def run_outage(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    recorder: Callable[..., Any],
    clip: Path,
    outage_s: float,
    buffer_size: int,
) -> tuple[list[Received], str, int]:
    """Agent publishing, broker stopped for ``outage_s`` and restarted.

    Returns:
        What the subscriber got, the agent's log, and how many summaries fell due during the outage.
    """
    broker = mosquitto_factory(persistence=True)  # the subscriber's session survives the restart
    rec = recorder(broker.port, "affectline/e2e/#", client_id="outage-sub", clean=False)
    cfg = write_config(
        tmp_path,
        broker.port,
        looping_camera(clip),
        summary_s=SUMMARY_S,
        stats_s=1.0,
        buffer_size=buffer_size,
        reconnect_max_s=1.0,
    )
    proc = start_agent(cfg)
    try:
        rec.wait(lambda m: len(seqs(m, "/cam/summary")) >= 3, 60)
        broker.stop()
        time.sleep(outage_s)
        n_before = len(rec.messages)
        broker.start()
        expected = int(outage_s / SUMMARY_S)
        last_seq = max(seqs(rec.messages, "/cam/summary"))
        rec.wait(lambda m: max(seqs(m, "/cam/summary")) >= last_seq + expected and republished(m), 30)
        rec.wait(lambda m: any(x.topic.endswith("/stats") for x in m[n_before:]), 10)  # counters after it
    finally:
        log = finish(proc)
    assert proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    return list(rec.messages), log, expected


@pytest.mark.parametrize(
    "outage_s", [pytest.param(OUTAGE_S, id="ci"), pytest.param(30.0, id="30s", marks=SLOW)]
)
def test_outage_within_buffer_loses_nothing_and_keeps_order(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    recorder: Callable[..., Any],
    single_face_clip: Path,
    outage_s: float,
) -> None:
    msgs, log, _ = run_outage(tmp_path, mosquitto_factory, recorder, single_face_clip, outage_s, 1000)
    summary = seqs(msgs, "/cam/summary")
    assert summary == list(range(summary[0], summary[-1] + 1))  # in order, no gap
    online = [m.json["seq"] for m in msgs if m.topic.endswith("/status") and m.json["state"] == "online"]
    assert republished(msgs) and online == sorted(online)  # republished after the restart
    counters = last_stats(msgs)["mqtt"]["counters"]
    assert counters.get("summary_overflow", 0) == 0 and counters.get("events_overflow", 0) == 0
    assert "retrying with backoff, the pipeline keeps running" in log
    assert frames_in(tmp_path / "cam.mp4") > 0
    print(
        f"\noutage {outage_s:.0f} s: summaries seq {summary[0]}..{summary[-1]} without gap, "
        f"status online {online}"
    )


def test_outage_beyond_buffer_counts_the_overflow(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    recorder: Callable[..., Any],
    single_face_clip: Path,
) -> None:
    msgs, _, expected = run_outage(tmp_path, mosquitto_factory, recorder, single_face_clip, OUTAGE_S, 2)
    summary = seqs(msgs, "/cam/summary")
    missing = sorted(set(range(summary[0], summary[-1] + 1)) - set(summary))
    assert summary == sorted(summary) and missing  # newest kept in order; the gap shows the loss
    counters = last_stats(msgs)["mqtt"]["counters"]
    # Every summary that never arrived was evicted from the full buffer and counted as such.
    assert counters["summary_overflow"] >= len(missing) > 0, (counters, missing, expected)
    print(
        f"\nbuffer 2, outage {OUTAGE_S:.0f} s: missing seq {missing}, "
        f"summary_overflow {counters['summary_overflow']}"
    )


@pytest.fixture
def auth_broker(tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "agent", "right-password"], check=True)
    return mosquitto_factory([f"password_file {passwd}"])


def test_refused_credentials_clear_error_retries_and_pipeline_keeps_running(
    tmp_path: Path, auth_broker: Mosquitto, single_face_clip: Path
) -> None:
    cameras = [{"name": "cam", "source": {"type": "file", "path": str(single_face_clip)}}]
    cfg = write_config(
        tmp_path, auth_broker.port, cameras, username="agent", password="wrong-password", connect_retries=2
    )
    proc = start_agent(cfg)
    log = finish(proc, own_exit_s=120)
    assert proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    warnings = [line for line in log.splitlines() if "WARNING" in line and "MQTT broker" in line]
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(warnings) == 1 and "not authorized" in warnings[0].lower()
    assert len(errors) == 1 and "MQTT disabled" in errors[0] and "(3 attempts)" in errors[0]
    assert "keeps running without MQTT" in errors[0]
    assert auth_broker.log().count("not authorised") + auth_broker.log().count("not authorized") >= 3
    assert frames_in(tmp_path / "cam.mp4") == 72  # every frame was still processed
    assert "wrong-password" not in log
