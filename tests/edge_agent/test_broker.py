"""Embedded (amqtt) broker: loopback-only, retained messages, Last Will, and the publisher on top."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest

from edge_agent.broker import LOOPBACK, EmbeddedBroker
from edge_agent.config import Mqtt
from edge_agent.publish import Publisher
from tests.edge_agent.conftest import CLASSES, Recorder, frame_result, free_port


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(0)
    b.start()
    yield b
    b.stop()


def _connected_client(port: int, will: tuple[str, bytes] | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{time.monotonic_ns()}")
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.connect(LOOPBACK, port)
    client.loop_start()
    return client


@pytest.mark.parametrize("port", [-1, 65536])
def test_port_out_of_range(port: int) -> None:
    with pytest.raises(ValueError, match=f"port must be in \\[0, 65535\\], got {port}"):
        EmbeddedBroker(port)


def test_listens_on_loopback_only(broker: EmbeddedBroker) -> None:
    assert broker.port > 0
    with socket.create_connection((LOOPBACK, broker.port), timeout=2):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP connect sends nothing; it picks the outward interface
            outward = probe.getsockname()[0]
        except OSError:
            outward = "127.0.0.1"
    if outward.startswith("127."):
        pytest.skip("no non-loopback IPv4 address on this machine")
    with pytest.raises(OSError), socket.create_connection((outward, broker.port), timeout=2):
        pass


def test_retained_and_last_will(broker: EmbeddedBroker, recorder: Callable[..., Recorder]) -> None:
    agent = _connected_client(broker.port, will=("t/status", b"offline"))
    agent.publish("t/status", b"online", qos=1, retain=True).wait_for_publish(5)
    late = recorder(broker.port, "t/#")
    assert late.wait(lambda m: len(m) == 1)[0].payload == b"online"
    agent.loop_stop()
    sock = agent.socket()
    assert sock is not None
    sock.close()  # die without DISCONNECT: the broker must publish the will
    assert late.wait(lambda m: len(m) == 2)[1].payload == b"offline"


def test_port_taken_is_reported() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot listen on {LOOPBACK}:{port}"):
            EmbeddedBroker(port).start()


@pytest.mark.parametrize("fault", ["raises", "hangs"])
def test_failed_boot_releases_the_port(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """amqtt failing (or hanging) after the listener is bound must not leave the port taken."""
    import asyncio

    from amqtt.broker import Broker

    async def broken_start(self: Broker) -> None:
        if fault == "hangs":
            await asyncio.sleep(3600)
        raise RuntimeError("amqtt could not start")

    monkeypatch.setattr(Broker, "start", broken_start)
    port = free_port()
    with pytest.raises(RuntimeError, match=f"cannot listen on {LOOPBACK}:{port}"):
        EmbeddedBroker(port, start_timeout_s=1.0).start()
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, port), timeout=1).close()  # nobody listens any more


def test_stop_is_idempotent() -> None:
    b = EmbeddedBroker(0)
    b.stop()  # never started
    b.start()
    port = b.port
    b.stop()
    b.stop()
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, port), timeout=1).close()


def test_publisher_with_embedded_broker(recorder: Callable[..., Recorder]) -> None:
    pub = Publisher(Mqtt(host="embedded", port=0, summary_s=0.2), "demo", ["cam"], CLASSES)
    pub.start()
    try:
        host, port = pub.broker_address
        assert (host, pub.state) == (LOOPBACK, "connecting") or pub.connected
        rec = recorder(port, "affectline/#")
        pub.publish(frame_result("cam", 0, [(1, 1)]))
        msgs = rec.wait(lambda m: {"status", "events", "summary"} <= {x.topic.rsplit("/", 1)[1] for x in m})
        assert next(m.json for m in msgs if m.topic.endswith("status"))["state"] == "online"
    finally:
        pub.close()
    with pytest.raises(OSError):  # close() stops the embedded broker
        socket.create_connection((LOOPBACK, port), timeout=1).close()


def test_publisher_survives_taken_embedded_port(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, free_port()))
        taken.listen()
        pub = Publisher(Mqtt(host="embedded", port=taken.getsockname()[1]), "demo", ["cam"], CLASSES)
        pub.start()
        pub.publish(frame_result("cam", 0, [(1, 1)]))
        pub.close()
    # track_started, and its track_ended at close
    assert pub.state == "failed" and pub.counters()["events_dropped"] == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot listen" in errors[0]
