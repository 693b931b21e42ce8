"""``affectline watch``: subscribe to agents and show a live per-person table.

This is how a user checks that an agent works: it reads only what any subscriber gets (the
topics in docs/mqtt.md), so it also shows what a factory system would receive.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.broker import LOOPBACK
from edge_agent.config import ConfigError, Mqtt, load_config

REFRESH_S = 0.5
CONNECT_TIMEOUT_S = 5.0
CLEAR = "\x1b[H\x1b[2J"


@dataclass
class View:
    """The latest payload per agent and camera, built from messages under ``prefix``.

    Attributes:
        prefix: Topic prefix (``mqtt.prefix``).
        camera: Show only this camera (None = all).
    """

    prefix: str
    camera: str | None = None
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    cameras: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    lost: str | None = None  # why the broker connection is down (paho reconnects), None while up
    version: int = 0

    def update(self, topic: str, payload: bytes | bytearray) -> None:
        """Take one message; ignores topics and payloads it does not understand."""
        parts = topic[len(self.prefix) + 1 :].split("/") if topic.startswith(self.prefix + "/") else []
        try:
            body = json.loads(payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        if len(parts) == 2 and parts[1] == "status":
            self.status[parts[0]] = body
        elif len(parts) == 3 and parts[2] in ("persons", "state", "summary", "events"):
            agent, camera, kind = parts
            if self.camera is not None and camera != self.camera:
                return
            if kind == "events":
                self.events.append(_event_line(camera, body))
            elif kind == "persons" and not _person_list(body.get("persons")):
                return  # another publisher's or a broken payload: the table needs a list of objects
            else:
                self.cameras.setdefault((agent, camera), {})[kind] = body
        else:
            return
        self.version += 1

    def link_changed(self, lost: str | None) -> None:
        """Record the broker connection going down (``lost`` says why) or coming back (None)."""
        self.lost = lost
        self.version += 1


def _person_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(p, dict) for p in value)


def _event_line(camera: str, e: dict[str, Any]) -> str:
    change = (
        f"{e.get('previous')} -> {e.get('label')}" if e.get("event") == "emotion_changed" else e.get("label")
    )
    return f"{str(e.get('ts', ''))[11:23]}  {camera:<12} {e.get('track', '?')}  {e.get('event')}  {change}"


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def render(view: View) -> str:
    """The table as text: agents, then per camera its state and one row per person, then events."""
    lines = (
        [f"broker connection lost ({view.lost}); reconnecting, the data below is old"] if view.lost else []
    )
    for agent, status in sorted(view.status.items()):
        lines.append(f"agent {agent}: {status.get('state', '?')}  (session {status.get('session', '?')})")
    if not view.status:
        lines.append(f"waiting for agents on {view.prefix}/# ...")
    header = f"  {'track':<9} {'label':<11} {'conf':>5} {'val':>6} {'aro':>6} {'seen':>7}  box (x1 y1 x2 y2)"
    for (agent, camera), kinds in sorted(view.cameras.items()):
        state, summary, persons = kinds.get("state", {}), kinds.get("summary", {}), kinds.get("persons")
        lines.append("")
        lines.append(
            f"{agent}/{camera}: {state.get('state', '?')}  fps {_num(state.get('fps'), '.1f')}  "
            f"drops {state.get('drops', '-')}  persons {summary.get('persons', '-')}  "
            f"mood {summary.get('dominant') or '-'}"
        )
        if persons is None:
            continue
        lines.append(header)
        for p in persons.get("persons", []):
            box = p.get("box")
            box = " ".join(_num(x, ".2f") for x in box) if isinstance(box, list) else "-"
            lines.append(
                f"  {str(p.get('track', '?')):<9} {str(p.get('label') or '-'):<11} "
                f"{_num(p.get('confidence'), '5.2f')} "
                f"{_num(p.get('valence'), '+6.2f')} {_num(p.get('arousal'), '+6.2f')} "
                f"{_num(p.get('seen_s'), '6.1f')}s  {box}"
            )
    if view.events:
        lines += ["", "recent events:", *(f"  {e}" for e in view.events)]
    return "\n".join(lines)


class Watcher:
    """A subscriber that keeps a `View` up to date (paho's network thread writes, readers lock).

    Args:
        cfg: The ``mqtt`` section (prefix, credentials, TLS).
        host: Broker host.
        port: Broker port.
        camera: Show only this camera.
    """

    def __init__(self, cfg: Mqtt, host: str, port: int, camera: str | None = None):
        self.view = View(cfg.prefix, camera)
        self.lock = threading.Lock()
        self._host, self._port = host, port
        self._connack: tuple[bool, str] | None = None
        self._connected = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"affectline-watch-{secrets.token_hex(4)}"
        )
        if cfg.username is not None:
            self._client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            self._client.tls_set(
                ca_certs=cfg.tls.ca_certs, certfile=cfg.tls.certfile, keyfile=cfg.tls.keyfile
            )
            self._client.tls_insecure_set(cfg.tls.insecure)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connack = (not reason.is_failure, str(reason))
        if not reason.is_failure:
            client.subscribe(f"{self.view.prefix}/#", qos=1)
            with self.lock:
                if self.view.lost is not None:
                    self.view.link_changed(None)
        self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self.lock:
            self.view.link_changed(str(reason))

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.view.update(msg.topic, msg.payload)

    def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Connect and subscribe.

        Raises:
            ConnectionError: unreachable broker, TLS failure or refused credentials, with the reason.
        """
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise ConnectionError(exc.strerror or str(exc)) from None
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self.close()
            raise ConnectionError(f"no CONNACK within {timeout_s} s")
        assert self._connack is not None
        if not self._connack[0]:
            self.close()
            raise ConnectionError(f"broker refused the connection: {self._connack[1]}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def cli_watch(args: argparse.Namespace) -> int:
    """``affectline watch [config] [--camera C] [--host H] [--port P] [--seconds S]``."""
    try:
        cfg = load_config(args.config).mqtt if args.config else Mqtt()
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    host = args.host or (LOOPBACK if cfg.host == "embedded" else cfg.host)
    port = cfg.port if args.port is None else args.port
    if not 0 < port <= 65535:
        print(f"--port {port}: need the broker's port in [1, 65535] (the agent logs it)", file=sys.stderr)
        return 2
    try:
        watcher = Watcher(cfg, host, port, args.camera)
    except OSError as exc:  # ssl.SSLError too: a TLS file that is missing, unreadable or not PEM
        print(f"mqtt.tls: {exc}", file=sys.stderr)
        return 2
    try:
        watcher.connect()
    except ConnectionError as exc:
        print(f"cannot watch MQTT broker {host}:{port}: {exc}", file=sys.stderr)
        return 1
    tty = sys.stdout.isatty()
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else float("inf")
    shown = -1
    try:
        while time.monotonic() < deadline:
            with watcher.lock:
                version, text = watcher.view.version, render(watcher.view)
            if version != shown:  # redraw only on news, so piped output stays readable
                print((CLEAR if tty else "\n") + text, flush=True)
                shown = version
            time.sleep(min(REFRESH_S, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()
    return 0
