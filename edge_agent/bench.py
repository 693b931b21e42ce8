"""`affectline bench`: end-to-end throughput and latency of the real pipeline on real clips.

Every frame of each clip is decoded in the benchmark thread (so decode time counts and no frame
is dropped) and goes through detect -> track -> infer -> smooth -> publish (to the embedded
loopback broker). Reported per clip: frames/s, per-stage latency p50/p99, frame-to-output
latency p50/p99, CPU %, peak RSS and the number of distinct persons. ``--soak MINUTES`` loops a
clip and samples RSS, open descriptors, threads and fps over time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from edge_agent.config import AgentConfig, ConfigError, load_config, parse_config
from edge_agent.infer import ModelLoadError
from edge_agent.pipeline import Pipeline
from edge_agent.publish import Publisher
from edge_agent.samples import SampleError, sample_clip
from edge_agent.structures import Frame

DEFAULT_CLIP = "single_face.mp4"


class Decoded(NamedTuple):
    frame: Frame
    t_start: float  # perf_counter() before decoding: start of the frame-to-output latency
    decode_ms: float


def decode(path: str, camera: str, max_frames: int = 0, loop: bool = False) -> Iterator[Decoded]:
    """Decode every frame of a clip.

    Frames carry media time (start + position in the clip) as ``t_mono``, so seconds-based
    tracking and smoothing behave as on a live camera at the clip's frame rate, however fast we
    decode.
    """
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise OSError(f"cannot open video {path!r}")
    period = 1.0 / (cap.get(cv2.CAP_PROP_FPS) or 25.0)
    t0, index = time.monotonic(), 0
    try:
        while not max_frames or index < max_frames:
            t_start = time.perf_counter()
            ok, image = cap.read()
            if not ok:
                if loop and index:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                return
            frame = Frame(camera, image, index, t0 + index * period, time.time())
            yield Decoded(frame, t_start, (time.perf_counter() - t_start) * 1000)
            index += 1
    finally:
        cap.release()


def camera_name(path: str) -> str:
    """A valid camera name (MQTT topic level) for a clip."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)[:64] or "clip"


def _pct(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values or [0.0])
    return {"p50": round(float(np.percentile(arr, 50)), 2), "p99": round(float(np.percentile(arr, 99)), 2)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_clip(pipeline: Pipeline, publisher: Publisher, path: str, max_frames: int = 0) -> dict[str, Any]:
    """Run one clip through the pipeline and publisher; return its measurements."""
    stages: dict[str, list[float]] = defaultdict(list)
    latency: list[float] = []
    persons: set[int] = set()
    camera = camera_name(path)
    wall0, cpu0 = time.perf_counter(), _cpu_s()
    frames = 0
    for frame, t_start, decode_ms in decode(path, camera, max_frames):
        stages["decode"].append(decode_ms)
        result = pipeline.process([frame])[0]
        t0 = time.perf_counter()
        publisher.publish(result)
        stages["publish"].append((time.perf_counter() - t0) * 1000)
        for name, ms in result.stage_ms.items():
            stages[name].append(ms)
        latency.append((time.perf_counter() - t_start) * 1000)
        assert result.detections.tracker_id is not None
        persons.update(int(t) for t in result.detections.tracker_id)
        frames += 1
    wall = time.perf_counter() - wall0
    return {
        "clip": path,
        "frames": frames,
        "fps": round(frames / wall, 1) if wall else 0.0,
        "stage_ms": {name: _pct(v) for name, v in stages.items()},
        "frame_to_output_ms": _pct(latency),
        "cpu_percent": round(100 * (_cpu_s() - cpu0) / wall, 1) if wall else 0.0,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "persons": len(persons),
        "model_calls": pipeline.inferencer.calls,
    }


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def soak(
    pipeline: Pipeline, publisher: Publisher, path: str, minutes: float, sample_s: float = 10.0
) -> dict[str, Any]:
    """Loop a clip for ``minutes``; sample RSS (MB), open fds, threads and fps every ``sample_s``."""
    samples: list[dict[str, float]] = []
    deadline = time.monotonic() + minutes * 60
    next_sample, window = time.monotonic() + sample_s, 0
    for frame, _, _ in decode(path, "soak", loop=True):
        publisher.publish(pipeline.process([frame])[0])
        window += 1
        now = time.monotonic()
        if now >= next_sample:
            samples.append(
                {
                    "t_s": round(minutes * 60 - (deadline - now), 1),
                    "rss_mb": round(_proc_status("VmRSS") / 1024, 1),
                    "fds": len(os.listdir("/proc/self/fd")),
                    "threads": threading.active_count(),
                    "fps": round(window / sample_s, 1),
                }
            )
            next_sample, window = now + sample_s, 0
        if now >= deadline:
            break
    return {"clip": path, "minutes": minutes, "samples": samples, **soak_verdict(samples)}


def soak_verdict(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Growth after warm-up (first sample after the first minute, or the first sample) to the end."""
    if len(samples) < 2:
        return {"rss_growth_pct": None, "fd_growth": None, "thread_growth": None}
    warm = next((s for s in samples if s["t_s"] >= 60), samples[0])
    last = samples[-1]
    return {
        "rss_growth_pct": round(100 * (last["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"], 2),
        "fd_growth": int(last["fds"] - warm["fds"]),
        "thread_growth": int(last["threads"] - warm["threads"]),
    }


def _bench_config(path: str | None) -> AgentConfig:
    if path:
        return load_config(path)
    demo = {
        "agent_id": "bench",
        "cameras": [{"name": "bench", "source": {"type": "file", "path": "unused"}}],
        "mqtt": {"host": "embedded", "port": 0},
    }
    return parse_config(demo, "built-in bench config")


def format_report(r: dict[str, Any]) -> str:
    stages = "  ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in r["stage_ms"].items())
    return (
        f"{r['clip']}\n  {r['frames']} frames, {r['fps']} frames/s end to end, persons {r['persons']}, "
        f"CPU {r['cpu_percent']} %, peak RSS {r['peak_rss_mb']} MB\n"
        f"  frame-to-output ms p50/p99: {r['frame_to_output_ms']['p50']}/{r['frame_to_output_ms']['p99']}\n"
        f"  stage ms p50/p99: {stages}"
    )


def cli_bench(args: argparse.Namespace) -> int:
    """Entry point of ``affectline bench``."""
    try:
        cfg = _bench_config(args.config)
        clips = args.clips or [str(sample_clip(DEFAULT_CLIP))]
        pipeline = Pipeline(cfg)
    except ConfigError as exc:
        print(f"{exc.source}: " + "; ".join(exc.problems), file=sys.stderr)
        return 2
    except (SampleError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cameras = sorted({camera_name(c) for c in clips} | {"soak"})
    publisher = Publisher(cfg.mqtt, cfg.agent_id, cameras, pipeline.classes)
    publisher.start()
    reports: list[dict[str, Any]] = []
    try:
        for clip in clips:
            if not Path(clip).is_file():
                print(f"error: clip {clip!r} is not a file", file=sys.stderr)
                return 2
            if args.soak:
                report = soak(pipeline, publisher, clip, args.soak)
                print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
            else:
                report = bench_clip(pipeline, publisher, clip, args.frames)
                print(format_report(report))
            reports.append(report)
    finally:
        publisher.close("stopped")
        pipeline.close()
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    return 0
