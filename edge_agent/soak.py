"""``affectline bench --soak MINUTES``: the real agent on looping clips, sampled for resource growth.

The soak runs what ``affectline run`` runs (`edge_agent.app.AffectlineApp`): one capture thread
per clip (`edge_agent.sources.Source`, ``loop: true``, ``realtime: true``, so frames come at the
clip's rate and the oldest is dropped when the pipeline is slower), the configured model
(``auto`` unless the config names another), detector, tracker and smoother, the publisher
(to the configured broker, or the embedded one) and the preview writer, console and metrics
endpoint when the config enables them. Only the cameras are replaced: one per clip, with the
first configured camera's ``fps_cap``, ``queue_size``, ``roi`` and ``reconnect`` settings.

The app itself stops after ``minutes`` (``max_seconds``), so the soak ends on time even if sampling
fails. Every ``sample_s`` seconds a sampler thread records the process's RSS, open descriptors, OS
threads (Python's and native ones: ONNX Runtime, FFmpeg), CPU use and processed frames/s; the
verdict compares the first sample after one minute (warm-up) with the last.
A sample that cannot be taken or written is logged and counted (``sample_errors``), not fatal.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.app import AffectlineApp, model_name
from edge_agent.config import AgentConfig, FileSource
from edge_agent.cpu import host_int8_kernel
from edge_agent.publish import state_payload

log = logging.getLogger(__name__)

WARM_UP_S = 60.0
MAX_RSS_GROWTH_PCT = 5.0


def soak_cameras(cfg: AgentConfig, clips: list[str], names: list[str]) -> AgentConfig:
    """``cfg`` with one looping real-time file camera per clip, modelled on its first camera, and
    agent id ``soak``: on the configured broker, a soak must not publish as the live agent (its
    retained ``stopped`` would mark that agent down on every dashboard).

    Raises:
        ConfigError: the result breaks a config rule (e.g. one preview file for several clips).
    """
    template = cfg.cameras[0].model_dump()
    cameras = [
        {**template, "name": name, "source": {"type": "file", "path": clip, "loop": True, "realtime": True}}
        for clip, name in zip(clips, names, strict=True)
    ]
    return cfg.with_updates({"cameras": cameras, "agent_id": "soak"}, "affectline bench --soak")


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Sampler:
    """Samples the process while an app runs and stops the app after ``minutes``.

    Args:
        app: The app to watch (its `stop_event` ends the soak early, e.g. on SIGINT).
        minutes: Soak length.
        sample_s: Seconds between samples.
        progress: Rewritten with the report so far after every sample (None = not written), so
            a long soak that is killed still leaves its data.
    """

    def __init__(self, app: AffectlineApp, minutes: float, sample_s: float, progress: Path | None = None):
        self.app, self.minutes, self.sample_s, self.progress = app, minutes, sample_s, progress
        self.samples: list[dict[str, float]] = []
        self.errors = 0
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        deadline = self.t0 + self.minutes * 60
        last = (self.t0, self.app.stats.frames, _cpu_s())
        next_t = self.t0 + self.sample_s
        while not self.app.stop_event.wait(max(0.0, min(next_t, deadline) - time.monotonic())):
            now = time.monotonic()
            if now >= next_t:
                try:
                    last = self._sample(now, last)
                except Exception as exc:  # a full disk must not end the soak's sampling
                    self.errors += 1
                    log.warning("soak sample %d failed (%d so far): %s", len(self.samples), self.errors, exc)
                next_t += self.sample_s
            if now >= deadline:
                self.app.stop_event.set()

    def _sample(self, now: float, last: tuple[float, int, float]) -> tuple[float, int, float]:
        """Append one sample; returns (time, processed frames, CPU seconds) for the next window."""
        frames, cpu = self.app.stats.frames, _cpu_s()
        window = max(now - last[0], 1e-6)
        status = [src.status() for src in self.app.sources.values()]
        self.samples.append(
            {
                "t_s": round(now - self.t0, 1),
                "rss_mb": round(_proc_status("VmRSS") / 1024, 1),
                "fds": len(os.listdir("/proc/self/fd")),
                "threads": _proc_status("Threads"),
                "py_threads": threading.active_count(),
                "fps": round((frames - last[1]) / window, 1),
                "cpu_pct": round(100 * (cpu - last[2]) / window, 1),
                "load1": round(os.getloadavg()[0], 2),
                "captured": sum(s.frames for s in status),
                "dropped": sum(s.drops for s in status),
            }
        )
        if self.progress is not None:
            write_reports(self.progress, [soak_report(self.app, self)])
        return now, frames, cpu


def soak_verdict(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Growth from warm-up (first sample after the first minute, or the first sample) to the end.

    ``ok``: RSS grew less than `MAX_RSS_GROWTH_PCT` and descriptors and threads did not grow.
    """
    if len(samples) < 2:
        return {"rss_growth_pct": None, "fd_growth": None, "thread_growth": None, "ok": None}
    # The last sample is never its own baseline: a soak shorter than the warm-up compares with the first.
    warm = next((s for s in samples[:-1] if s["t_s"] >= WARM_UP_S), samples[0])
    last = samples[-1]
    verdict: dict[str, Any] = {
        "rss_growth_pct": round(100 * (last["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"], 2),
        "fd_growth": int(last["fds"] - warm["fds"]),
        "thread_growth": int(last["threads"] - warm["threads"]),
    }
    verdict["ok"] = (
        verdict["rss_growth_pct"] < MAX_RSS_GROWTH_PCT
        and verdict["fd_growth"] <= 0
        and verdict["thread_growth"] <= 0
    )
    return verdict


def soak_report(app: AffectlineApp, sampler: Sampler) -> dict[str, Any]:
    """What the soak ran and measured (also valid mid-run: the samples so far)."""
    cfg = app.cfg
    return {
        "clips": [c.source.path for c in cfg.cameras if isinstance(c.source, FileSource)],
        "minutes": sampler.minutes,
        "sample_s": sampler.sample_s,
        "model": app.pipeline.inferencer.meta.model_version,
        "model_config": model_name(cfg),
        "model_file": str(app.pipeline.inferencer.backend.path),
        "int8_kernels": host_int8_kernel(),
        "detector": cfg.detection.detector.type,
        "mqtt": {
            "host": f"{cfg.mqtt.host}:{cfg.mqtt.port}",
            "state": app.publisher.state,
            **{k: v for k, v in app.publisher.counters().items() if v},  # the non-zero ones
        },
        "preview": cfg.output.preview.path,
        "frames": app.stats.frames,
        "loop_errors": app.stats.errors,
        "cameras": {name: state_payload(src.status()) for name, src in app.sources.items()},
        "sample_errors": sampler.errors,
        "samples": list(sampler.samples),
        **soak_verdict(sampler.samples),
    }


def write_reports(path: Path, reports: list[dict[str, Any]]) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(reports, indent=2))
    tmp.replace(path)


def soak(
    cfg: AgentConfig,
    minutes: float,
    sample_s: float = 10.0,
    progress: Path | None = None,
    stop_event: threading.Event | None = None,
) -> dict[str, Any]:
    """Run the agent on ``cfg`` (see `soak_cameras`) for ``minutes``; sample every ``sample_s``.

    Args:
        cfg: The agent config, cameras already replaced by the looping clips.
        minutes: Soak length; a set ``stop_event`` (SIGINT) ends it earlier.
        sample_s: Seconds between samples.
        progress: JSON file rewritten after every sample (None = not written).
        stop_event: Signal handlers' event, if they were installed before the model load.

    Raises:
        ModelLoadError: the configured model cannot be used.
    """
    app = AffectlineApp(cfg, max_seconds=minutes * 60, stop_event=stop_event)
    sampler = Sampler(app, minutes, sample_s, progress)
    sampler.start()
    try:
        app.start()
    finally:
        app.stop_event.set()  # an app that ended by itself (a clip that will not loop) ends the sampler
        sampler.join()
    return soak_report(app, sampler)
