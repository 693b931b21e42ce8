"""Config schema: the shipped config is valid; every bad value names key path, value and rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_agent.config import ConfigError, load_config, missing_files, parse_config

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"cameras": [{"name": "cam", "source": {"type": "file", "path": "x.mp4"}}]}


def with_(path: str, value: object) -> dict:
    """MINIMAL with one key path (dots; digits index lists) set to value."""
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[keys[-1]] = value
    return data


def test_shipped_config_is_valid() -> None:
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.cameras[0].source.type == "file"
    assert cfg.metrics.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("cameras", [], "cameras: value []"),
        ("cameras.0.name", "", "cameras.0.name: value ''"),
        ("cameras.0.name", "a b", "cameras.0.name: value 'a b'"),
        ("cameras.0.source", {"type": "ftp"}, "cameras.0.source"),
        (
            "cameras.0.source",
            {"type": "rtsp", "url": "http://cam"},
            "cameras.0.source.url: value 'http://cam'",
        ),
        (
            "cameras.0.source",
            {"type": "rtsp", "url": "rtsp://cam/1", "backend": "opencv", "ffmpeg_options": {"x": "1"}},
            "ffmpeg_options {'x': '1'} need backend: pyav",
        ),
        (
            "cameras.0.source",
            {"type": "rtsp", "url": "rtsp://cam/1", "backend": "ffmpeg"},
            "cameras.0.source.backend: value 'ffmpeg'",
        ),
        (
            "cameras.0.source",
            {"type": "rtsp", "url": "rtsp://cam/1", "ffmpeg_options": {"probesize": [32]}},
            "cameras.0.source.ffmpeg_options.probesize: value [32]",
        ),
        ("cameras.0.source", {"type": "gstreamer", "pipeline": "v4l2src ! fakesink"}, "appsink"),
        ("cameras.0.source", {"type": "file"}, "cameras.0.source.path: required key is missing"),
        ("cameras.0.roi", [0.5, 0, 0.4, 1], "roi must satisfy"),
        ("cameras.0.fps_cap", -1, "cameras.0.fps_cap: value -1"),
        (
            "cameras.0.reconnect",
            {"initial_backoff_s": 10, "max_backoff_s": 1},
            "cameras.0.reconnect.max_backoff_s: value 1.0: must be >= initial_backoff_s (10.0)",
        ),
        (
            "tracking",
            {"low_threshold": 0.9, "high_threshold": 0.5},
            "tracking.low_threshold: value 0.9: must be <= high_threshold (0.5)",
        ),
        ("tracking.death_s", 0, "tracking.death_s: value 0"),
        ("smoothing.half_life_s", 0, "smoothing.half_life_s"),
        ("inference.backend", {"type": "tensorrt"}, "inference.backend.engine: required key is missing"),
        ("mqtt.port", 70000, "mqtt.port: value 70000"),
        (
            "mqtt",
            {"host": "broker", "port": 0},
            "mqtt.port: value 0: any free port only works with host: embedded",
        ),
        (
            "mqtt",
            {"reconnect_min_s": 5, "reconnect_max_s": 1},
            "mqtt.reconnect_max_s: value 1.0: must be >= reconnect_min_s (5.0)",
        ),
        ("mqtt.tls", {"ca_certs": "ca.crt"}, "mqtt.tls: value {...}: the embedded broker is loopback-only"),
        (
            "mqtt.tls",
            {"certfile": "a.pem"},
            "mqtt.tls.keyfile: value None: certfile and keyfile must be given together",
        ),
        (
            "detection.detector",
            {"type": "ssd_mobilenet", "model_path": "/x.pb"},
            "detection.detector.config_path: value None: model_path and config_path must be given together",
        ),
        ("mqtt.home_assistant_prefix", "", "mqtt.home_assistant_prefix: value ''"),
        ("mqtt.home_assistant_prefix", "ha/+", "mqtt.home_assistant_prefix: value 'ha/+'"),
        ("mqtt.home_assistant_prefix", "ha/", "mqtt.home_assistant_prefix: value 'ha/'"),
        ("detectoin", {}, "detectoin: value {...}: Extra inputs are not permitted"),
        (
            "output.preview.path",
            "out/{camera}.txt",
            "output.preview.path: value 'out/{camera}.txt': Value error, must end in one of .mp4",
        ),
        (
            "output.preview.path",
            "out/{camera}",
            "output.preview.path: value 'out/{camera}': Value error, must end in one of",
        ),
    ],
)
def test_bad_values_name_path_value_and_rule(path: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_(path, value))
    assert any(expected in line for line in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {}),
        (
            {"probesize": 32, "analyzeduration": 5e5, "x": 0.5},
            {"probesize": "32", "analyzeduration": "500000", "x": "0.5"},
        ),
    ],
)
def test_ffmpeg_option_numbers_are_passed_as_text(
    options: dict[str, object], expected: dict[str, str]
) -> None:
    source = {"type": "rtsp", "url": "rtsp://cam/1", "ffmpeg_options": options}
    cfg = parse_config(with_("cameras.0.source", source))
    assert cfg.cameras[0].source.ffmpeg_options == expected  # type: ignore[union-attr]
    assert cfg.cameras[0].source.backend == "pyav"  # type: ignore[union-attr]


def test_duplicate_camera_names_rejected() -> None:
    data = {"cameras": [MINIMAL["cameras"][0], MINIMAL["cameras"][0]]}
    with pytest.raises(ConfigError, match="repeated"):
        parse_config(data)


@pytest.mark.parametrize(
    ("cameras", "path", "problem"),
    [
        (
            2,
            "run.mp4",
            "output.preview.path: value 'run.mp4': one file for 2 cameras: put '{camera}' in it, "
            "e.g. 'run-{camera}.mp4'",
        ),
        (2, "out/run.mp4", "e.g. 'out/run-{camera}.mp4'"),
        (2, "out/{camera}.mp4", None),
        (1, "run.mp4", None),
        (2, None, None),
    ],
)
def test_preview_path_names_the_camera_when_there_are_several(
    cameras: int, path: str | None, problem: str | None
) -> None:
    cam = MINIMAL["cameras"][0]
    data = {
        "cameras": [{**cam, "name": f"cam{i}"} for i in range(cameras)],
        "output": {"preview": {"path": path}},
    }
    if problem is None:
        assert parse_config(data).output.preview.path == path
    else:
        with pytest.raises(ConfigError) as info:
            parse_config(data)
        assert problem in info.value.problems[0]


@pytest.mark.parametrize("source", ["config.yaml", "demo"])
def test_with_updates_round_trips_and_revalidates(source: str) -> None:
    from edge_agent.app import DEMO_CONFIG

    cfg = load_config(ROOT / source) if source != "demo" else parse_config(DEMO_CONFIG)
    assert cfg.with_updates({}, "none") == cfg
    updated = cfg.with_updates({"output.console": True, "output.preview.path": "p-{camera}.mp4"}, "flags")
    assert (updated.output.console, updated.output.preview.path) == (True, "p-{camera}.mp4")
    with pytest.raises(ConfigError, match="mqtt.port: value -1") as info:
        cfg.with_updates({"mqtt.port": -1}, "flags")
    assert info.value.source == "flags"


def test_every_problem_is_reported_at_once() -> None:
    data = with_("mqtt.port", -5)
    data["tracking"] = {"death_s": -1}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert len(info.value.problems) == 2


def test_env_secrets_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFFECTLINE_TEST_PW", "s3cret")
    cfg = parse_config(with_("mqtt.password", "${AFFECTLINE_TEST_PW}"))
    assert cfg.mqtt.password == "s3cret"


def test_missing_env_secret_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AFFECTLINE_NOPE", raising=False)
    with pytest.raises(ConfigError, match="mqtt.password: environment variable AFFECTLINE_NOPE is not set"):
        parse_config(with_("mqtt.password", "${AFFECTLINE_NOPE}"))


def test_missing_env_secret_does_not_hide_other_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AFFECTLINE_NOPE", raising=False)
    data = with_("cameras.0.source.path", "${AFFECTLINE_NOPE}")  # "" would fail the path rule too
    data["mqtt"] = {"port": 70000}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    problems = info.value.problems
    assert problems[0] == "cameras.0.source.path: environment variable AFFECTLINE_NOPE is not set"
    assert len(problems) == 2 and problems[1].startswith("mqtt.port: value 70000:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "expected a mapping"), ("a: [", "not valid YAML"), ("- 1", "expected a mapping")],
)
def test_not_a_config(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("cameras.0.source.path", "/nope/clip.mp4", []),  # a missing clip is a camera state, retried
        (
            "inference.backend",
            {"type": "onnxruntime", "model": "/nope/m.onnx"},
            ["inference.backend.model: '/nope/m.onnx'"],
        ),
        ("inference.backend", {"type": "onnxruntime", "model": "default"}, []),
        (
            "inference.backend",
            {"type": "tensorrt", "engine": "/nope/m.engine"},
            ["inference.backend.engine: '/nope/m.engine'"],
        ),
        (
            "detection.detector",
            {"type": "onnx", "model_path": "/nope/d.onnx"},
            ["detection.detector.model_path: '/nope/d.onnx'"],
        ),
        (
            "detection.detector",
            {"type": "ssd_mobilenet", "model_path": "/nope/d.pb", "config_path": "/nope/d.pbtxt"},
            [
                "detection.detector.model_path: '/nope/d.pb'",
                "detection.detector.config_path: '/nope/d.pbtxt'",
            ],
        ),
        ("mqtt.tls", {"ca_certs": "/nope/ca.crt"}, ["mqtt.tls.ca_certs: '/nope/ca.crt'"]),
        (
            "mqtt.tls",
            {"certfile": "/nope/c.crt", "keyfile": "/nope/c.key"},
            ["mqtt.tls.certfile: '/nope/c.crt'", "mqtt.tls.keyfile: '/nope/c.key'"],
        ),
    ],
)
def test_missing_files_are_named_by_key(path: str, value: object, expected: list[str]) -> None:
    data = with_(path, value)
    data.setdefault("mqtt", {})["host"] = "broker"  # TLS needs a real broker; the embedded one refuses it
    assert missing_files(parse_config(data)) == [f"{line} is not a file" for line in expected]


def test_files_that_exist_are_not_problems(tmp_path: Path) -> None:
    for name in ("d.onnx", "ca.crt"):
        (tmp_path / name).write_bytes(b"x")  # existence is all validate checks; loading checks content
    data = with_("detection.detector", {"type": "onnx", "model_path": str(tmp_path / "d.onnx")})
    data["mqtt"] = {"host": "broker", "tls": {"ca_certs": str(tmp_path / "ca.crt")}}
    assert missing_files(parse_config(data)) == []


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_a_config_naming_a_missing_file(tmp_path: Path, command: str) -> None:
    path = tmp_path / "c.yaml"
    data = with_("detection.detector", {"type": "onnx", "model_path": "/nope/d.onnx"})
    data["cameras"][0]["source"]["path"] = str(ROOT / "config.yaml")  # run must stop before reading it
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", command, str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"{path}: 1 problem(s)")
    assert "  detection.detector.model_path: '/nope/d.onnx' is not a file" in proc.stderr


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("content", "code"), [("cameras: []\nmqtt: {port: -1}\n", 2), (None, 0)])
def test_validate_cli_exit_code_and_no_traceback(tmp_path: Path, content: str | None, code: int) -> None:
    path = ROOT / "config.yaml"
    if content is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == code
    assert "Traceback" not in proc.stderr
    if not code:  # the file `auto` picks on this CPU, named for the operator
        assert "backend onnxruntime, model affectline-default" in proc.stdout and ".onnx)" in proc.stdout
    if code:
        assert "cameras: value []" in proc.stderr and "mqtt.port: value -1" in proc.stderr
