"""Publisher tests: pure payload builders, then behaviour against real mosquitto brokers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import Mqtt, Tls, parse_config
from edge_agent.publish import (
    Message,
    Outbox,
    Publisher,
    SummaryWindow,
    discovery_payloads,
    ha_unique_id,
    iso_ms,
    persons_payload,
    summary_payload,
    topic,
)
from edge_agent.structures import CameraStatus
from tests.edge_agent.conftest import CLASSES, Mosquitto, Received, Recorder, frame_result, free_port

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "edge_agent" / "schemas"
FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.2, "summary_s": 3600, "stats_s": 3600}


def validate(msg: Received) -> dict[str, Any]:
    """Check a message against the JSON Schema of its topic kind; returns the payload."""
    kind = msg.topic.rsplit("/", 1)[1]
    schema = json.loads((SCHEMAS / f"{kind}.v1.json").read_text())
    payload = msg.json
    jsonschema.validate(payload, schema, format_checker=jsonschema.FormatChecker())
    return payload


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)


@pytest.fixture
def publisher() -> Any:
    """``make(port, cameras=('cam',), **mqtt_overrides) -> Publisher`` (started); closed at teardown."""
    made: list[Publisher] = []

    def make(port: int, cameras: tuple[str, ...] = ("cam",), agent: str = "a1", **kw: Any) -> Publisher:
        cfg = Mqtt(**{"host": "127.0.0.1", "port": port, **FAST, **kw})
        made.append(Publisher(cfg, agent, cameras, CLASSES))
        made[-1].start()
        return made[-1]

    yield make
    for pub in made:
        pub.close(flush_timeout_s=1.0)


# ----------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize(
    "kind, camera, expected",
    [
        ("status", None, "affectline/a1/status"),
        ("stats", None, "affectline/a1/stats"),
        ("persons", "cam", "affectline/a1/cam/persons"),
        ("state", "door-2", "affectline/a1/door-2/state"),
    ],
)
def test_topic(kind: str, camera: str | None, expected: str) -> None:
    assert topic("affectline", "a1", kind, camera) == expected


@pytest.mark.parametrize("kind, camera", [("persons", None), ("status", "cam"), ("nonsense", None)])
def test_topic_rejects_wrong_level(kind: str, camera: str | None) -> None:
    with pytest.raises(ValueError, match=f"kind '{kind}' with camera"):
        topic("affectline", "a1", kind, camera)


@pytest.mark.parametrize(
    "t, expected",
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1.9999, "1970-01-01T00:00:01.999Z"),  # truncated, never rounded into the next second
        (1_700_000_000.123, "2023-11-14T22:13:20.123Z"),
    ],
)
def test_iso_ms(t: float, expected: str) -> None:
    assert iso_ms(t) == expected


@pytest.mark.parametrize("n", [0, 1, 5])
def test_persons_payload_fits_schema_and_size(n: int) -> None:
    result = frame_result("cam", 7, [(i, i % len(CLASSES) - 1) for i in range(n)])
    body = persons_payload(result, [f"{i:08x}" for i in range(n)], CLASSES)
    envelope = {"v": 1, "ts": iso_ms(0), "seq": 0, "session": "0123abcd", "camera": "cam"}
    payload = json.dumps({**envelope, **body}, separators=(",", ":")).encode()
    validate(Received("p/a1/cam/persons", payload, False))
    assert len(body["persons"]) == n
    assert len(payload) < 2048  # the documented bound for 5 persons (docs/mqtt.md gives the figure)
    if n:
        assert body["persons"][0]["label"] is None  # label -1 = not reported yet
        assert all(0 <= x <= 1 for p in body["persons"] for x in p["box"])


def test_discovery_configs_follow_home_assistant_rules() -> None:
    """Topic format, templates against real summaries, and the sensor rules Home Assistant enforces.

    https://www.home-assistant.io/integrations/mqtt/#discovery-messages and
    https://www.home-assistant.io/integrations/sensor.mqtt/ (jinja2 stands in for HA's templates).
    """
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    schema = json.loads((SCHEMAS / "summary.v1.json").read_text())["properties"]
    envelope = {"v": 1, "ts": iso_ms(0), "seq": 0, "session": "0123abcd", "camera": "door-2"}
    labelled, empty = SummaryWindow(len(CLASSES), 0.0), SummaryWindow(len(CLASSES), 0.0)
    labelled.add(np.array([3, -1]), np.array([[0.5, -0.25], [0.0, 0.0]]), ["0000000a", "0000000b"])
    summaries = [{**envelope, **summary_payload(w, CLASSES, 10.0)} for w in (labelled, empty)]
    configs = discovery_payloads("plant/hall3", "line_1", "door-2", "homeassistant")
    assert len(configs) == 4
    for t, cfg in configs.items():
        # <discovery_prefix>/<component>/<object_id>/config, object id in [a-zA-Z0-9_-], = unique_id.
        assert t == f"homeassistant/sensor/{cfg['unique_id']}/config"
        assert all(c.isalnum() or c in "_-" for c in cfg["unique_id"])
        assert cfg["state_topic"] == "plant/hall3/line_1/door-2/summary"
        assert cfg["origin"]["name"] and cfg["origin"]["sw_version"]
        field_name = cfg["value_template"].removeprefix("{{ value_json.").removesuffix(" }}")
        assert field_name in schema  # the template reads a field the summary has
        numeric = "number" in schema[field_name]["type"] or schema[field_name]["type"] == "integer"
        # A state_class or unit makes HA expect a number; an enum sensor would need options.
        assert ("state_class" in cfg or "unit_of_measurement" in cfg) == numeric
        assert cfg.get("device_class") != "enum"
        for summary in summaries:
            state = env.from_string(cfg["value_template"]).render(value_json=summary)
            if state == "None":  # a null field, which HA shows as `unknown`; never with a label
                assert summary is summaries[1]
            elif numeric:
                float(state)  # raises for a non-numeric state, which HA rejects for these sensors
            else:
                assert state in CLASSES
        avail = env.from_string(cfg["availability_template"])
        for status, expected in (("online", "online"), ("offline", "offline"), ("stopped", "offline")):
            assert avail.render(value_json={"state": status}) == expected


def _split_unique_id(uid: str) -> tuple[str, str, str]:
    """The inverse of `ha_unique_id`: that it exists is what makes the ids collision-free."""
    rest = uid.removeprefix("affectline_")
    if rest.startswith("_"):
        length, rest = rest[1:].split("_", 1)
        agent, rest = rest[: int(length)], rest[int(length) + 1 :]
    else:
        agent, rest = rest.split("_", 1)
    camera, figure = rest.rsplit("_", 1)
    return agent, camera, figure


@pytest.mark.parametrize(
    ("agent_id", "camera", "expected"),
    [
        ("a", "b", "affectline_a_b_persons"),  # shortest names
        ("line1-agent", "entrance", "affectline_line1-agent_entrance_persons"),  # no _: form kept
        ("line", "1_door", "affectline_line_1_door_persons"),
        ("line_1", "door", "affectline__6_line_1_door_persons"),  # met the row above before
        ("6", "line_1_door", "affectline_6_line_1_door_persons"),  # a digit-only id cannot fake a length
        ("_", "_", "affectline__1_____persons"),
    ],
)
def test_ha_unique_id(agent_id: str, camera: str, expected: str) -> None:
    assert ha_unique_id(agent_id, camera, "persons") == expected
    assert _split_unique_id(expected) == (agent_id, camera, "persons")


NAMES = st.text(alphabet="ab1_-", min_size=1, max_size=64)  # the config's name rule, few letters


@given(agent_id=NAMES, camera=NAMES, figure=st.sampled_from(["persons", "valence", "arousal", "emotion"]))
def test_ha_unique_ids_never_collide(agent_id: str, camera: str, figure: str) -> None:
    uid = ha_unique_id(agent_id, camera, figure)
    assert _split_unique_id(uid) == (agent_id, camera, figure)
    assert all(c.isalnum() or c in "_-" for c in uid)  # Home Assistant's object id rule


@pytest.mark.parametrize(
    "bound, n_reliable, n_live, kept_seq, overflow",
    [
        (1, 3, 0, [2], 2),  # smallest bound keeps only the newest
        (5, 5, 2, [0, 1, 2, 3, 4], 0),  # exactly full: nothing evicted
        (5, 12, 1, [7, 8, 9, 10, 11], 7),
    ],
)
def test_outbox_keeps_newest_reliable_in_order(
    bound: int, n_reliable: int, n_live: int, kept_seq: list[int], overflow: int
) -> None:
    box = Outbox(bound)
    for i in range(n_reliable):
        box.put(Message("events", "t/events", str(i).encode(), 1, False))
    for _ in range(n_live):
        box.put(Message("persons", "t/persons", b"p", 0, False))
    counts = box.counters()
    assert (counts["events_overflow"], counts["events_buffered"]) == (overflow, len(kept_seq))
    taken = box.take(reliable_room=100)
    assert [int(m.payload) for m in taken if m.qos] == kept_seq
    assert sum(1 for m in taken if not m.qos) == n_live
    assert box.counters()["events_buffered"] == 0 and len(box) == 0


def test_summary_of_empty_window_has_nulls() -> None:
    body = summary_payload(SummaryWindow(len(CLASSES), 0.0), CLASSES, 10.0)
    assert body["persons"] == 0 and body["labels"] == {} and body["dominant"] is None
    assert body["valence"] is None and body["arousal"] is None


def test_summary_weighs_labelled_person_frames() -> None:
    window = SummaryWindow(3, 0.0)
    window.add(np.array([0, 1]), np.array([[0.5, 0.0], [-0.5, 1.0]]), ["a", "b"])
    window.add(np.array([1, -1]), np.array([[0.2, 0.2], [0.0, 0.0]]), ["a", "c"])  # c: no estimate yet
    body = summary_payload(window, ("x", "y", "z"), 2.0)
    assert body["labels"] == {"x": round(1 / 3, 3), "y": round(2 / 3, 3), "z": 0.0}
    assert body["dominant"] == "y"
    assert body["tracks_seen"] == 3 and body["persons_mean"] == 2.0 and body["persons"] == 2
    assert (body["valence"], body["arousal"]) == (round(0.2 / 3, 3), round(1.2 / 3, 3))


def test_summary_of_persons_without_estimates_has_no_valence() -> None:
    """One person seen from behind all window long: counted, but no valence of 0 is made up."""
    window = SummaryWindow(3, 0.0)
    window.add(np.array([-1]), np.zeros((1, 2)), ["a"])
    body = summary_payload(window, ("x", "y", "z"), 1.0)
    assert (body["persons"], body["labels"], body["valence"], body["arousal"]) == (1, {}, None, None)


@pytest.mark.parametrize(
    "args, match",
    [(((), CLASSES), "cameras"), ((("cam",), ()), "classes")],
)
def test_publisher_rejects_empty_names(args: tuple[Any, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Publisher(Mqtt(), "a1", *args)


@pytest.mark.parametrize(
    "value, ok", [(object(), False), ({1, 2}, False), (np.float32(2.5), True), (np.eye(2), True)]
)
def test_stats_values_must_be_json(value: Any, ok: bool) -> None:
    pub = Publisher(Mqtt(), "a1", ["cam"], CLASSES)
    if ok:
        pub.stats({"x": value})
    else:
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            pub.stats({"x": value})


@pytest.mark.parametrize(
    "camera, tracks, classes, match",
    [
        ("other", [], CLASSES, "'other' is not one of"),
        (
            "cam",
            [(1, len(CLASSES))],
            CLASSES,
            f"label must be in \\[-1, {len(CLASSES) - 1}\\], got {len(CLASSES)}..{len(CLASSES)}",
        ),
        ("cam", [(1, -2)], CLASSES, "label must be in"),
        ("cam", [(1, 0)], CLASSES[:-1], f"probs must have shape \\(N, {len(CLASSES) - 1}\\)"),
    ],
)
def test_publish_rejects_bad_results(
    camera: str, tracks: list[tuple[int, int]], classes: tuple[str, ...], match: str
) -> None:
    pub = Publisher(Mqtt(), "a1", ["cam"], classes)
    with pytest.raises(ValueError, match=match):
        pub.publish(frame_result(camera, 0, tracks))


# ----------------------------------------------------------------------------- real broker
def test_status_state_summary_retained_for_late_subscriber(
    mosquitto: Mosquitto, publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    pub = publisher(mosquitto.port, summary_s=0.2)
    wait_until(lambda: pub.connected)
    pub.camera_state(CameraStatus("cam", "online", fps=24.5, frames=10, t_wall=time.time()))
    pub.publish(frame_result("cam", 0, [(1, 2)]))
    wait_until(lambda: pub.counters()["summary_sent"] >= 1 and pub.counters()["state_sent"] == 1)
    late = recorder(mosquitto.port, "affectline/#")
    msgs = late.wait(lambda m: {x.topic.rsplit("/", 1)[1] for x in m} >= {"status", "state", "summary"})
    retained = {m.topic: validate(m) for m in msgs if m.retain}
    assert retained["affectline/a1/status"]["state"] == "online"
    assert retained["affectline/a1/cam/state"]["fps"] == 24.5
    assert retained["affectline/a1/cam/summary"]["dominant"] == "fear"


def test_state_changed_while_connecting_is_published(
    mosquitto: Mosquitto, publisher: Any, recorder: Callable[..., Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A camera state stored after the CONNACK handler took its snapshot of retained states, but
    before the publisher counted as connected, was neither in the snapshot nor queued: lost until
    the next change (seen as a flaky start-up test). The hand-over of `online` forces that moment."""
    hand_over = Publisher._hand_over
    changed: list[bool] = []

    def hand_over_then_change_state(self: Publisher, msg: Message) -> None:
        hand_over(self, msg)
        if msg.kind == "status" and not changed:
            changed.append(True)
            self.camera_state(CameraStatus("cam", "starting", detail="opening"))  # as a capture thread would

    monkeypatch.setattr(Publisher, "_hand_over", hand_over_then_change_state)
    rec = recorder(mosquitto.port, "affectline/a1/cam/state")
    pub = publisher(mosquitto.port)
    msgs = rec.wait(lambda m: len(m) >= 1)
    assert changed and validate(msgs[0])["state"] == "starting"
    wait_until(lambda: pub.counters()["state_sent"] == 1)


