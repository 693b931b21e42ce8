"""`affectline bench`: measurements come from a real run; soak verdicts from pure arithmetic."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_agent.bench import bench_clip, camera_name, decode
from edge_agent.config import ConfigError, parse_config
from edge_agent.cpu import cpu_flags, int8_kernel
from edge_agent.pipeline import Pipeline
from edge_agent.publish import Publisher
from edge_agent.soak import soak, soak_cameras, soak_verdict
from tests.edge_agent.conftest import Mosquitto, Recorder
from tests.model_factory import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pipeline_and_publisher(tmp_path: Path) -> Iterator[tuple[Pipeline, Publisher]]:
    model = make_tiny_model(tmp_path / "m.onnx")
    cfg = parse_config(
        {
            "cameras": [{"name": "x", "source": {"type": "file", "path": "-"}}],
            "inference": {"backend": {"type": "onnxruntime", "model": str(model)}},
            "mqtt": {"host": "embedded", "port": 0},
        }
    )
    pipe = Pipeline(cfg)
    pub = Publisher(cfg.mqtt, "bench", ["single_face", "soak"], pipe.classes)
    pub.start()
    yield pipe, pub
    pub.close()
    pipe.close()


def test_bench_clip_reports_every_frame(
    pipeline_and_publisher: tuple[Pipeline, Publisher], single_face_clip: Path
) -> None:
    report = bench_clip(*pipeline_and_publisher, str(single_face_clip))
    assert report["frames"] == 72 and report["persons"] == 1 and report["fps"] > 0
    assert set(report["stage_ms"]) >= {"decode", "detect", "track", "infer", "smooth", "publish"}
    lat = report["frame_to_output_ms"]
    assert 0 < lat["p50"] <= lat["p99"]
    assert report["mirror_average"] is True and report["model_calls"] > 0  # the default, as reported
    assert report["model_file"].endswith("m.onnx")  # what ran, and on which INT8 kernels
    assert report["int8_kernels"] == int8_kernel(platform.machine(), cpu_flags())


def test_short_soak_runs_the_agent_and_samples_resources(tmp_path: Path, single_face_clip: Path) -> None:
    model = str(make_tiny_model(tmp_path / "m.onnx"))
    cfg = parse_config(
        {
            "cameras": [{"name": "x", "source": {"type": "file", "path": "-"}, "queue_size": 3}],
            "inference": {"backend": {"type": "onnxruntime", "model": model}},
            "mqtt": {"host": "embedded", "port": 0},
        }
    )
    cfg = soak_cameras(cfg, [str(single_face_clip)], ["loop"])
    assert cfg.cameras[0].queue_size == 3  # camera settings come from the config's first camera
    progress = tmp_path / "soak.json"
    report = soak(cfg, minutes=0.1, sample_s=1.0, progress=progress)
    samples = report["samples"]
    assert len(samples) >= 4 and progress.exists()
    assert all(s["rss_mb"] > 0 and s["fds"] > 0 and s["threads"] >= s["py_threads"] > 1 for s in samples)
    # Frames came through the real capture thread: looping (the clip is 72 frames, 2.4 s; the soak
    # 6 s) and paced at the clip's 30 fps, not read as fast as possible.
    assert report["cameras"]["loop"]["frames"] > 72 and report["frames"] > 0 and report["loop_errors"] == 0
    assert samples[-1]["captured"] <= 33 * samples[-1]["t_s"]
    assert report["mqtt"]["persons_sent"] > 0


def test_decode_stamps_media_time(single_face_clip: Path) -> None:
    t = np.array([d.frame.t_mono for d in decode(str(single_face_clip), "c", max_frames=10)])
    assert np.allclose(np.diff(t), np.diff(t)[0]) and np.diff(t)[0] == pytest.approx(1 / 30, rel=0.05)


@pytest.mark.parametrize(("consumer_s", "min_wait_s"), [(0.0, 0.0), (0.1, 0.25)])
def test_realtime_latency_counts_from_scheduled_arrival(
    single_face_clip: Path, consumer_s: float, min_wait_s: float
) -> None:
    """A consumer slower than the clip's 30 fps makes later frames wait: that wait is latency."""
    waited = []
    for d in decode(str(single_face_clip), "c", max_frames=5, realtime=True):
        waited.append(time.perf_counter() - d.t_start)
        time.sleep(consumer_s)
    # 5th frame: scheduled 4/30 s after the first, reached after 4 consumer sleeps.
    assert waited[-1] >= min_wait_s and (consumer_s or waited[-1] < 0.05)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], {"rss_growth_pct": None}),
        ([{"t_s": 10, "rss_mb": 100, "fds": 10, "threads": 5, "fps": 1}], {"rss_growth_pct": None}),
        (
            [
                {"t_s": 30, "rss_mb": 90, "fds": 9, "threads": 5, "fps": 1},
                {"t_s": 60, "rss_mb": 100, "fds": 10, "threads": 5, "fps": 1},
                {"t_s": 600, "rss_mb": 104, "fds": 10, "threads": 6, "fps": 1},
            ],
            {"rss_growth_pct": 4.0, "fd_growth": 0, "thread_growth": 1, "ok": False},
        ),
        (  # shorter than the warm-up: the last sample is compared with the first, not itself
            [
                {"t_s": 10, "rss_mb": 100, "fds": 10, "threads": 5, "fps": 1},
                {"t_s": 60, "rss_mb": 120, "fds": 11, "threads": 5, "fps": 1},
            ],
            {"rss_growth_pct": 20.0, "fd_growth": 1, "ok": False},
        ),
    ],
)
def test_soak_verdict_uses_warm_baseline(samples: list, expected: dict) -> None:
    verdict = soak_verdict(samples)
    for key, value in expected.items():
        assert verdict[key] == value


