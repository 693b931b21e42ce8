"""Prometheus ``/metrics`` endpoint (text exposition format 0.0.4), standard library only.

Values are pulled at scrape time from sources, callables that return `Sample`s:
`AgentMetrics.samples` (per-camera figures the pipeline reports) and `publisher_samples`
(MQTT state and message counters). The server binds to localhost unless configured otherwise.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from edge_agent.config import Metrics
from edge_agent.publish import KINDS, Publisher
from edge_agent.structures import CameraStatus, FrameResult

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Sample:
    """One sample line; ``name`` of a summary's sample ends in ``_sum`` or ``_count``."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    kind: Literal["gauge", "counter", "summary"] = "gauge"
    help: str = ""

    @property
    def family(self) -> str:
        if self.kind == "summary":
            return self.name.removesuffix("_sum").removesuffix("_count")
        return self.name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def exposition(samples: Iterable[Sample]) -> str:
    """Prometheus text format: samples grouped by family, each family with HELP and TYPE once."""
    families: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        families[s.family].append(s)
    lines = []
    for family, group in families.items():
        lines.append(f"# HELP {family} {group[0].help or family}")
        lines.append(f"# TYPE {family} {group[0].kind}")
        for s in group:
            labels = ",".join(f'{k}="{_escape(str(v))}"' for k, v in s.labels.items())
            lines.append(
                f"{s.name}{{{labels}}} {_number(s.value)}" if labels else f"{s.name} {_number(s.value)}"
            )
    return "".join(line + "\n" for line in lines)


# Figures in ``stage_ms`` that are not on the frame path (threaded detector): their own summaries,
# so that summing ``affectline_stage_seconds`` over stages still gives the frame's latency.
OFF_PATH = {
    "detect_thread": ("affectline_detector_thread_seconds", "detector run time in its own thread"),
    "detect_age": ("affectline_detection_age_seconds", "age of the detections handed to the tracker"),
}


class AgentMetrics:
    """Per-camera pipeline figures, updated by the pipeline (cheap) and read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: dict[str, int] = defaultdict(int)
        self._tracks: dict[str, int] = {}
        self._stage: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
        self._cameras: dict[str, CameraStatus] = {}
        self._queues: dict[str, int] = {}

    def observe_frame(self, result: FrameResult) -> None:
        """Count a processed frame, its live tracks and its stage latencies (``stage_ms``)."""
        camera = result.frame.camera
        with self._lock:
            self._frames[camera] += 1
            self._tracks[camera] = len(result.detections)
            for stage, ms in result.stage_ms.items():
                acc = self._stage[(camera, stage)]
                acc[0] += ms / 1000.0
                acc[1] += 1

    def observe_camera(self, status: CameraStatus) -> None:
        """Keep a camera's latest health report."""
        with self._lock:
            self._cameras[status.camera] = status

    def set_queue_depth(self, queue: str, depth: int) -> None:
        """Current length of a named queue (e.g. a camera's frame queue)."""
        with self._lock:
            self._queues[queue] = depth

    def samples(self) -> list[Sample]:
        with self._lock:
            out = [
                Sample(
                    "affectline_frames_processed_total",
                    n,
                    {"camera": c},
                    "counter",
                    "frames through the pipeline",
                )
                for c, n in self._frames.items()
            ]
            out += [Sample("affectline_tracks", n, {"camera": c}, help="confirmed tracks in the latest frame")
                    for c, n in self._tracks.items()]  # fmt: skip
            for (camera, stage), (total, count) in self._stage.items():
                labels = {"camera": camera, "stage": stage}
                name, help_ = "affectline_stage_seconds", "pipeline stage latency on the frame path"
                if stage in OFF_PATH:
                    (name, help_), labels = OFF_PATH[stage], {"camera": camera}
                out.append(Sample(f"{name}_sum", total, labels, "summary", help_))
                out.append(Sample(f"{name}_count", count, labels, "summary", help_))
            for c, st in self._cameras.items():
                cam = {"camera": c}
                out += [
                    Sample(
                        "affectline_camera_up",
                        float(st.state == "online"),
                        cam,
                        help="1 if the source delivers",
                    ),
                    Sample("affectline_camera_fps", st.fps, cam, help="frames per second delivered"),
                    Sample("affectline_camera_frames_total", st.frames, cam, "counter", "frames captured"),
                    Sample(
                        "affectline_camera_drops_total",
                        st.drops,
                        cam,
                        "counter",
                        "frames dropped (queue full)",
                    ),
                    Sample("affectline_camera_errors_total", st.errors, cam, "counter", "unreadable frames"),
                    Sample(
                        "affectline_camera_reconnects_total",
                        st.reconnects,
                        cam,
                        "counter",
                        "reconnect attempts",
                    ),
                ]
            out += [Sample("affectline_queue_depth", n, {"queue": q}, help="items waiting in a queue")
                    for q, n in self._queues.items()]  # fmt: skip
        return out


def publisher_samples(pub: Publisher) -> list[Sample]:
    """MQTT connection state, buffered messages and message counters of a publisher."""
    counts = pub.counters()
    out = [Sample("affectline_mqtt_connected", float(pub.connected), help="1 while a broker session is up")]
    for kind in KINDS:
        for result in ("sent", "dropped", "overflow"):
            out.append(
                Sample(
                    "affectline_mqtt_messages_total",
                    counts[f"{kind}_{result}"],
                    {"kind": kind, "result": result},
                    "counter",
                    "MQTT messages by kind and outcome (see docs/mqtt.md)",
                )
            )
        out.append(
            Sample(
                "affectline_mqtt_buffered",
                counts[f"{kind}_buffered"],
                {"kind": kind},
                help="queued or unacked",
            )
        )
    return out


class MetricsServer:
    """Serves ``GET /metrics`` from a thread.

    Args:
        cfg: The ``metrics`` config section (host, port; port 0 = any free port).
        sources: Callables returning samples, called on every scrape.
    """

    def __init__(self, cfg: Metrics, sources: Sequence[Callable[[], Iterable[Sample]]]):
        self.cfg = cfg
        self._sources = list(sources)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The listening port (the configured one, or the picked one once started)."""
        return int(self._server.server_address[1]) if self._server else self.cfg.port

    def render(self) -> str:
        return exposition(s for source in self._sources for s in source())

    def start(self) -> None:
        """Listen on ``cfg.host:cfg.port``.

        Raises:
            RuntimeError: the address cannot be bound, naming ``metrics.host``/``metrics.port``.
        """
        if self._server is not None:
            return
        try:
            self._server = ThreadingHTTPServer((self.cfg.host, self.cfg.port), _handler(self.render))
        except OSError as exc:
            where = f"{self.cfg.host}:{self.cfg.port}"
            raise RuntimeError(
                f"metrics.host/metrics.port {where}: cannot listen: {exc.strerror or exc}"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="affectline-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.cfg.host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _handler(render: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served")
                return
            try:
                body = render().encode()
            except Exception as exc:  # a broken source must not kill the endpoint
                log.warning("metrics source failed: %s", exc)
                # The reason goes into the status line: fixed text (an exception's may hold a line
                # break or non-latin-1 characters); the detail goes into the HTML-escaped body.
                self.send_error(500, "metrics source failed", explain=repr(exc)[:300])
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
            log.debug("metrics %s: " + format, self.address_string(), *args)

    return Handler