def test_last_will_when_agent_is_killed(mosquitto: Mosquitto, recorder: Callable[..., Recorder]) -> None:
    rec = recorder(mosquitto.port, "affectline/killed/status")
    script = (
        "import sys, time\n"
        "from edge_agent.config import Mqtt\n"
        "from edge_agent.publish import Publisher\n"
        "p = Publisher(Mqtt(host='127.0.0.1', port=int(sys.argv[1])), 'killed', ['cam'], ['a', 'b'])\n"
        "p.start()\n"
        "while not p.connected: time.sleep(0.01)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(mosquitto.port)], cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        rec.wait(lambda m: len(m) >= 1)
        proc.send_signal(signal.SIGKILL)
        msgs = rec.wait(lambda m: len(m) >= 2)
    finally:
        proc.kill()
        proc.wait()
    online, offline = (validate(m) for m in msgs[:2])
    assert (online["state"], offline["state"]) == ("online", "offline")
    # The will carries the next status number: no gap, and the same session.
    assert offline["seq"] == online["seq"] + 1 and offline["session"] == online["session"]
    late = recorder(mosquitto.port, "affectline/killed/status")
    assert late.wait(lambda m: len(m) >= 1)[0].retain and late.messages[0].json["state"] == "offline"


def test_clean_close_publishes_stopped_not_will(
    mosquitto: Mosquitto, publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    rec = recorder(mosquitto.port, "affectline/a1/status")
    pub = publisher(mosquitto.port)
    rec.wait(lambda m: len(m) >= 1)
    pub.close(reason="maintenance")
    time.sleep(0.3)  # an (unwanted) will would arrive right after the disconnect
    states = [validate(m) for m in rec.messages]
    assert [(s["state"], s["seq"]) for s in states] == [("online", 0), ("stopped", 1)]
    assert states[1]["reason"] == "maintenance" and pub.state == "stopped"


def test_events_order_and_sequence(
    mosquitto: Mosquitto, publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    rec = recorder(mosquitto.port, "affectline/a1/+/events")
    pub = publisher(mosquitto.port)
    wait_until(lambda: pub.connected)
    frames = [
        [(1, -1)],
        [(1, -1), (2, 3)],  # 2 starts with a label already
        [(1, 6), (2, 3)],  # 1 gets its first label
        [(1, 4), (2, 3)],
        [(1, 4)],  # 2 ends (below)
        [],  # 1 ends
    ]
    ended = {4: (2,), 5: (1,)}
    for i, tracks in enumerate(frames):
        pub.publish(frame_result("cam", i, tracks, ended=ended.get(i, ())))
    msgs = rec.wait(lambda m: len(m) >= 6)
    events = [validate(m) for m in msgs]
    t1, t2 = events[0]["track"], events[1]["track"]
    assert t1 != t2
    assert [(e["event"], e["track"], e["label"], e.get("previous")) for e in events] == [
        ("track_started", t1, None, None),
        ("track_started", t2, "happy", None),
        ("emotion_changed", t1, "neutral", None),
        ("emotion_changed", t1, "sad", "neutral"),
        ("track_ended", t2, "happy", None),
        ("track_ended", t1, "sad", None),
    ]
    assert [e["seq"] for e in events] == list(range(6))


@pytest.mark.parametrize(
    "buffer_size, n_offline",
    [
        (5, 12),  # overflow: the oldest 7 are evicted and counted, the newest 5 arrive in order
        (50, 30),  # within the bound: nothing lost
    ],
)
def test_broker_restart_delivers_buffer_in_order(
    mosquitto_factory: Callable[..., Mosquitto],
    publisher: Any,
    recorder: Callable[..., Recorder],
    buffer_size: int,
    n_offline: int,
) -> None:
    broker = mosquitto_factory(persistence=True)  # keeps the subscriber's session across the restart
    rec = recorder(broker.port, "affectline/a1/cam/events", client_id="restart-sub", clean=False)
    pub = publisher(broker.port, buffer_size=buffer_size, persons_hz=30)
    wait_until(lambda: pub.connected)
    pub.publish(frame_result("cam", 0, [(0, 0)]))
    rec.wait(lambda m: len(m) == 1)
    wait_until(lambda: pub.counters()["events_sent"] == 1)  # acknowledged: not in paho's re-send queue
    broker.stop()
    wait_until(lambda: not pub.connected)
    tracks = [(0, 0)]
    for i in range(1, n_offline + 1):  # each frame starts one more track: one event per frame
        tracks = [*tracks, (i, 0)]
        pub.publish(frame_result("cam", i, tracks))
        time.sleep(0.002)
    counts = pub.counters()
    assert counts["events_buffered"] == min(n_offline, buffer_size)
    assert counts["events_overflow"] == max(0, n_offline - buffer_size)
    assert counts["persons_dropped"] > 0  # live data is not buffered
    broker.start()
    kept = list(range(max(1, n_offline - buffer_size + 1), n_offline + 1))
    # QoS 1 is at-least-once: a restart may repeat a message, so subscribers de-duplicate by seq.
    msgs = rec.wait(lambda m: {x.json["seq"] for x in m} >= {0, *kept}, timeout=10)
    assert list(dict.fromkeys(validate(m)["seq"] for m in msgs)) == [0, *kept]
    wait_until(lambda: pub.counters()["events_buffered"] == 0)
    assert pub.counters()["events_sent"] == 1 + len(kept)


def test_unreachable_broker_never_blocks_the_pipeline(caplog: pytest.LogCaptureFixture) -> None:
    pub = Publisher(Mqtt(host="127.0.0.1", port=free_port(), **FAST), "a1", ["cam"], CLASSES)
    t0 = time.monotonic()
    pub.start()
    for i in range(10):
        pub.publish(frame_result("cam", i, [(1, min(i, 2))]))
    assert time.monotonic() - t0 < 1.0
    wait_until(lambda: pub.state == "offline")
    assert not pub.connected and pub.counters()["events_buffered"] == 3  # started + 2 changes
    pub.close(flush_timeout_s=0.2)
    counts = pub.counters()
    # the 3 buffered, and the live track's end that close() adds
    assert counts["events_dropped"] == 4 and counts["events_buffered"] == 0
    warnings = [r for r in caplog.records if r.name == "edge_agent.publish" and r.levelno == logging.WARNING]
    assert len(warnings) >= 1 and "retrying" in warnings[0].getMessage()


def test_aggregate_only_publishes_no_per_person_data(
    mosquitto: Mosquitto, publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    rec = recorder(mosquitto.port, "affectline/#")
    pub = publisher(mosquitto.port, aggregate_only=True, summary_s=0.3, stats_s=0.3, persons_hz=30)
    for i in range(10):
        pub.publish(frame_result("cam", i, [(1, 3), (2, -1)], ended=(2,) if i == 9 else ()))
        time.sleep(0.04)
    msgs = rec.wait(lambda m: {"summary", "stats"} <= {x.topic.rsplit("/", 1)[1] for x in m})
    kinds = {m.topic.rsplit("/", 1)[1] for m in msgs}
    assert kinds <= {"status", "summary", "stats"}
    summary = next(validate(m) for m in msgs if m.topic.endswith("summary"))
    assert summary["tracks_seen"] == 2 and summary["dominant"] == "happy"


def test_every_payload_matches_its_schema(
    mosquitto: Mosquitto, publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    rec = recorder(mosquitto.port, "#")
    pub = publisher(
        mosquitto.port, ("cam", "door"), summary_s=0.2, stats_s=0.2, persons_hz=30, home_assistant=True
    )
    wait_until(lambda: pub.connected)
    pub.camera_state(CameraStatus("door", "reconnecting", detail="rtsp timeout", reconnects=2))
    pub.stats({"fps": {"cam": np.float32(24.9)}, "stage_ms": {"detect": 3.5}})
    for i in range(12):
        pub.publish(
            frame_result("cam", i, [(1, i // 4), (2, -1)][: 2 - i // 8], ended=(2,) if i == 8 else ())
        )
        pub.publish(frame_result("door", i, []))
        time.sleep(0.03)
    kinds = {"status", "stats", "persons", "events", "summary", "state"}
    rec.wait(lambda m: {x.topic.rsplit("/", 1)[1] for x in m} >= kinds)
    pub.close()
    msgs = rec.wait(lambda m: any(x.topic.endswith("status") and x.json["state"] == "stopped" for x in m))
    ours = [m for m in msgs if not m.topic.startswith("homeassistant/")]
    for m in ours:
        validate(m)
    assert {m.topic.rsplit("/", 1)[1] for m in ours} == kinds
    stats = next(m.json for m in ours if m.topic.endswith("stats"))
    assert stats["fps"] == {"cam": pytest.approx(24.9, abs=1e-3)} and stats["mqtt"]["state"] == "online"
    # Home Assistant: one sensor per summary figure and camera, none per person.
    discovery = [m for m in msgs if m.topic.startswith("homeassistant/")]
    assert len(discovery) == 8 and all(m.json["state_topic"].endswith("/summary") for m in discovery)
    # Retained, so Home Assistant finds them whenever it (re)subscribes, also after the agent stopped.
    late = recorder(mosquitto.port, "homeassistant/#").wait(lambda m: len(m) == 8)
    assert all(m.retain for m in late) and {m.topic for m in late} == {m.topic for m in discovery}


def test_discovery_goes_to_the_configured_home_assistant_prefix(
    mosquitto: Mosquitto, publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    rec = recorder(mosquitto.port, "site3/ha/#")
    pub = publisher(mosquitto.port, ("door",), home_assistant=True, home_assistant_prefix="site3/ha")
    wait_until(lambda: pub.connected)
    msgs = rec.wait(lambda m: len(m) == 4)
    assert all(m.topic.startswith("site3/ha/sensor/") for m in msgs)
    assert all(m.json["state_topic"].endswith("/door/summary") for m in msgs)


@pytest.fixture
def auth_broker(mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> Mosquitto:
    """mosquitto with a password file (agent, watcher) and an ACL: agent may write only its prefix."""
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    for i, (user, password) in enumerate([("agent", "s3cret"), ("watcher", "w")]):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(passwd), user, password], check=True)
    acl.write_text("user agent\ntopic write affectline/#\n\nuser watcher\ntopic read #\n")
    return mosquitto_factory([f"password_file {passwd}", f"acl_file {acl}"])


def test_password_from_env_and_acl_limited_to_prefix(
    auth_broker: Mosquitto, recorder: Callable[..., Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFFECTLINE_TEST_MQTT_PASSWORD", "s3cret")
    cfg = parse_config(
        {
            "cameras": [{"name": "cam", "source": {"type": "file", "path": "x.mp4"}}],
            "mqtt": {
                "host": "127.0.0.1",
                "port": auth_broker.port,
                "username": "agent",
                "password": "${AFFECTLINE_TEST_MQTT_PASSWORD}",
                "summary_s": 0.2,
                **{k: v for k, v in FAST.items() if k != "summary_s"},
            },
        }
    ).mqtt
    rec = recorder(auth_broker.port, "#", username="watcher", password="w")
    pub = Publisher(cfg, "a1", ["cam"], CLASSES)
    pub.start()
    try:
        pub.camera_state(CameraStatus("cam", "online"))
        wait_until(lambda: pub.connected)
        pub.camera_state(CameraStatus("cam", "online", fps=5))
        pub.publish(frame_result("cam", 0, [(1, 1)]))
        msgs = rec.wait(
            lambda m: (
                {"status", "state", "events", "persons", "summary"} <= {x.topic.split("/")[-1] for x in m}
            )
        )
    finally:
        pub.close()
    assert all(m.topic.startswith("affectline/a1/") for m in msgs)


@pytest.mark.parametrize("retries", [0, 2])
def test_bad_password_fails_cleanly_after_retries(
    auth_broker: Mosquitto, caplog: pytest.LogCaptureFixture, retries: int
) -> None:
    cfg = Mqtt(
        host="127.0.0.1",
        port=auth_broker.port,
        username="agent",
        password="wrong",
        connect_retries=retries,
        **FAST,
    )
    pub = Publisher(cfg, "a1", ["cam"], CLASSES)
    pub.start()
    wait_until(lambda: pub.state == "failed")
    pub.publish(frame_result("cam", 0, [(1, 1)]))  # the pipeline keeps going
    pub.close(flush_timeout_s=0.2)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert (
        len(errors) == 1
        and "not authorized" in errors[0].lower()
        and f"({retries + 1} attempts)" in errors[0]
    )
    # track_started, and its track_ended at close
    assert pub.counters()["events_dropped"] == 2 and pub.state == "failed"


# ----------------------------------------------------------------------------- TLS
def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _issue(d: Path, name: str, ca: str, cn: str, san: str | None = None) -> None:
    """EC key + certificate ``name`` signed by CA ``ca`` (files ``{name}.key``/``{name}.crt`` in ``d``)."""
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", d / f"{name}.key", "-subj", f"/CN={cn}", "-out", d / f"{name}.csr")  # fmt: skip
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / f"{ca}.crt", "-CAkey", d / f"{ca}.key",
             "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", d / f"{name}.crt")  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two CAs: ``ca`` signs a server cert for 127.0.0.1 and a client cert, ``other_ca`` a rogue client."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed (run scripts/install-mosquitto.sh)")
    d = tmp_path_factory.mktemp("certs")
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", d / f"{ca}.key", "-subj", f"/CN=affectline test {ca}", "-days", "1",
                 "-out", d / f"{ca}.crt")  # fmt: skip
    _issue(d, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    _issue(d, "client", "ca", "affectline-agent")
    _issue(d, "rogue", "other_ca", "affectline-agent")
    return d


@pytest.fixture
def tls_broker(mosquitto_factory: Callable[..., Mosquitto], certs: Path) -> Mosquitto:
    return mosquitto_factory(
        [
            f"cafile {certs / 'ca.crt'}",
            f"certfile {certs / 'server.crt'}",
            f"keyfile {certs / 'server.key'}",
            "require_certificate true",
        ]
    )


def test_tls_with_client_certificate(
    tls_broker: Mosquitto, certs: Path, publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    client = {
        "ca_certs": str(certs / "ca.crt"),
        "certfile": str(certs / "client.crt"),
        "keyfile": str(certs / "client.key"),
    }
    rec = recorder(tls_broker.port, "affectline/#", **client)
    pub = publisher(tls_broker.port, tls=Tls(**client))
    pub.publish(frame_result("cam", 0, [(1, 1)]))
    msgs = rec.wait(lambda m: {x.topic.rsplit("/", 1)[1] for x in m} >= {"status", "events"})
    assert validate(msgs[0])["state"] == "online"


@pytest.mark.parametrize(
    "tls, reason",
    [
        ({"ca_certs": "missing-ca.crt"}, "mqtt.tls"),  # unreadable file: fails at start, no retries
        (
            {"ca_certs": "other_ca.crt", "certfile": "client.crt", "keyfile": "client.key"},
            "CERTIFICATE_VERIFY_FAILED",
        ),
        # the broker rejects a client certificate from another CA
        ({"ca_certs": "ca.crt", "certfile": "rogue.crt", "keyfile": "rogue.key"}, "before CONNACK"),
    ],
)
def test_tls_bad_certificates_fail_cleanly(
    tls_broker: Mosquitto, certs: Path, caplog: pytest.LogCaptureFixture, tls: dict[str, str], reason: str
) -> None:
    cfg = Mqtt(
        host="127.0.0.1", port=tls_broker.port, tls=Tls(**{k: str(certs / v) for k, v in tls.items()}), **FAST
    )
    pub = Publisher(cfg, "a1", ["cam"], CLASSES)
    pub.start()
    wait_until(lambda: pub.state == "failed")
    pub.publish(frame_result("cam", 0, [(1, 1)]))
    pub.close(flush_timeout_s=0.2)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and reason in errors[0]


def test_write_failure_while_pumping_is_an_outage_not_a_failure(
    mosquitto: Mosquitto,
    publisher: Any,
    recorder: Callable[..., Recorder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection that dies while queued messages are handed to paho (the write fails inside
    `publish`) leaves them with an error code; paho keeps and resends them after the reconnect.
    The publisher used to read that code as a bug and switch MQTT off for the rest of the run."""
    hand_over = Publisher._hand_over
    armed: list[bool] = []

    def reset_then_hand_over(self: Publisher, msg: Message) -> None:
        if armed and msg.kind == "events":
            armed.clear()
            assert self._client is not None
            sock = self._client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_WR)  # this write fails (EPIPE): a network reset
        hand_over(self, msg)

    monkeypatch.setattr(Publisher, "_hand_over", reset_then_hand_over)
    rec = recorder(mosquitto.port, "affectline/a1/cam/events")
    pub = publisher(mosquitto.port)
    wait_until(lambda: pub.connected)
    pub.publish(frame_result("cam", 0, [(0, 0)]))
    rec.wait(lambda m: len(m) == 1)
    wait_until(lambda: pub.counters()["events_sent"] == 1)
    armed.append(True)
    tracks = [(0, 0)]
    for i in range(1, 6):
        tracks = [*tracks, (i, 0)]
        pub.publish(frame_result("cam", i, tracks))
    msgs = rec.wait(lambda m: {x.json["seq"] for x in m} >= set(range(6)), timeout=10)
    assert not armed and pub.state == "online"
    assert {validate(m)["seq"] for m in msgs} == set(range(6))
    wait_until(lambda: pub.counters()["events_buffered"] == 0)
    assert pub.counters()["events_sent"] == 6


def test_state_superseded_during_an_outage_is_not_left_retained(
    mosquitto_factory: Callable[..., Mosquitto], publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    """The broker hangs while a camera reports `reconnecting` (handed to paho, never acknowledged),
    dies, and the camera is `online` again before the agent reconnects. paho re-sends its backlog
    after the CONNACK callback; the newest state must still be the one the broker retains."""
    broker = mosquitto_factory()
    pub = publisher(broker.port)
    wait_until(lambda: pub.connected)
    pub.camera_state(CameraStatus("cam", "online", fps=25.0, frames=10, t_wall=time.time()))
    wait_until(lambda: pub.counters()["state_sent"] == 1)
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)  # hangs: what goes out now is never acknowledged
    pub.camera_state(CameraStatus("cam", "reconnecting", detail="camera lost", t_wall=time.time()))
    wait_until(lambda: len(pub._outbox) == 0)  # handed to paho
    broker.proc.kill()
    broker.proc.wait()
    broker.proc = None
    wait_until(lambda: not pub.connected)
    pub.camera_state(CameraStatus("cam", "online", fps=24.0, frames=99, t_wall=time.time()))
    broker.start()  # no persistence: only what the agent sends now is retained
    wait_until(lambda: pub.connected and pub.counters()["state_buffered"] == 0, timeout=10)
    late = recorder(broker.port, "affectline/a1/cam/state")
    retained = validate(late.wait(lambda m: len(m) >= 1)[0])
    assert (retained["state"], retained["frames"]) == ("online", 99)


def test_close_ends_live_tracks_before_stopped(
    mosquitto: Mosquitto, publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    """A clip that ends, or a SIGTERM, leaves tracks live: each `track_started` still gets its end."""
    rec = recorder(mosquitto.port, "affectline/a1/#")
    pub = publisher(mosquitto.port)
    wait_until(lambda: pub.connected)
    pub.publish(frame_result("cam", 0, [(1, 3), (2, -1)], t_wall=1_700_000_123.5))
    pub.close()
    msgs = rec.wait(lambda m: any(x.json.get("state") == "stopped" for x in m if x.topic.endswith("/status")))
    flow = [
        (p["event"], p["track"], p["label"], p["frame_ts"]) if m.topic.endswith("/events") else p["state"]
        for m in msgs
        if m.topic.endswith(("/events", "/status"))
        for p in [validate(m)]
    ]
    started = [f[1] for f in flow if f[0] == "track_started"]
    assert flow == [
        "online",
        ("track_started", started[0], "happy", "2023-11-14T22:15:23.500Z"),
        ("track_started", started[1], None, "2023-11-14T22:15:23.500Z"),
        ("track_ended", started[0], "happy", "2023-11-14T22:15:23.500Z"),
        ("track_ended", started[1], None, "2023-11-14T22:15:23.500Z"),
        "stopped",
    ]


def test_summary_without_frames_reports_nobody(
    mosquitto: Mosquitto, publisher: Any, recorder: Callable[..., Recorder]
) -> None:
    """The last count of a camera that stopped sending frames is not repeated as if still seen."""
    rec = recorder(mosquitto.port, "affectline/a1/cam/summary")
    pub = publisher(mosquitto.port, summary_s=0.3)
    wait_until(lambda: pub.connected)
    pub.publish(frame_result("cam", 0, [(1, 3), (2, 3)]))

    def seen_then_one_more(m: list[Received]) -> bool:
        counts = [x.json["persons_max"] for x in m]
        return 2 in counts and counts.index(2) + 1 < len(counts)

    msgs = rec.wait(seen_then_one_more, timeout=5)
    i = [m.json["persons_max"] for m in msgs].index(2)
    first, second = validate(msgs[i]), validate(msgs[i + 1])
    assert (first["persons"], first["persons_max"]) == (2, 2)
    assert (second["persons"], second["persons_mean"], second["valence"]) == (0, 0.0, None)
