"""`affectline bench`: end-to-end throughput and latency of the real pipeline on real clips.

Every frame of each clip is decoded in the benchmark thread (so decode time counts and no frame
is dropped) and goes through detect -> track -> infer -> smooth -> publish (to the embedded
loopback broker). Reported per clip: frames/s, per-stage latency p50/p99, frame-to-output
latency p50/p99, CPU %, peak RSS and the number of distinct persons. ``--soak MINUTES`` instead
runs the real agent (capture threads, publisher, preview) on looping clips and samples RSS, open
descriptors, threads and fps over time (`edge_agent.soak`).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from edge_agent.config import AgentConfig, ConfigError, load_config, parse_config
from edge_agent.cpu import host_int8_kernel
from edge_agent.infer import ModelLoadError
from edge_agent.pipeline import Pipeline
from edge_agent.publish import Publisher
from edge_agent.samples import SampleError, sample_clip
from edge_agent.shutdown import stop_on_signals
from edge_agent.soak import soak, soak_cameras, write_reports
from edge_agent.structures import Frame

DEFAULT_CLIP = "single_face.mp4"


class Decoded(NamedTuple):
    frame: Frame
    t_start: float  # perf_counter() of arrival (before decoding, or the scheduled time in real time)
    decode_ms: float


def decode(
    path: str, camera: str, max_frames: int = 0, loop: bool = False, realtime: bool = False
) -> Iterator[Decoded]:
    """Decode every frame of a clip.

    Frames carry media time (start + position in the clip) as ``t_mono``, so seconds-based
    tracking and smoothing behave as on a live camera at the clip's frame rate, however fast we
    decode. ``realtime`` also waits for each frame's time, as a live camera delivers frames; what
    runs on wall-clock time (the detector thread) then sees what it would see live.
    """
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise OSError(f"cannot open video {path!r}")
    period = 1.0 / (cap.get(cv2.CAP_PROP_FPS) or 25.0)
    t0, p0, index = time.monotonic(), time.perf_counter(), 0
    try:
        while not max_frames or index < max_frames:
            t_start = time.perf_counter()
            if realtime:
                # Latency counts from the frame's scheduled arrival: when the pipeline falls
                # behind, the time the frame waited for it is part of its latency, as live.
                t_start = p0 + index * period
                time.sleep(max(0.0, t_start - time.perf_counter()))
            decode_start = time.perf_counter()
            ok, image = cap.read()
            if not ok:
                if loop and index:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                return
            frame = Frame(camera, image, index, t0 + index * period, time.time())
            yield Decoded(frame, t_start, (time.perf_counter() - decode_start) * 1000)
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


def bench_clip(
    pipeline: Pipeline, publisher: Publisher, path: str, max_frames: int = 0, realtime: bool = False
) -> dict[str, Any]:
    """Run one clip through the pipeline and publisher (as fast as it goes, or at the clip's rate
    with ``realtime``); return its measurements."""
    stages: dict[str, list[float]] = defaultdict(list)
    latency: list[float] = []
    persons: set[int] = set()
    camera = camera_name(path)
    wall0, cpu0 = time.perf_counter(), _cpu_s()
    frames = 0
    for frame, t_start, decode_ms in decode(path, camera, max_frames, realtime=realtime):
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
        "realtime": realtime,
        "frames": frames,
        "fps": round(frames / wall, 1) if wall else 0.0,
        "stage_ms": {name: _pct(v) for name, v in stages.items()},
        "frame_to_output_ms": _pct(latency),
        "cpu_percent": round(100 * (_cpu_s() - cpu0) / wall, 1) if wall else 0.0,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "persons": len(persons),
        "model_file": str(pipeline.inferencer.backend.path),
        "int8_kernels": host_int8_kernel(),  # what decides its speed here
        "model_calls": pipeline.inferencer.calls,
        "mirror_average": pipeline.inferencer.cfg.mirror_average,  # two model runs per call when on
        "pipeline": pipeline.counters(),
    }


def _bench_config(path: str | None) -> AgentConfig:
    """The config given with ``--config``, or the bench's built-in one."""
    if path:
        return load_config(path)
    demo = {
        "agent_id": "bench",
        "cameras": [{"name": "bench", "source": {"type": "file", "path": "unused"}}],
        "mqtt": {"host": "embedded", "port": 0},
    }
    return parse_config(demo, "built-in bench config")


