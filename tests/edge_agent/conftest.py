"""MQTT test fixtures: real mosquitto brokers, recording subscribers and synthetic frame results.

Each test starts its own mosquitto on a free loopback port with a generated config, so it can
stop and restart the broker, use password files, ACLs and TLS without touching other tests.
Install mosquitto with ``scripts/install-mosquitto.sh``; tests that need it skip with that hint when absent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_agent.structures import Detections, Frame, FrameResult
from train.data.records import CLASSES as TRAIN_CLASSES


def asks_exact_int8(options: Any) -> bool:
    """Whether ONNX Runtime session options ask for the exact INT8 kernel (``edge_agent.cpu``)."""
    try:
        return bool(options.get_session_config_entry("session.x64quantprecision") == "1")
    except RuntimeError:  # ONNX Runtime: "does not have configuration with key"
        return False


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CLASSES = TRAIN_CLASSES  # the model's classes: angry, disgust, fear, happy, sad, surprise, neutral


@dataclass
class Mosquitto:
    """One mosquitto process; `stop` and `start` keep the port (for restart tests).

    Attributes:
        workdir: Holds the config file, log and persistence database.
        lines: Extra config lines for the listener (auth, ACL, TLS).
        persistence: Keep sessions, queued QoS 1 messages and retained ones across restarts.
    """

    workdir: Path
    lines: Sequence[str] = ()
    persistence: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    *self.lines,
                    "allow_anonymous "
                    + ("false" if any(x.startswith("password_file") for x in self.lines) else "true"),
                    f"persistence {'true' if self.persistence else 'false'}",
                    f"persistence_location {self.workdir}/",
                    "max_queued_messages 100000",
                    f"log_dest file {self.workdir}/mosquitto.log",
                    # As root, mosquitto would switch to user 'mosquitto', who cannot read pytest's tmp dirs.
                    *(["user root"] if os.geteuid() == 0 else []),
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                ]
            )
            + "\n"
        )
        self.proc = subprocess.Popen(
            [_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err} {self.log()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence database), then wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text() if path.exists() else ""


def _mosquitto() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        pytest.skip("mosquitto not installed (run scripts/install-mosquitto.sh)")
    return path


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """``make(lines=(), persistence=False) -> Mosquitto`` (started); all are stopped at teardown."""
    brokers: list[Mosquitto] = []

    def make(lines: Sequence[str] = (), persistence: bool = False) -> Mosquitto:
        workdir = tmp_path / f"mosquitto{len(brokers)}"
        workdir.mkdir()
        broker = Mosquitto(workdir, lines, persistence)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """An anonymous mosquitto on a free loopback port."""
    return mosquitto_factory()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class Recorder:
    """A paho subscriber that records every message it gets (thread-safe) and waits for conditions."""

    def __init__(
        self, port: int, topics: str = "#", client_id: str = "", clean: bool = True, **tls_auth: Any
    ):
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"rec-{time.monotonic_ns()}",
            clean_session=clean,
        )
        if "username" in tls_auth:
            self.client.username_pw_set(tls_auth["username"], tls_auth.get("password"))
        if "ca_certs" in tls_auth:
            self.client.tls_set(tls_auth["ca_certs"], tls_auth.get("certfile"), tls_auth.get("keyfile"))
        self.client.on_connect = lambda c, *_: c.subscribe(topics, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)  # after a broker restart in the tests
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise TimeoutError(f"subscriber could not subscribe on port {port}")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def on(self, suffix: str) -> list[Received]:
        """Messages whose topic ends with ``suffix``."""
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait(self, pred: Callable[[list[Received]], bool], timeout: float = 5.0) -> list[Received]:
        """Wait until ``pred(messages)`` holds; returns the messages (raises TimeoutError otherwise)."""
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self.messages), timeout):
                raise TimeoutError(
                    f"condition not met in {timeout} s; got {[m.topic for m in self.messages]}"
                )
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()  # first: wakes paho's loop thread, so loop_stop does not wait ~1 s
        self.client.loop_stop()


@pytest.fixture
def recorder() -> Iterator[Callable[..., Recorder]]:
    """``make(port, topics='#', **kw) -> Recorder``; all are closed at teardown."""
    made: list[Recorder] = []

    def make(port: int, topics: str = "#", **kw: Any) -> Recorder:
        made.append(Recorder(port, topics, **kw))
        return made[-1]

    yield make
    for rec in made:
        rec.close()


def frame_result(
    camera: str,
    index: int,
    tracks: Sequence[tuple[int, int]],
    ended: Sequence[int] = (),
    t_wall: float = 1_700_000_000.0,
    size: tuple[int, int] = (64, 48),
) -> FrameResult:
    """A FrameResult with the smoothed columns the publisher reads.

    Args:
        tracks: (tracker_id, label) per person; label -1 = not reported yet.
        size: (width, height) of the (tiny, black) image; boxes are laid out left to right.
    """
    w, h = size
    n = len(tracks)
    xyxy = np.array(
        [[i * w / (n + 1), h * 0.1, (i + 1) * w / (n + 1), h * 0.9] for i in range(n)], np.float32
    )
    rng = np.random.default_rng(index)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=n).astype(np.float32)
    det = Detections(
        xyxy=xyxy.reshape(n, 4),
        confidence=np.full(n, 0.9, np.float32),
        tracker_id=np.array([t for t, _ in tracks], np.int64),
        data={
            "probs": probs.reshape(n, len(CLASSES)),
            "valence_arousal": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
            "label": np.array([lab for _, lab in tracks], np.int64),
            "confidence": rng.uniform(0, 1, n).astype(np.float32),
            "seconds_observed": np.full(n, index / 25.0, np.float32),
        },
    )
    frame = Frame(
        camera, np.zeros((h, w, 3), np.uint8), index, t_mono=index / 25.0, t_wall=t_wall + index / 25.0
    )
    return FrameResult(frame, det, labels=CLASSES, ended_tracks=tuple(ended))
