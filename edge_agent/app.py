"""`affectline run`: the streaming agent.

`AffectlineApp.start()` reads like a table of contents: open sources, pipeline, publisher and
outputs, then loop over "latest frame of each camera -> pipeline -> publish/outputs" until the
sources end, a time limit passes or SIGINT/SIGTERM arrives, then stop everything in reverse.

SIGINT/SIGTERM only set a stop event (`edge_agent.shutdown`); ``affectline run`` installs the
handlers before it loads anything, and every start-up step checks the event, so a signal during
model load, broker connect or camera open ends the run cleanly (exit 0) too.

A run that ends by itself (its files ended) or at ``--max-seconds`` exits 1 when a camera delivered no
frame at all (a missing or unreadable file, an RTSP camera that never connected), after the other
cameras did their work, as ``cp`` does with a missing source. A run stopped by a signal exits 0.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.config import (
    AgentConfig,
    ConfigError,
    FileSource,
    OnnxRuntimeBackend,
    load_config,
    missing_files,
    parse_config,
)
from edge_agent.infer import ModelLoadError
from edge_agent.metrics import AgentMetrics, MetricsServer, publisher_samples
from edge_agent.pipeline import Pipeline
from edge_agent.preview import ConsoleTable, PreviewWriter, format_table, person_rows
from edge_agent.publish import Publisher, state_payload
from edge_agent.samples import SampleError, SampleInterrupted, sample_clip
from edge_agent.shutdown import restore_handlers, saved_handlers, stop_on_signals
from edge_agent.sources import Source, open_source
from edge_agent.structures import CameraStatus, Frame, FrameResult

log = logging.getLogger("affectline")

DEMO_CONFIG: dict[str, Any] = {
    "agent_id": "demo",
    "cameras": [
        {
            "name": "pexels",
            "source": {"type": "file", "path": "sample:WolfgangLanger_Pexels.mp4", "realtime": True},
        },
        {"name": "smile", "source": {"type": "file", "path": "sample:single_face.mp4", "realtime": True}},
    ],
    "output": {"preview": {"path": "out/{camera}.mp4"}, "console": True},
    "mqtt": {"host": "embedded", "port": 0},
}


def resolve_samples(cfg: AgentConfig, stop: threading.Event | None = None) -> AgentConfig:
    """Replace ``sample:NAME`` file paths with the cached real demo clip (fetched once).

    Raises:
        SampleError: a clip could not be fetched.
        SampleInterrupted: ``stop`` was set during a download.
    """
    cameras = []
    for cam in cfg.cameras:
        src = cam.source
        if isinstance(src, FileSource) and src.path.startswith("sample:"):
            path = str(sample_clip(src.path.split(":", 1)[1], stop))
            cam = cam.model_copy(update={"source": src.model_copy(update={"path": path})})
        cameras.append(cam)
    return cfg.model_copy(update={"cameras": cameras})


@dataclass
class LoopStats:
    """Counters the loop keeps for the stats topic and the final summary."""

    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    errors: int = 0
    latency_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=2000))
    tracks_seen: dict[str, set[int]] = field(default_factory=lambda: collections.defaultdict(set))

    def as_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(1)
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "frames": self.frames,
            "loop_errors": self.errors,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 2),
        }


class AffectlineApp:
    """Sources -> Pipeline -> Publisher and local outputs, with clean start and stop."""

    def __init__(self, cfg: AgentConfig, max_seconds: float = 0, stop_event: threading.Event | None = None):
        """Load the model and detector and prepare the publisher (no thread or socket yet).

        Args:
            cfg: The validated config.
            max_seconds: Stop after this long (0 = until the sources end or a stop is requested).
            stop_event: Set to stop; pass the one signal handlers already set (`stop_on_signals`)
                so a signal during the model load is not lost.

        Raises:
            ModelLoadError: the model file is missing, unreadable or does not match the contract.
        """
        self.cfg = cfg
        self.max_seconds = max_seconds
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.stats = LoopStats()
        log.info("loading model %s and detector %s", model_name(cfg), cfg.detection.detector.type)
        self.pipeline = Pipeline(cfg)
        meta = self.pipeline.inferencer.meta
        log.info("model %s: classes %s", meta.model_version, ",".join(meta.classes))
        cameras = [c.name for c in cfg.cameras]
        self.publisher = Publisher(cfg.mqtt, cfg.agent_id, cameras, self.pipeline.classes)
        self.sources: dict[str, Source] = {}
        self._status_queue: collections.deque[CameraStatus] = collections.deque()
        self.preview: PreviewWriter | None = None
        self.console: ConsoleTable | None = None
        self.metrics = AgentMetrics()
        self.metrics_server: MetricsServer | None = None
        self.last_results: dict[str, FrameResult] = {}
        self.silent_cameras: list[CameraStatus] = []  # cameras that delivered no frame, as they ended

    # ------------------------------------------------------------------ table of contents
    def start(self) -> int:
        """Run until the sources end, the time limit passes or a signal arrives.

        A stop requested before or during start-up skips the steps not yet taken (the run loop
        included); `stop` then closes what did start, so a publisher that got online still says
        ``stopped``.

        Returns:
            0, or 1 when the run was not stopped by a signal and a camera delivered no frame
            (`silent_cameras` names them).
        """
        saved = saved_handlers()
        self.install_signal_handlers()
        steps = (
            ("the MQTT publisher", self.publisher.start),
            ("the cameras", self.init_sources),
            ("the outputs", self.init_outputs),
            ("the run loop", self.run_loop),
        )
        try:
            for what, step in steps:
                if self.stop_event.is_set():
                    log.info("stop requested during start-up: not starting %s or what follows it", what)
                    break
                step()
            # Before `stop`: closing a camera replaces its last state ("file not found") by "closed".
            ended = [src.status() for src in self.sources.values()]
            self.silent_cameras = [status for status in ended if not status.frames]
        finally:
            self.stop()
            restore_handlers(saved)
        return 1 if self.silent_cameras and not self.stop_event.is_set() else 0

    def init_sources(self) -> None:
        for cam in self.cfg.cameras:
            self.sources[cam.name] = open_source(cam, on_status=self._status_queue.append)
            self.sources[cam.name].start()

    def init_outputs(self) -> None:
        if self.cfg.output.preview.path:
            fps = {name: src.source_fps for name, src in self.sources.items()}
            self.preview = PreviewWriter(self.cfg.output.preview, fps)
        if self.cfg.output.console:
            self.console = ConsoleTable()
        if self.cfg.metrics.enabled:
            assert self.publisher is not None
            publisher = self.publisher
            self.metrics_server = MetricsServer(
                self.cfg.metrics, [self.metrics.samples, lambda: publisher_samples(publisher)]
            )
            self.metrics_server.start()

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM set `stop_event` (main thread only; `cli_run` did it already, harmless twice)."""
        stop_on_signals(self.stop_event)

    def run_loop(self) -> None:
        next_stats = time.monotonic() + self.cfg.mqtt.stats_s
        while not self._should_stop():
            self.forward_camera_states()
            frames = self.read_frames()
            if not frames:
                time.sleep(0.002)
                continue
            self.step(frames)
            if time.monotonic() >= next_stats:
                self.report_stats()
                next_stats = time.monotonic() + self.cfg.mqtt.stats_s
        self.forward_camera_states()

    def stop(self) -> None:
        """Close whatever was opened, in reverse order; safe after a failed start."""
        for src in self.sources.values():
            src.close()
        if self.metrics_server:
            self.metrics_server.close()
        if self.preview:
            self.preview.close()
        if self.console:
            self.console.close()
        self.forward_camera_states()
        self.publisher.stats(self.stats_payload())
        self.publisher.close("stopped")
        self.pipeline.close()

    # ------------------------------------------------------------------ loop body
    def read_frames(self) -> list[Frame]:
        frames = []
        for src in self.sources.values():
            frame = src.read(timeout=0)
            if frame is not None:
                frames.append(frame)
        return frames

    def step(self, frames: list[Frame]) -> None:
        """One pass of the pipeline; a failure is logged, counted and the loop goes on."""
        try:
            results = self.pipeline.process(frames)
        except Exception:  # noqa: BLE001 - the stream must survive one bad frame; counted below
            self.stats.errors += 1
            log.exception(
                "pipeline failed on frames of %s (error %d)", [f.camera for f in frames], self.stats.errors
            )
            return
        for result in results:
            self.emit(result)

    def _write_preview(self, result: FrameResult) -> None:
        assert self.preview is not None
        try:
            self.preview.write(result)
        except OSError as exc:
            # A full disk or a removed folder ends the video, not the stream and MQTT.
            self.stats.errors += 1
            log.error("preview video disabled (loop error %d): %s", self.stats.errors, exc)
            self.preview.close()
            self.preview = None

    def emit(self, result: FrameResult) -> None:
        self.publisher.publish(result)
        if self.preview:
            self._write_preview(result)
        if self.console:
            self.console.show(result)
        self.metrics.observe_frame(result)
        self.stats.frames += 1
        self.stats.latency_ms.append((time.monotonic() - result.frame.read_time) * 1000)
        assert result.detections.tracker_id is not None
        self.stats.tracks_seen[result.frame.camera].update(int(t) for t in result.detections.tracker_id)
        self.last_results[result.frame.camera] = result

    def forward_camera_states(self) -> None:
        """Camera states arrive from capture threads; publish them from this thread."""
        while self._status_queue:
            status = self._status_queue.popleft()
            log.info("camera %s: %s %s", status.camera, status.state, status.detail)
            self.metrics.observe_camera(status)
            self.publisher.camera_state(status)

    def report_stats(self) -> None:
        """Periodic health: camera figures to the metrics endpoint, agent stats to MQTT."""
        for src in self.sources.values():
            self.metrics.observe_camera(src.status())
        self.publisher.stats(self.stats_payload())

    def stats_payload(self) -> dict[str, Any]:
        cams = {name: state_payload(src.status()) for name, src in self.sources.items()}
        return {
            **self.stats.as_dict(),
            "pipeline": self.pipeline.counters(),
            "cameras": cams,
            "mqtt": self.publisher.counters(),
        }

    def _should_stop(self) -> bool:
        if self.stop_event.is_set():
            return True
        if self.max_seconds and time.monotonic() - self.stats.started >= self.max_seconds:
            return True
        return bool(self.sources) and all(src.ended for src in self.sources.values())


