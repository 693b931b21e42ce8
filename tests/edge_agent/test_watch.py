"""``affectline watch``: message parsing, rendering, and the command against a real broker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.cli import build_parser
from edge_agent.config import Mqtt
from edge_agent.publish import Publisher
from edge_agent.structures import CameraStatus
from edge_agent.watch import View, Watcher, render
from tests.edge_agent.conftest import CLASSES, Mosquitto, frame_result, free_port

PERSON = {
    "track": "3fa9c2d1",
    "box": [0.1, 0.2, 0.3, 0.4],
    "label": "happy",
    "probs": [0.1] * 7,
    "valence": 0.42,
    "arousal": -0.13,
    "confidence": 0.71,
    "seen_s": 12.3,
}


def _msg(body: dict[str, object]) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "topic, payload",
    [
        ("other/a1/status", _msg({"state": "online"})),  # another prefix
        ("affectline/a1/status", b"not json"),
        ("affectline/a1/status", b"[1, 2]"),  # JSON but not an object
        ("affectline/a1/cam/unknown", _msg({})),
        ("affectline/a1/x/cam/persons", _msg({})),  # too deep
    ],
)
def test_view_ignores_what_it_does_not_understand(topic: str, payload: bytes) -> None:
    view = View("affectline")
    view.update(topic, payload)
    assert view.version == 0 and not view.status and not view.cameras


def test_view_filters_camera() -> None:
    view = View("affectline", camera="door")
    view.update("affectline/a1/cam/persons", _msg({"persons": [PERSON]}))
    view.update("affectline/a1/door/state", _msg({"state": "online", "fps": 12.0}))
    assert list(view.cameras) == [("a1", "door")]


def test_render_empty_and_full() -> None:
    view = View("plant/line1")
    assert "waiting for agents on plant/line1/#" in render(view)
    view.update("plant/line1/a1/status", _msg({"state": "online", "session": "0123abcd"}))
    view.update("plant/line1/a1/cam/state", _msg({"state": "online", "fps": 24.94, "drops": 3}))
    view.update("plant/line1/a1/cam/persons", _msg({"persons": [PERSON, {**PERSON, "label": None}]}))
    event = {"ts": "2025-01-31T12:00:01.123Z", "event": "emotion_changed", "track": "3fa9c2d1"}
    view.update("plant/line1/a1/cam/events", _msg({**event, "label": "angry", "previous": "neutral"}))
    text = render(view)
    assert "agent a1: online  (session 0123abcd)" in text
    assert "a1/cam: online  fps 24.9  drops 3" in text
    assert "3fa9c2d1  happy        0.71  +0.42  -0.13   12.3s  0.10 0.20 0.30 0.40" in text
    assert "3fa9c2d1  -" in text  # no label yet
    assert "12:00:01.123  cam          3fa9c2d1  emotion_changed  neutral -> angry" in text


def test_watch_shows_live_persons(mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    pub = Publisher(
        Mqtt(host="127.0.0.1", port=mosquitto.port, persons_hz=10), "a1", ["cam", "door"], CLASSES
    )
    pub.start()
    stop = threading.Event()

    def feed() -> None:
        i = 0
        while not stop.is_set():
            # A new track every 10 frames, so events also happen while watching.
            pub.publish(frame_result("cam", i, [(10 + i // 10, 3), (2, -1)]))
            pub.publish(frame_result("door", i, [(3, 4)]))
            i += 1
            time.sleep(0.05)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        pub.camera_state(CameraStatus("cam", "online", fps=20.0))
        args = build_parser().parse_args(
            [
                "watch",
                "--camera",
                "cam",
                "--host",
                "127.0.0.1",
                "--port",
                str(mosquitto.port),
                "--seconds",
                "1.5",
            ]
        )
        assert args.func(args) == 0
    finally:
        stop.set()
        feeder.join()
        pub.close()
    out = capsys.readouterr().out
    assert "agent a1: online" in out and "a1/cam: online  fps 20.0" in out
    assert "happy" in out and "track_started" in out
    assert "a1/door" not in out  # --camera filter


def test_watch_unreachable_broker(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    args = build_parser().parse_args(["watch", "--port", str(port), "--seconds", "1"])
    assert args.func(args) == 1
    assert f"cannot watch MQTT broker 127.0.0.1:{port}: Connection refused" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config, extra, err",
    [
        ("mqtt: {host: embedded, port: 0}\n", [], "--port 0: need the broker's port"),
        (
            "mqtt: {port: 70000}\n",
            [],
            "agent.yaml: 1 problem(s)\n  mqtt.port: value 70000",
        ),  # validate's format
        (None, ["--port", "0"], "--port 0"),
    ],
)
def test_watch_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str | None, extra: list[str], err: str
) -> None:
    argv = ["watch", *extra, "--seconds", "0.1"]
    if config is not None:
        path = tmp_path / "agent.yaml"
        path.write_text("cameras: [{name: cam, source: {type: file, path: x.mp4}}]\n" + config)
        argv.insert(1, str(path))
    args = build_parser().parse_args(argv)
    assert args.func(args) == 2
    assert err in capsys.readouterr().err


@pytest.mark.parametrize(
    "persons",
    [
        None,
        {"persons": None},
        {"persons": [1]},
        {"persons": "x"},
    ],
)
def test_view_ignores_malformed_persons(persons: dict[str, object] | None) -> None:
    view = View("affectline")
    view.update("affectline/a1/cam/persons", _msg(persons or {}))
    assert view.version == 0 and not view.cameras


@pytest.mark.parametrize(
    "person",
    [
        {"track": None},
        {"box": None},
        {"box": "0 0 1 1"},
        {"label": 3, "confidence": "high"},
        {},
    ],
)
def test_render_survives_odd_person_fields(person: dict[str, object]) -> None:
    view = View("affectline")
    view.update("affectline/a1/cam/persons", _msg({"persons": [{**PERSON, **person}]}))
    assert view.version == 1 and "a1/cam" in render(view)


def test_watch_unreadable_tls_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "cameras: [{name: cam, source: {type: file, path: x.mp4}}]\n"
        f"mqtt: {{host: 127.0.0.1, port: 8883, tls: {{ca_certs: {tmp_path / 'missing-ca.crt'}}}}}\n"
    )
    args = build_parser().parse_args(["watch", str(path), "--seconds", "0.1"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mqtt.tls: ") and "No such file" in err and "Traceback" not in err


def test_watch_says_when_the_broker_is_gone(mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory()
    watcher = Watcher(Mqtt(), "127.0.0.1", broker.port)
    watcher.connect()
    try:
        broker.stop()
        deadline = time.monotonic() + 5
        while watcher.view.lost is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watcher.view.lost is not None
        assert render(watcher.view).startswith("broker connection lost (")
        broker.start()  # same port: paho reconnects by itself
        deadline = time.monotonic() + 15
        while watcher.view.lost is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.view.lost is None and "connection lost" not in render(watcher.view)
    finally:
        watcher.close()