def _off_the_agents_broker(cfg: AgentConfig) -> AgentConfig:
    """The detector/model/tracking/smoothing settings of ``cfg`` with the bench's own agent id and
    embedded broker: a deployed agent's broker never sees the bench, nor a `stopped` under its id."""
    bench = {"agent_id": "bench", "mqtt": {"host": "embedded", "port": 0}}
    return cfg.with_updates(bench, "the config as the bench runs it")


def format_report(r: dict[str, Any]) -> str:
    stages = "  ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in r["stage_ms"].items())
    return (
        f"{r['clip']}\n  {r['frames']} frames, {r['fps']} frames/s end to end, persons {r['persons']}, "
        f"CPU {r['cpu_percent']} %, peak RSS {r['peak_rss_mb']} MB\n"
        f"  frame-to-output ms p50/p99: {r['frame_to_output_ms']['p50']}/{r['frame_to_output_ms']['p99']}\n"
        f"  stage ms p50/p99: {stages}"
    )


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the bench arguments, checked before anything runs (a soak of an hour
    must not end in an unwritable report). The numbers' ranges are the flags' own (`edge_agent.cli`)."""
    if args.json and Path(args.json).is_dir():
        example = str(Path(args.json) / "bench.json")
        return f"--json={args.json}: is a folder; name the report file, e.g. {example!r}"
    if args.json and not Path(args.json).resolve().parent.is_dir():
        return f"--json={args.json}: folder {str(Path(args.json).resolve().parent)!r} does not exist"
    return None


def _clip_problem(clips: list[str]) -> str | None:
    """The first clip that is not a readable video, checked before the model loads and any clip
    runs (a typo in the last of several clips must not cost the others' results)."""
    for clip in clips:
        if not Path(clip).is_file():
            return f"clip {clip!r} is not a file"
        cap = cv2.VideoCapture(clip)
        readable = cap.isOpened() and cap.read()[0]
        cap.release()
        if not readable:
            return f"clip {clip!r} is not a video OpenCV can read"
    return None


def cli_bench(args: argparse.Namespace) -> int:
    """Entry point of ``affectline bench``."""
    problem = _argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        cfg = _bench_config(args.config)
        clips = args.clips or [str(sample_clip(DEFAULT_CLIP))]
        problem = _clip_problem(clips)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        if args.soak:  # the agent as configured (broker included), see `soak_cameras`
            return cli_soak(cfg, clips, args)
        cfg = _off_the_agents_broker(cfg)
        pipeline = Pipeline(cfg)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    except (SampleError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cameras = sorted({camera_name(c) for c in clips})
    publisher = Publisher(cfg.mqtt, cfg.agent_id, cameras, pipeline.classes)
    publisher.start()
    reports: list[dict[str, Any]] = []
    try:
        for clip in clips:
            report = bench_clip(pipeline, publisher, clip, args.frames, args.realtime)
            print(format_report(report))
            reports.append(report)
    finally:
        publisher.close("stopped")
        pipeline.close()
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    return 0


def cli_soak(cfg: AgentConfig, clips: list[str], args: argparse.Namespace) -> int:
    """``affectline bench --soak MINUTES``: the agent on looping clips; prints and writes the report."""
    names = [camera_name(c) for c in clips]
    if len(set(names)) < len(names):  # the same clip twice: two cameras all the same
        names = [f"{name}-{i}" for i, name in enumerate(names)]
    out = Path(args.json) if args.json else None
    stop = stop_on_signals()  # Ctrl-C ends the soak early; the report is still written
    report = soak(soak_cameras(cfg, clips, names), args.soak, args.sample_s, out, stop)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
    if out is not None:
        write_reports(out, [report])
    return 0
