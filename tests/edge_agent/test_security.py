"""Security properties of the agent, checked on the real thing (docs/security.md states the threat model).

- the production example config has TLS and authentication on, secrets only from the environment;
- the metrics endpoint and the embedded broker listen on loopback unless configured otherwise;
- no secret (MQTT password, RTSP credentials) appears in any log line at DEBUG level, in any MQTT
  payload or in a config error message;
- the agent's MQTT client subscribes to no topic (nothing on the network can steer it).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.broker import EmbeddedBroker
from edge_agent.config import ConfigError, Metrics, load_config, parse_config
from edge_agent.metrics import MetricsServer
from tests.edge_agent.conftest import Mosquitto
from tests.edge_agent.faultkit import ROOT, finish, rtsp_server, start_agent, states
from tests.edge_agent.test_app import write_config
from tests.rtsp_server import RtspServer

__all__ = ["rtsp_server"]  # the fixture, imported for pytest

PRODUCTION = ROOT / "config.production.yaml"
PRODUCTION_ENV = ("AFFECTLINE_MQTT_USER", "AFFECTLINE_MQTT_PASSWORD", "CAM_USER", "CAM_PASSWORD")
MQTT_PASSWORD = "Mqtt-S3cret-5"
CAM_PASSWORD = "Cam-S3cret-9"
WRONG_CAM_PASSWORD = "Wrong-S3cret-7"


# ----------------------------------------------------------------------------- configuration
def test_production_config_has_tls_and_auth_and_local_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PRODUCTION_ENV:
        monkeypatch.setenv(name, f"value-of-{name}")
    cfg = load_config(PRODUCTION)
    assert cfg.mqtt.host != "embedded" and cfg.mqtt.tls is not None and not cfg.mqtt.tls.insecure
    assert cfg.mqtt.tls.ca_certs and cfg.mqtt.port == 8883
    assert cfg.mqtt.username == "value-of-AFFECTLINE_MQTT_USER"
    assert cfg.mqtt.password == "value-of-AFFECTLINE_MQTT_PASSWORD"
    assert cfg.metrics.host == "127.0.0.1"
    assert cfg.output.preview.path is None and cfg.mqtt.aggregate_only


def test_production_config_takes_secrets_only_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PRODUCTION_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as exc:
        load_config(PRODUCTION)
    missing = " ".join(exc.value.problems)
    assert all(f"environment variable {name} is not set" in missing for name in PRODUCTION_ENV)


@pytest.mark.parametrize(
    ("mqtt", "camera_url", "secret"),
    [
        ({"password": 12345678}, "rtsp://cam/x", "12345678"),  # wrong type: the value must not be echoed
        ({"password": ["Pw-in-a-list"]}, "rtsp://cam/x", "Pw-in-a-list"),
        ({}, "http://admin:Url-S3cret@cam/x", "Url-S3cret"),  # wrong scheme: URL shown redacted
        ({}, "https://admin:p@ss-Url-S3cret@cam/x", "ss-Url-S3cret"),  # '@' inside the password
    ],
)
def test_config_errors_never_echo_secrets(mqtt: dict[str, Any], camera_url: str, secret: str) -> None:
    data = {
        "cameras": [{"name": "c", "source": {"type": "rtsp", "url": camera_url}}],
        "mqtt": {"host": "b", **mqtt},
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert exc.value.problems and all(secret not in line for line in exc.value.problems), exc.value.problems


# ----------------------------------------------------------------------------- listening sockets
def listen_address(port: int) -> str:
    """The local address a LISTEN socket of this process is bound to, from /proc/net/tcp{,6}."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                return socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr
    raise AssertionError(f"nothing listens on port {port}")


def test_metrics_endpoint_binds_localhost_by_default() -> None:
    server = MetricsServer(Metrics(port=0), [])
    server.start()
    try:
        assert Metrics().host == "127.0.0.1" and listen_address(server.port) == "127.0.0.1"
    finally:
        server.close()


def test_embedded_broker_binds_localhost() -> None:
    broker = EmbeddedBroker(0)
    broker.start()
    try:
        assert listen_address(broker.port) == "127.0.0.1"
    finally:
        broker.stop()


# ----------------------------------------------------------------------------- the running agent
@pytest.fixture
def auth_broker(tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """mosquitto with passwords, logging every SUBSCRIBE (to see what the agent subscribes to)."""
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate((("agent", MQTT_PASSWORD), ("watcher", "w"))):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(passwd), user, password], check=True)
    return mosquitto_factory([f"password_file {passwd}", "log_type subscribe"])


def test_no_secret_in_logs_or_messages_and_agent_subscribes_to_nothing(
    tmp_path: Path,
    auth_broker: Mosquitto,
    recorder: Callable[..., Any],
    rtsp_server: Callable[..., RtspServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = rtsp_server(user="camuser", password=CAM_PASSWORD)
    monkeypatch.setenv("AFFECTLINE_TEST_MQTT_PASSWORD", MQTT_PASSWORD)  # the agent inherits it
    rec = recorder(auth_broker.port, "#", client_id="security-watcher", username="watcher", password="w")
    cameras: list[dict[str, Any]] = [
        {
            "name": "good",
            "source": {"type": "rtsp", "url": server.url("camuser", CAM_PASSWORD)},
            "fps_cap": 5,
        },
        {"name": "bad", "source": {"type": "rtsp", "url": server.url("camuser", WRONG_CAM_PASSWORD)}},
    ]
    cfg = write_config(
        tmp_path,
        auth_broker.port,
        cameras,
        username="agent",
        password="${AFFECTLINE_TEST_MQTT_PASSWORD}",
        client_id="agent-under-test",
    )
    proc = start_agent(cfg)  # with -v: DEBUG, every log line there is
    try:
        rec.wait(lambda m: "online" in states(m, "/good/state") and len(states(m, "/bad/state")) >= 2, 60)
        time.sleep(1.0)
    finally:
        log = finish(proc)
    assert proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    payloads = "\n".join(m.payload.decode() for m in rec.messages)
    for secret in (MQTT_PASSWORD, CAM_PASSWORD, WRONG_CAM_PASSWORD, "camuser"):
        assert secret not in log and secret not in payloads, secret
    assert "rtsp://***@127.0.0.1" in log and "rtsp://***@127.0.0.1" in payloads  # redacted, not missing
    broker_log = auth_broker.log()
    # mosquitto's 'log_type subscribe' writes "<time>: <client id> <qos> <topic filter>" per SUBSCRIBE.
    subscribe = re.compile(r"^\d+: (\S+) [012] (.+)$", re.MULTILINE)
    subscribers = {client for client, _ in subscribe.findall(broker_log)}
    assert "security-watcher" in subscribers  # the log does show subscriptions
    assert "as agent-under-test" in broker_log and "agent-under-test" not in subscribers