def model_name(cfg: AgentConfig) -> str:
    """The configured model: an ONNX file or built-in name, or a TensorRT engine."""
    backend = cfg.inference.backend
    return backend.model if isinstance(backend, OnnxRuntimeBackend) else backend.engine


def _apply_overrides(cfg: AgentConfig, args: argparse.Namespace) -> AgentConfig:
    updates: dict[str, Any] = {}
    if args.preview:
        updates["output.preview.path"] = args.preview
    if args.console:
        updates["output.console"] = True
    return cfg.with_updates(updates, "--preview/--console") if updates else cfg


def print_summary(app: AffectlineApp) -> None:
    """What the run found: persons per camera, their last estimates, where the preview is."""
    print("\n== Affectline run summary ==")
    print(format_table(person_rows(app.last_results)))
    for cam, ids in sorted(app.stats.tracks_seen.items()):
        print(f"camera {cam}: {len(ids)} person track(s)")
    stats = app.stats.as_dict()
    print(
        f"frames {stats['frames']}, frame-to-output latency p50 {stats['latency_ms_p50']} ms, "
        f"p99 {stats['latency_ms_p99']} ms, loop errors {stats['loop_errors']}"
    )
    print(f"mqtt: {app.publisher.counters()}")
    for status in app.silent_cameras:
        print(f"no frame: {status.detail} ({status.state})")  # the detail names the camera
    if app.preview:
        for cam, path in sorted(app.preview.paths.items()):
            print(f"annotated video ({cam}): {path}")


def cli_run(args: argparse.Namespace) -> int:
    """Entry point of ``affectline run``; returns the exit code.

    ``args.stop_event``, when `edge_agent.cli.main` set it, is the event its early SIGINT/SIGTERM
    handlers set (installed before this module and its heavy imports loaded).
    """
    stop = getattr(args, "stop_event", None) or stop_on_signals()
    try:
        cfg = load_config(args.config) if args.config else parse_config(DEMO_CONFIG, "built-in demo config")
        cfg = resolve_samples(_apply_overrides(cfg, args), stop)
        if problems := missing_files(cfg):
            raise ConfigError(args.config or "built-in demo config", problems)
    except SampleInterrupted:
        log.info("stop requested during the sample download: nothing was started")
        return 0
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    except SampleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logging.getLogger().setLevel(cfg.log_level)
    if stop.is_set():
        log.info("stop requested before start-up: nothing was started")
        return 0
    try:
        app = AffectlineApp(cfg, max_seconds=args.max_seconds, stop_event=stop)
        code = app.start()
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(app)
    if code:
        names = ", ".join(s.camera for s in app.silent_cameras)
        print(f"error: no frame from camera(s) {names} (see the summary above)", file=sys.stderr)
    return code
