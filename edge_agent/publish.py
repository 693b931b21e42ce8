"""MQTT publisher: Affectline's public interface (topics and payloads: docs/mqtt.md).

Threads: the pipeline calls `Publisher.publish` for every frame. That call only updates small
per-camera state and, when a message is due, builds its JSON and puts it in the `Outbox`; it
never touches the network. One network thread owns the paho client: it connects with backoff,
runs the summary/stats timers, hands queued messages to paho and re-sends retained state after
every reconnect. Because only that thread calls paho, messages leave in the order they were
queued, also across reconnects: after ``online``, paho re-sends its unacknowledged ones, then the
retained states go out, then the queue; a `state` report superseded while queued is not sent.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from edge_agent import __version__
from edge_agent.broker import LOOPBACK, EmbeddedBroker
from edge_agent.config import Mqtt
from edge_agent.structures import CameraStatus, Detections, FrameResult

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CAMERA_TOPICS = ("persons", "events", "summary", "state")
AGENT_TOPICS = ("status", "stats")
KINDS = (*AGENT_TOPICS, *CAMERA_TOPICS, "discovery")
# Unacknowledged QoS 1 messages handed to paho at once; the rest wait in our bounded outbox.
MAX_INFLIGHT = 20
# QoS 0 messages waiting for the network thread (a few seconds of persons for a few cameras).
LIVE_QUEUE = 64
LOOP_TIMEOUT_S = 0.05
# CONNACK refusals that retrying will not fix (paho names; compare by name, not number).
PERMANENT_CONNACK = {"Client identifier not valid", "Bad user name or password", "Not authorized"}


def topic(prefix: str, agent_id: str, kind: str, camera: str | None = None) -> str:
    """The topic of one message kind; per-camera kinds need ``camera``, agent-level ones must not have it."""
    if kind not in (CAMERA_TOPICS if camera is not None else AGENT_TOPICS):
        raise ValueError(
            f"kind {kind!r} with camera {camera!r}: per-camera kinds {CAMERA_TOPICS} need camera, "
            f"agent kinds {AGENT_TOPICS} must not have one"
        )
    return f"{prefix}/{agent_id}/{kind}" if camera is None else f"{prefix}/{agent_id}/{camera}/{kind}"


def iso_ms(t_wall: float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. ``2025-01-31T12:00:00.123Z``."""
    ms = int(t_wall * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _r(values: np.ndarray, digits: int = 3) -> Any:
    """Rounded plain-Python copy of an array (keeps payloads short)."""
    return np.round(values.astype(np.float64), digits).tolist()


def _column(det: Detections, key: str) -> np.ndarray:
    if key not in det.data:
        raise ValueError(f"FrameResult.detections.data lacks column {key!r}; have {sorted(det.data)}")
    return det.data[key]


# ----------------------------------------------------------------------------- payload builders
def persons_payload(result: FrameResult, tracks: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Body of a ``persons`` message: one entry per confirmed track in the frame.

    Args:
        result: The frame; ``detections`` carries the smoothed columns listed in `FrameResult`.
        tracks: Public (per-session random) track id of each row.
        classes: Class names, index = ``probs`` column.
    """
    det, frame = result.detections, result.frame
    w, h = frame.size
    boxes = _r(np.clip(det.xyxy / np.array([w, h, w, h], np.float32), 0.0, 1.0))
    probs = _r(_column(det, "probs"))
    va = _r(_column(det, "valence_arousal"))
    conf = _r(_column(det, "confidence"))
    seen = _r(_column(det, "seconds_observed"), 1)
    labels = _column(det, "label").tolist()
    persons = [
        {
            "track": tracks[i],
            "box": boxes[i],
            "label": classes[labels[i]] if labels[i] >= 0 else None,
            "probs": probs[i],
            "valence": va[i][0],
            "arousal": va[i][1],
            "confidence": conf[i],
            "seen_s": seen[i],
        }
        for i in range(len(det))
    ]
    return {
        "frame_ts": iso_ms(frame.t_wall),
        "frame": frame.index,
        "classes": list(classes),
        "persons": persons,
    }


@dataclass
class Track:
    """What the publisher remembers about one live track (for events)."""

    public_id: str
    label: int = -1
    confidence: float = 0.0
    seen_s: float = 0.0


def event_payload(
    event: str, track: Track, classes: Sequence[str], frame_ts: float, previous: int = -1
) -> dict[str, Any]:
    """Body of an ``events`` message (``track_started`` / ``track_ended`` / ``emotion_changed``)."""

    def name(label: int) -> str | None:
        return classes[label] if label >= 0 else None

    body: dict[str, Any] = {
        "event": event,
        "track": track.public_id,
        "label": name(track.label),
        "confidence": round(track.confidence, 3),
        "seen_s": round(track.seen_s, 1),
        "frame_ts": iso_ms(frame_ts),
    }
    if event == "emotion_changed":
        body["previous"] = name(previous)
    return body


class SummaryWindow:
    """Per-camera aggregate between two ``summary`` messages.

    Shares and means are over labelled person-frames (a person without a reported emotion yet,
    e.g. seen only from behind, has none to count), so a person present twice as long weighs twice.
    """

    def __init__(self, n_classes: int, t_start: float):
        self.n_classes = n_classes
        self.t_start = t_start
        self.frames = 0
        self.person_frames = 0
        self.persons_now = 0
        self.persons_max = 0
        self.label_counts = np.zeros(n_classes, np.int64)
        self.va_sum = np.zeros(2, np.float64)
        self.tracks: set[str] = set()

    def add(self, labels: np.ndarray, valence_arousal: np.ndarray, tracks: Sequence[str]) -> None:
        """Count one frame: labels (N,) int64 (-1 = none yet), valence_arousal (N, 2), public ids."""
        n = len(labels)
        self.frames += 1
        self.person_frames += n
        self.persons_now = n
        self.persons_max = max(self.persons_max, n)
        if n:
            known = labels >= 0
            self.label_counts += np.bincount(labels[known], minlength=self.n_classes)[: self.n_classes]
            self.va_sum += valence_arousal[known].sum(axis=0)
            self.tracks.update(tracks)


def summary_payload(window: SummaryWindow, classes: Sequence[str], now: float) -> dict[str, Any]:
    """Body of a ``summary`` message for the window ending at ``now`` (monotonic seconds)."""
    labelled = int(window.label_counts.sum())
    shares = (
        {c: round(float(k) / labelled, 3) for c, k in zip(classes, window.label_counts, strict=True)}
        if labelled
        else {}
    )
    return {
        "window_s": round(now - window.t_start, 1),
        "persons": window.persons_now,
        "persons_mean": round(window.person_frames / window.frames, 2) if window.frames else 0.0,
        "persons_max": window.persons_max,
        "tracks_seen": len(window.tracks),
        "labels": shares,
        "dominant": classes[int(np.argmax(window.label_counts))] if labelled else None,
        "valence": round(float(window.va_sum[0]) / labelled, 3) if labelled else None,
        "arousal": round(float(window.va_sum[1]) / labelled, 3) if labelled else None,
    }


def state_payload(status: CameraStatus) -> dict[str, Any]:
    """Body of a camera ``state`` message."""
    return {
        "state": status.state,
        "fps": round(status.fps, 2),
        "frames": status.frames,
        "drops": status.drops,
        "errors": status.errors,
        "reconnects": status.reconnects,
        "detail": status.detail,
        "status_ts": iso_ms(status.t_wall) if status.t_wall else None,
    }


def ha_unique_id(agent_id: str, camera: str, figure: str) -> str:
    """The Home Assistant ``unique_id`` (and object id) of one camera's summary sensor.

    ``affectline_{agent_id}_{camera}_{figure}`` while the agent id has no ``_``: the first ``_``
    after ``affectline_`` then ends the agent id, so no two agents share an id. An agent id with
    ``_`` would make ``line_1``/``door`` and ``line``/``1_door`` meet in one entity, so such ids get
    ``affectline__{len(agent_id)}_{agent_id}_{camera}_{figure}``: the empty first part cannot be an
    agent id (ids are 1-64 characters) and the length ends the agent id. The figures contain no
    ``_``, so the camera is what lies between. Ids already in Home Assistant keep their form.
    """
    if "_" in agent_id:
        return f"affectline__{len(agent_id)}_{agent_id}_{camera}_{figure}"
    return f"affectline_{agent_id}_{camera}_{figure}"


def discovery_payloads(prefix: str, agent_id: str, camera: str, ha_prefix: str) -> dict[str, dict[str, Any]]:
    """Home Assistant MQTT discovery configs (topic -> payload) for one camera's summary sensors.

    One single-component config per sensor at ``<ha_prefix>/sensor/<unique_id>/config`` (Home
    Assistant's best practice for entities with a ``unique_id``: object id = unique id, no node id).

    Args:
        prefix: The agent's own topic prefix (``mqtt.prefix``), for the state and availability topics.
        agent_id: The agent's id.
        camera: The camera's name.
        ha_prefix: Home Assistant's discovery prefix (``mqtt.home_assistant_prefix``).
    """
    device = {
        "identifiers": [f"affectline_{agent_id}"],
        "name": f"Affectline {agent_id}",
        "model": "Affectline",
        "sw_version": __version__,
    }
    # Home Assistant recommends naming the origin of discovered entities: it logs it with every
    # discovery or update, which tells a user which software (and version) created them.
    origin = {"name": "Affectline", "sw_version": __version__}
    sensors = {
        "persons": ("persons", "{{ value_json.persons }}"),
        "valence": (None, "{{ value_json.valence }}"),
        "arousal": (None, "{{ value_json.arousal }}"),
        "emotion": (None, "{{ value_json.dominant }}"),
    }
    out = {}
    for key, (unit, template) in sensors.items():
        uid = ha_unique_id(agent_id, camera, key)
        cfg: dict[str, Any] = {
            "name": f"{camera} {key}",
            "unique_id": uid,
            "state_topic": topic(prefix, agent_id, "summary", camera),
            "value_template": template,
            "availability_topic": topic(prefix, agent_id, "status"),
            "availability_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
            "device": device,
            "origin": origin,
        }
        if key != "emotion":
            cfg["state_class"] = "measurement"
        if unit:
            cfg["unit_of_measurement"] = unit
        out[f"{ha_prefix}/sensor/{uid}/config"] = cfg
    return out


# ----------------------------------------------------------------------------- outbox
@dataclass(frozen=True)
class Message:
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Outbox:
    """Messages waiting for the network thread, and the delivery counters (thread-safe).

    QoS 1 messages are kept in order up to ``bound``; when full, the oldest is evicted and counted
    as ``overflow``, so after an outage subscribers get the newest ``bound`` messages and the
    ``seq`` gap says how many are missing. QoS 0 messages are live data: the caller offers them
    only while connected, and the oldest are evicted if the network thread falls behind.
    """

    bound: int
    _reliable: deque[Message] = field(default_factory=deque)
    _live: deque[Message] = field(default_factory=deque)
    _counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, msg: Message) -> None:
        with self._lock:
            queue, bound = (self._reliable, self.bound) if msg.qos else (self._live, LIVE_QUEUE)
            if len(queue) >= bound:
                old = queue.popleft()
                self._counts[f"{old.kind}_overflow" if old.qos else f"{old.kind}_dropped"] += 1
                self._counts[f"{old.kind}_buffered"] -= 1
            queue.append(msg)
            self._counts[f"{msg.kind}_buffered"] += 1

    def take(self, reliable_room: int) -> list[Message]:
        """Up to ``reliable_room`` QoS 1 messages (oldest first), then all QoS 0 ones."""
        with self._lock:
            n = min(reliable_room, len(self._reliable))
            out = [self._reliable.popleft() for _ in range(n)] + list(self._live)
            self._live.clear()
            for msg in out:
                self._counts[f"{msg.kind}_buffered"] -= 1
            return out

    def count(self, kind: str, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[f"{kind}_{what}"] += n

    def drop_all(self) -> int:
        """Count everything still queued as dropped (at close or after giving up); returns how many."""
        with self._lock:
            rest = [*self._reliable, *self._live]
            self._reliable.clear()
            self._live.clear()
            for msg in rest:
                self._counts[f"{msg.kind}_buffered"] -= 1
                self._counts[f"{msg.kind}_dropped"] += 1
            return len(rest)

    def __len__(self) -> int:
        return len(self._reliable) + len(self._live)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {
                f"{k}_{w}": self._counts[f"{k}_{w}"]
                for k in KINDS
                for w in ("sent", "dropped", "buffered", "overflow")
            }


# ----------------------------------------------------------------------------- publisher
class _Camera:
    """Pipeline-thread state of one camera (only the summary window is shared, under the lock)."""

    def __init__(self, n_classes: int, now: float, summary_s: float):
        self.tracks: dict[int, Track] = {}
        self.last_frame_ts = 0.0  # wall time of the newest frame, for the track_ended events of close()
        self.persons_due = now
        self.summary_due = now + summary_s
        self.window = SummaryWindow(n_classes, now)


class Publisher:
    """Publishes a running agent's results, state and health over MQTT.

    Args:
        cfg: The ``mqtt`` config section.
        agent_id: Second topic level; unique per agent.
        cameras: Camera names (third topic level of per-camera topics).
        classes: Emotion class names, index = ``probs`` column / ``label`` value.
        clock: Monotonic clock for rates and timers (injectable for tests).
    """

    def __init__(
        self,
        cfg: Mqtt,
        agent_id: str,
        cameras: Sequence[str],
        classes: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ):
        if not cameras:
            raise ValueError("cameras must name at least one camera, got []")
        if not classes:
            raise ValueError("classes must name at least one class, got []")
        self.cfg, self.agent_id, self.classes, self._clock = cfg, agent_id, tuple(classes), clock
        self.session = secrets.token_hex(4)  # namespaces seq numbers and track ids of this run
        now = clock()
        self._t0 = now
        self._cams = {c: _Camera(len(self.classes), now, cfg.summary_s) for c in cameras}
        self._topics: dict[tuple[str, str | None], str] = {
            (k, c): topic(cfg.prefix, agent_id, k, c) for c in cameras for k in CAMERA_TOPICS
        }
        self._topics.update({(k, None): topic(cfg.prefix, agent_id, k) for k in AGENT_TOPICS})
        self._seq = {t: count() for t in self._topics.values()}
        self._outbox = Outbox(cfg.buffer_size)
        self._lock = threading.Lock()  # summary windows, latest states, extra stats
        self._states: dict[str, Message] = {}
        # The states to re-send after a CONNACK, handed over once paho has re-sent its own backlog.
        self._resend: list[Message] = []
        self._extra_stats: dict[str, Any] = {}
        self._stats_due = now + cfg.stats_s
        self._state = "new"
        self._connected = False
        self._client: mqtt.Client | None = None
        self._broker: EmbeddedBroker | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._close_reason = "stopped"
        self._close_deadline = 0.0
        # Network-thread state.
        self._address = (LOOPBACK if cfg.host == "embedded" else cfg.host, cfg.port)
        self._unacked: deque[tuple[mqtt.MQTTMessageInfo, str]] = deque()
        self._socket_open = False
        self._refused: str | None = None
        self._refused_permanent = False
        self._acked = False  # CONNACK accepted on the current socket
        self._client_id = cfg.client_id or f"affectline-{agent_id}-{secrets.token_hex(4)}"
        self._failures = 0
        self._outage_logged = False
        self._delay = cfg.reconnect_min_s
        self._retry_at = now
        # The Last Will carries the number the next status would have, so a gap on the status topic
        # means the agent was offline even if the broker lost the will (see docs/mqtt.md).
        self._status_seq = 0
        self._stop_queued = False

    # ------------------------------------------------------------------ public API
    @property
    def connected(self) -> bool:
        """True while a broker session is up (CONNACK accepted, not yet lost)."""
        return self._connected

    @property
    def state(self) -> str:
        """``new`` | ``connecting`` | ``online`` | ``offline`` (retrying) | ``failed`` | ``stopped``."""
        return self._state

    @property
    def broker_address(self) -> tuple[str, int]:
        """(host, port) the publisher connects to (the embedded broker's port once started)."""
        return self._address

    def counters(self) -> dict[str, int]:
        """``{kind}_{sent|dropped|buffered|overflow}`` for each kind in `KINDS`.

        ``sent``: acknowledged by the broker (QoS 1) or written to the socket (QoS 0);
        ``buffered``: queued or awaiting PUBACK; ``dropped``: discarded by policy (QoS 0 while
        offline, anything left at close or after giving up); ``overflow``: QoS 1 evicted from a full buffer.
        """
        return self._outbox.counters()

    def start(self) -> None:
        """Start the embedded broker if configured, then connect in the background (never blocks long)."""
        if self._thread is not None:
            return
        self._state = "connecting"
        if self.cfg.host == "embedded":
            self._broker = EmbeddedBroker(self.cfg.port)
            try:
                self._broker.start()
            except RuntimeError as exc:
                self._fail(str(exc))
                return
            self._address = (LOOPBACK, self._broker.port)
        try:
            self._client = self._make_client()
        except OSError as exc:  # unreadable CA/cert/key files (ssl.SSLError is an OSError)
            self._fail(f"mqtt.tls: {exc}")
            return
        self._thread = threading.Thread(target=self._run, name="affectline-mqtt", daemon=True)
        self._thread.start()

    def publish(self, result: FrameResult) -> None:
        """Take one processed frame: derive events, update the summary, send persons when due.

        Cheap (no network I/O); JSON is built only for messages that are due.
        """
        camera = result.frame.camera
        cam = self._cams.get(camera)
        if cam is None:
            raise ValueError(f"FrameResult.frame.camera {camera!r} is not one of {sorted(self._cams)}")
        det = result.detections
        labels = _column(det, "label")
        n = len(self.classes)
        if len(labels) and not -1 <= labels.min() <= labels.max() < n:
            raise ValueError(
                f"FrameResult label must be in [-1, {n - 1}], got {labels.min()}..{labels.max()}"
            )
        if _column(det, "probs").shape[1:] != (n,):
            raise ValueError(f"FrameResult probs must have shape (N, {n}), got {det.data['probs'].shape}")
        public = self._update_tracks(cam, result, labels)
        with self._lock:
            cam.window.add(labels, _column(det, "valence_arousal"), public)
        if self.cfg.aggregate_only:
            return
        now = self._clock()
        if now >= cam.persons_due:
            period = 1.0 / self.cfg.persons_hz
            cam.persons_due = cam.persons_due + period if cam.persons_due + period > now else now + period
            if self._connected:
                self._put("persons", camera, persons_payload(result, public, self.classes))
            else:
                self._outbox.count("persons", "dropped")

    def camera_state(self, status: CameraStatus) -> None:
        """Publish a camera's health (retained; while offline only the newest is kept, sent on reconnect)."""
        if status.camera not in self._cams:
            raise ValueError(f"CameraStatus.camera {status.camera!r} is not one of {sorted(self._cams)}")
        msg = self._message("state", status.camera, state_payload(status))
        with self._lock:
            self._states[status.camera] = msg
            connected = self._connected  # read with the store: `_on_connect` snapshots and flips under it
        if connected:
            self._outbox.put(msg)

    def stats(self, stats: Mapping[str, Any]) -> None:
        """Merge pipeline figures into the next periodic ``stats`` message.

        Raises:
            TypeError: a value is not JSON-serialisable (numpy scalars and arrays are fine).
        """
        json.dumps(dict(stats), default=_json_default)  # fail here, in the caller, not in the network thread
        with self._lock:
            self._extra_stats.update(stats)

    def close(self, reason: str = "stopped", flush_timeout_s: float = 5.0) -> None:
        """Publish ``stopped`` after the queued messages, wait for them up to ``flush_timeout_s``,
        disconnect cleanly (so the broker discards the Last Will) and stop the embedded broker."""
        self._end_live_tracks()
        thread = self._thread
        if thread is not None:
            self._close_reason = reason
            self._close_deadline = self._clock() + flush_timeout_s
            self._closing.set()
            thread.join(timeout=flush_timeout_s + 10.0)
            self._thread = None
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self._state != "failed":
            self._state = "stopped"

    # ------------------------------------------------------------------ pipeline side
    def _end_live_tracks(self) -> None:
        """`track_ended` for every track still live, so each `track_started` has its end."""
        for camera, cam in self._cams.items():
            if not self.cfg.aggregate_only:
                for track in cam.tracks.values():
                    self._put(
                        "events", camera, event_payload("track_ended", track, self.classes, cam.last_frame_ts)
                    )
            cam.tracks.clear()

    def _update_tracks(self, cam: _Camera, result: FrameResult, labels: np.ndarray) -> list[str]:
        """Public ids of the rows, emitting started / emotion_changed / ended events."""
        det = result.detections
        assert det.tracker_id is not None
        conf = _column(det, "confidence").tolist()
        seen = _column(det, "seconds_observed").tolist()
        camera, t_frame, events = result.frame.camera, result.frame.t_wall, not self.cfg.aggregate_only
        cam.last_frame_ts = t_frame
        public = []
        for tid, label, c, s in zip(det.tracker_id.tolist(), labels.tolist(), conf, seen, strict=True):
            track = cam.tracks.get(tid)
            new = track is None
            if track is None:
                # Random per track and per run: ids never link to an identity or across restarts.
                track = cam.tracks[tid] = Track(secrets.token_hex(4))
            previous = track.label
            track.label, track.confidence, track.seen_s = label, c, s
            if events and new:
                self._put("events", camera, event_payload("track_started", track, self.classes, t_frame))
            elif events and label != previous:
                body = event_payload("emotion_changed", track, self.classes, t_frame, previous)
                self._put("events", camera, body)
            public.append(track.public_id)
        for tid in result.ended_tracks:
            ended = cam.tracks.pop(int(tid), None)
            if ended is not None and events:
                self._put("events", camera, event_payload("track_ended", ended, self.classes, t_frame))
        return public

    def _message(
        self, kind: str, camera: str | None, body: dict[str, Any], seq: int | None = None
    ) -> Message:
        name = self._topics[(kind, camera)]
        envelope = {
            "v": SCHEMA_VERSION,
            "ts": iso_ms(time.time()),
            "seq": next(self._seq[name]) if seq is None else seq,
            "session": self.session,
        }
        if camera is not None:
            envelope["camera"] = camera
        payload = json.dumps({**envelope, **body}, separators=(",", ":"), default=_json_default).encode()
        qos = 0 if kind in ("persons", "stats") else 1
        return Message(kind, name, payload, qos, retain=kind in ("status", "state", "summary"))

    def _put(self, kind: str, camera: str | None, body: dict[str, Any]) -> None:
        if self._state == "failed":
            self._outbox.count(kind, "dropped")
        else:
            self._outbox.put(self._message(kind, camera, body))

    # ------------------------------------------------------------------ network thread
    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv311
        )
        # paho reports every dropped socket at ERROR; our own lines say what matters, so keep paho's at DEBUG.
        client.on_log = lambda _c, _u, _level, text: log.debug("paho: %s", text)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.max_inflight_messages_set(0)  # we bound in-flight messages ourselves (MAX_INFLIGHT)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            client.tls_set(ca_certs=cfg.tls.ca_certs, certfile=cfg.tls.certfile, keyfile=cfg.tls.keyfile)
            client.tls_insecure_set(cfg.tls.insecure)
        client.connect_async(self._address[0], self._address[1], keepalive=cfg.keepalive_s)
        return client

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug here must disable MQTT, not leave a silently dead thread
            log.exception("MQTT network thread failed")
            self._fail(f"internal error: {exc!r}")

    def _loop(self) -> None:
        assert self._client is not None
        while self._state != "failed":
            now = self._clock()
            self._timers(now)
            if self._closing.is_set() and self._close_step(now):
                break
            if self._socket_open:
                rc = self._client.loop(timeout=LOOP_TIMEOUT_S)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._lost(rc)
                elif self._connected:  # not before CONNACK: `online` and retained state go first
                    self._pump()
            elif now >= self._retry_at:
                self._attempt()
            else:
                self._closing.wait(min(LOOP_TIMEOUT_S, self._retry_at - now))

    def _attempt(self) -> None:
        assert self._client is not None
        will = self._status_message("offline", self._status_seq + 1, "connection lost")
        self._client.will_set(will.topic, will.payload, qos=1, retain=True)
        self._refused, self._acked = None, False
        try:
            self._client.reconnect()
        except ssl.SSLError as exc:
            detail = getattr(exc, "verify_message", None)
            reason = f"TLS handshake failed: {exc.reason or exc}" + (f" ({detail})" if detail else "")
            self._failed_attempt(reason, permanent=True)
        except OSError as exc:
            self._failed_attempt(exc.strerror or str(exc) or type(exc).__name__, permanent=False)
        else:
            self._socket_open = True

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = f"broker refused the connection: {reason}"
            self._refused_permanent = str(reason) in PERMANENT_CONNACK
            return
        log.info("MQTT connected to %s:%d as %s", *self._address, self._client_id)
        self._acked = True
        self._failures, self._outage_logged, self._delay = 0, False, self.cfg.reconnect_min_s
        with self._lock:
            # Snapshot and flip together: a state stored before this block is in the snapshot, one
            # stored after it sees `_connected` and is queued (the queue is pumped after the snapshot).
            self._resend = list(self._states.values())
            self._connected = True
        retained: list[Message] = []
        if self.cfg.home_assistant:
            retained += [
                Message("discovery", t, json.dumps(p, separators=(",", ":")).encode(), 1, True)
                for c in self._cams
                for t, p in discovery_payloads(
                    self.cfg.prefix, self.agent_id, c, self.cfg.home_assistant_prefix
                ).items()
            ]
        retained.append(self._status_message("online", self._status_seq))
        self._status_seq += 2
        for msg in retained:
            self._hand_over(msg)
        self._state = "online"

    def _on_disconnect(self, *_args: Any) -> None:
        self._connected = False

    def _lost(self, rc: mqtt.MQTTErrorCode) -> None:
        self._socket_open = self._connected = False
        if self._refused is not None:
            self._failed_attempt(self._refused, permanent=self._refused_permanent)
        elif not self._acked and self.cfg.tls is not None:
            # TLS 1.3 reports a rejected client certificate only as a closed connection.
            self._failed_attempt(
                "TLS: broker closed the connection before CONNACK (client certificate rejected?)", True
            )
        elif not self._acked:  # e.g. a broker at its connection limit: may pass
            self._failed_attempt("broker closed the connection before CONNACK", permanent=False)
        else:
            self._failed_attempt(f"connection lost ({mqtt.error_string(rc)})", permanent=False)

    def _failed_attempt(self, reason: str, permanent: bool) -> None:
        host, port = self._address
        if permanent:
            self._failures += 1
            if self._failures > self.cfg.connect_retries:
                self._fail(f"{reason} ({self._failures} attempts)")
                return
        if not self._outage_logged:
            log.warning(
                "MQTT broker %s:%d: %s; retrying with backoff, the pipeline keeps running", host, port, reason
            )
            self._outage_logged = True
        self._state = "offline"
        self._retry_at = self._clock() + self._delay * random.uniform(0.8, 1.2)
        self._delay = min(self._delay * 2, self.cfg.reconnect_max_s)

    def _fail(self, reason: str) -> None:
        host, port = self._address
        log.error(
            "MQTT disabled: cannot use broker %s:%d: %s. The agent keeps running without MQTT.",
            host,
            port,
            reason,
        )
        self._state, self._connected = "failed", False
        self._outbox.drop_all()

    def _hand_over(self, msg: Message) -> None:
        assert self._client is not None
        info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        if msg.qos:
            if info.rc in (mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_CONN_LOST):
                # The connection died under this write. paho keeps the message and resends it after
                # the reconnect, but `is_published()` would raise on the stale code for ever after.
                info.rc = mqtt.MQTT_ERR_SUCCESS
            self._unacked.append((info, msg.kind))
            self._outbox.count(msg.kind, "buffered")
        elif info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._outbox.count(msg.kind, "sent")
        else:
            self._outbox.count(msg.kind, "dropped")

    def _pump(self) -> None:
        """Count acknowledgements, then hand queued messages to paho while in-flight room is left.

        The states of the last CONNACK go first. paho re-sends its unacknowledged messages after
        the CONNACK callback, so an older `state` among them would otherwise stay retained.
        """
        while self._unacked and self._unacked[0][0].is_published():
            _, kind = self._unacked.popleft()
            self._outbox.count(kind, "buffered", -1)
            self._outbox.count(kind, "sent")
        resend, self._resend = self._resend, []
        for msg in resend:
            if self._current(msg):
                self._hand_over(msg)
        for msg in self._outbox.take(MAX_INFLIGHT - len(self._unacked)):
            if self._current(msg):
                self._hand_over(msg)
            else:
                self._outbox.count(msg.kind, "dropped")

    def _current(self, msg: Message) -> bool:
        """False for a camera `state` that a newer report has replaced (sending it would make the
        broker retain the older one if the newer went out first)."""
        if msg.kind != "state":
            return True
        with self._lock:
            return any(m is msg for m in self._states.values())

    def _timers(self, now: float) -> None:
        for camera, cam in self._cams.items():
            if now >= cam.summary_due:
                with self._lock:
                    # A window without frames (camera down or ended) reports 0 persons, not the last count.
                    body = summary_payload(cam.window, self.classes, now)
                    cam.window = SummaryWindow(len(self.classes), now)
                cam.summary_due = now + self.cfg.summary_s
                self._put("summary", camera, body)
        if now >= self._stats_due:
            self._stats_due = now + self.cfg.stats_s
            if self._connected:
                self._put("stats", None, self._stats_body(now))
            else:
                self._outbox.count("stats", "dropped")

    def _stats_body(self, now: float) -> dict[str, Any]:
        with self._lock:
            extra = dict(self._extra_stats)
        mqtt_stats = {"state": self._state, "counters": {k: v for k, v in self.counters().items() if v}}
        return {**extra, "uptime_s": round(now - self._t0, 1), "mqtt": mqtt_stats}

    def _status_message(self, state: str, seq: int, reason: str | None = None) -> Message:
        body: dict[str, Any] = {"state": state, "cameras": list(self._cams), "classes": list(self.classes)}
        if reason is not None:
            body["reason"] = reason
        return self._message("status", None, body, seq=seq)

    def _close_step(self, now: float) -> bool:
        """One step of closing; True when done: all sent and acknowledged, nothing left to send
        while offline, or the deadline passed (a broker coming back in time still gets the backlog)."""
        assert self._client is not None
        if self._connected and not self._stop_queued:
            self._outbox.put(self._status_message("stopped", self._status_seq - 1, self._close_reason))
            self._stop_queued = True
        idle = not self._outbox and not self._unacked
        if not (idle and (self._stop_queued or not self._connected)) and now < self._close_deadline:
            return False
        lost = self._outbox.drop_all() + len(self._unacked)
        if lost:
            log.warning("MQTT: %d message(s) not delivered before close", lost)
        for _, kind in self._unacked:
            self._outbox.count(kind, "buffered", -1)
            self._outbox.count(kind, "dropped")
        self._unacked.clear()
        if self._socket_open:
            # Sent at once from this (the loop) thread; a clean DISCONNECT makes the broker drop the will.
            self._client.disconnect()
        self._socket_open = self._connected = False
        return True


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays in stats payloads."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"stats value of type {type(value).__name__} is not JSON-serialisable")
