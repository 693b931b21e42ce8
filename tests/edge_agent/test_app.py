"""`affectline run` end to end: real clip -> real pipeline -> real mosquitto -> subscriber.

The agent runs as a subprocess, exactly as a user starts it; payloads are checked against the
published JSON Schemas.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import pytest
import yaml

from tests.edge_agent.conftest import Received
from tests.model_factory import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "edge_agent" / "schemas"


def write_config(tmp_path: Path, port: int, cameras: list[dict[str, Any]], **extra: Any) -> Path:
    data = {
        "agent_id": "e2e",
        "cameras": cameras,
        "inference": {"backend": {"type": "onnxruntime", "model": str(make_tiny_model(tmp_path / "m.onnx"))}},
        "output": {"preview": {"path": str(tmp_path / "{camera}.mp4")}},
        "mqtt": {"host": "127.0.0.1", "port": port, "persons_hz": 5, "reconnect_min_s": 0.05, **extra},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def agent(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "run", str(config), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def validate(msg: Received) -> dict[str, Any]:
    kind = msg.topic.rsplit("/", 1)[1]
    payload = msg.json
    jsonschema.validate(
        payload,
        json.loads((SCHEMAS / f"{kind}.v1.json").read_text()),
        format_checker=jsonschema.FormatChecker(),
    )
    return payload


def frames_in(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def test_clip_to_subscriber(tmp_path: Path, mosquitto, recorder, single_face_clip: Path) -> None:
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    cfg = write_config(
        tmp_path, mosquitto.port, [{"name": "cam", "source": {"type": "file", "path": str(single_face_clip)}}]
    )
    proc = agent(cfg)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    msgs = rec.wait(
        lambda m: any(x.topic.endswith("/status") and x.json["state"] == "stopped" for x in m), 10
    )
    for m in msgs:
        validate(m)
    statuses = [m.json["state"] for m in msgs if m.topic.endswith("/status")]
    assert statuses[0] == "online" and statuses[-1] == "stopped"
    persons = [m.json for m in msgs if m.topic.endswith("/cam/persons")]
    ids = {p["track"] for msg in persons for p in msg["persons"]}
    assert persons and len(ids) == 1
    events = [m.json for m in msgs if m.topic.endswith("/cam/events")]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert events[0]["event"] == "track_started"
    states = [m.json["state"] for m in msgs if m.topic.endswith("/cam/state")]
    assert "online" in states and states[-1] == "stopped"
    assert frames_in(tmp_path / "cam.mp4") == 72
    assert "1 person track(s)" in out


def test_bad_camera_does_not_stop_the_others_but_fails_the_run(
    tmp_path: Path, mosquitto, recorder, single_face_clip: Path
) -> None:
    """The good camera does all its work; the run then exits 1 and names the camera (as `cp` does)."""
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    missing = tmp_path / "missing.mp4"
    cameras = [
        {"name": "good", "source": {"type": "file", "path": str(single_face_clip)}},
        {"name": "gone", "source": {"type": "file", "path": str(missing)}},
    ]
    proc = agent(write_config(tmp_path, mosquitto.port, cameras))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "error: no frame from camera(s) gone (see the summary above)" in err
    assert f"no frame: camera gone: file not found: {missing} (offline)" in out
    assert "no frame: camera good" not in out
    msgs = rec.wait(
        lambda m: any(x.topic.endswith("/status") and x.json["state"] == "stopped" for x in m), 10
    )
    gone = [m.json for m in msgs if m.topic.endswith("/gone/state")]
    assert any(s["state"] == "offline" and "missing.mp4" in s["detail"] for s in gone)
    assert frames_in(tmp_path / "good.mp4") == 72


def test_a_signal_stop_exits_0_even_with_a_camera_that_never_opened(
    tmp_path: Path, mosquitto, recorder, single_face_clip: Path
) -> None:
    """The operator stopped the run: that is not the failure of a camera it was still waiting for."""
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    cameras = [
        {
            "name": "cam",
            "source": {"type": "file", "path": str(single_face_clip), "loop": True, "realtime": True},
        },
        {"name": "gone", "source": {"type": "file", "path": str(tmp_path / "missing.mp4")}},
    ]
    proc = agent(write_config(tmp_path, mosquitto.port, cameras))
    rec.wait(lambda m: any(x.topic.endswith("/cam/persons") for x in m), 60)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err and "error:" not in err, err
    assert "no frame: camera gone: file not found:" in out


def test_sigterm_stops_cleanly(tmp_path: Path, mosquitto, recorder, single_face_clip: Path) -> None:
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    camera = {
        "name": "cam",
        "source": {"type": "file", "path": str(single_face_clip), "loop": True, "realtime": True},
    }
    proc = agent(write_config(tmp_path, mosquitto.port, [camera]))
    rec.wait(lambda m: any(x.topic.endswith("/cam/persons") for x in m), 60)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    msgs = rec.wait(
        lambda m: any(x.topic.endswith("/status") and x.json["state"] == "stopped" for x in m), 10
    )
    assert [m.json["state"] for m in msgs if m.topic.endswith("/status")][-1] == "stopped"
    assert frames_in(tmp_path / "cam.mp4") > 0  # finalised, playable


@pytest.mark.parametrize(
    ("model_bytes", "expected"),
    [(b"", "not a loadable ONNX model"), (b"\x08\x01garbage", "not a loadable ONNX model")],
)
def test_unreadable_model_is_one_clear_line(
    tmp_path: Path, model_bytes: bytes, expected: str, single_face_clip: Path
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(model_bytes)
    data = {
        "cameras": [{"name": "cam", "source": {"type": "file", "path": str(single_face_clip)}}],
        "inference": {"backend": {"type": "onnxruntime", "model": str(bad)}},
        "mqtt": {"host": "embedded", "port": 0},
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60


def test_one_preview_file_for_two_cameras_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """`--preview out.mp4` on the two-camera demo would point both cameras' writers at one file."""
    out = tmp_path / "out.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--preview", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("--preview/--console: 1 problem(s)")
    assert f"e.g. '{tmp_path}/out-{{camera}}.mp4'" in proc.stderr and not out.exists()


def test_preview_that_cannot_be_written_is_dropped_not_the_run(
    tmp_path: Path, mosquitto, recorder, single_face_clip: Path
) -> None:
    """The video folder cannot be made (here a file is in the way; in the field, a full or
    unmounted disk): the agent logs it, counts a loop error and goes on publishing."""
    (tmp_path / "blocker").write_text("not a folder")
    rec = recorder(mosquitto.port, "affectline/e2e/#")
    cfg = write_config(
        tmp_path, mosquitto.port, [{"name": "cam", "source": {"type": "file", "path": str(single_face_clip)}}]
    )
    proc = agent(cfg, "--preview", str(tmp_path / "blocker" / "{camera}.mp4"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "preview video disabled (loop error 1)" in err and "loop errors 1" in out
    msgs = rec.wait(
        lambda m: any(x.topic.endswith("/status") and x.json["state"] == "stopped" for x in m), 10
    )
    assert any(m.topic.endswith("/cam/persons") for m in msgs)