@pytest.mark.parametrize(("path", "name"), [("/a/b.c.mp4", "b_c"), ("x y.mov", "x_y"), ("/.mp4", "_mp4")])
def test_camera_name(path: str, name: str) -> None:
    assert camera_name(path) == name


def test_soak_ends_on_time_when_its_report_cannot_be_written(tmp_path: Path, single_face_clip: Path) -> None:
    """The progress file's folder vanished (or the disk is full): samples fail and are counted, the
    soak still stops after its minutes."""
    cfg = parse_config(
        {
            "cameras": [{"name": "x", "source": {"type": "file", "path": "-"}}],
            "inference": {
                "backend": {"type": "onnxruntime", "model": str(make_tiny_model(tmp_path / "m.onnx"))}
            },
            "mqtt": {"host": "embedded", "port": 0},
        }
    )
    t0 = time.monotonic()
    report = soak(
        soak_cameras(cfg, [str(single_face_clip)], ["loop"]), 0.05, 0.5, tmp_path / "gone" / "soak.json"
    )
    assert time.monotonic() - t0 < 30 and report["sample_errors"] >= 2 and report["frames"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--soak", "-1"], "argument --soak: -1: must be >= 0"),
        (["--soak", "nan"], "argument --soak: nan: must be a finite number >= 0"),
        (["--soak", "1", "--sample-s", "0"], "argument --sample-s: 0: must be > 0"),
        (["--frames", "-5"], "argument --frames: -5: must be >= 0"),
        (["--json", "/nonexistent-dir/x.json"], "--json=/nonexistent-dir/x.json: folder '/nonexistent-dir'"),
        (["--json", "/tmp"], "--json=/tmp: is a folder; name the report file, e.g. '/tmp/bench.json'"),
    ],
)
def test_bad_bench_arguments_are_refused_before_anything_runs(argv: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "bench", *argv, "clip.mp4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("clips", "message"),
    [
        (["missing.mp4"], "clip 'missing.mp4' is not a file"),
        (["README.md"], "clip 'README.md' is not a video OpenCV can read"),
        (["{good}", "typo.mp4"], "clip 'typo.mp4' is not a file"),  # found before the first clip runs
    ],
)
def test_unreadable_clips_are_refused_before_the_model_loads(
    clips: list[str], message: str, single_face_clip: Path
) -> None:
    argv = [c.replace("{good}", str(single_face_clip)) for c in clips]
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "bench", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # no clip ran


def test_bench_with_an_agent_config_stays_off_that_agents_broker(
    tmp_path: Path, mosquitto: Mosquitto, recorder: Callable[..., Recorder], single_face_clip: Path
) -> None:
    """`bench --config agent.yaml` takes the model and detector settings, not the broker: a retained
    `stopped` under the live agent's id would mark it down on every dashboard."""
    rec = recorder(mosquitto.port, "#")
    config = tmp_path / "agent.yaml"
    data = {
        "agent_id": "line-3",
        "cameras": [{"name": "door", "source": {"type": "file", "path": "unused"}}],
        "inference": {"backend": {"type": "onnxruntime", "model": str(make_tiny_model(tmp_path / "m.onnx"))}},
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
    }
    config.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "bench", "--config", str(config), str(single_face_clip)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "72 frames" in proc.stdout
    time.sleep(0.5)
    assert rec.messages == []


def test_soak_publishes_as_soak_and_keeps_config_rules(single_face_clip: Path) -> None:
    cfg = parse_config(
        {
            "agent_id": "line-3",
            "cameras": [{"name": "x", "source": {"type": "file", "path": "-"}}],
            "output": {"preview": {"path": "out/run.mp4"}},
        }
    )
    assert soak_cameras(cfg, [str(single_face_clip)], ["a"]).agent_id == "soak"
    with pytest.raises(ConfigError, match="output.preview.path: value 'out/run.mp4': one file for 2 cameras"):
        soak_cameras(cfg, [str(single_face_clip)] * 2, ["a", "b"])


def test_bad_bench_config_is_reported_like_validate(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "cameras: [{name: cam, source: {type: file, path: x.mp4}}]\ninference: {max_batch: 0}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "bench", "--config", str(config), "clip.mp4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"{config}: 1 problem(s)\n  inference.max_batch: value 0: ")
