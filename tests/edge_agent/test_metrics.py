"""Prometheus endpoint: exposition format, pipeline/publisher samples, and the HTTP server."""

from __future__ import annotations

import dataclasses
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from edge_agent.config import Metrics, Mqtt
from edge_agent.metrics import (
    CONTENT_TYPE,
    AgentMetrics,
    MetricsServer,
    Sample,
    exposition,
    publisher_samples,
)
from edge_agent.publish import Publisher
from edge_agent.structures import CameraStatus
from tests.edge_agent.conftest import CLASSES, frame_result

# One sample line of the text format: name, optional {labels}, value.
LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]\w*="([^"\\]|\\.)*",?)*\})? (NaN|[+-]Inf|-?[0-9.e+-]+)$'
)


def _check_format(text: str) -> None:
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or LINE.match(line), line


@pytest.mark.parametrize(
    "samples, expected",
    [
        ([], ""),
        ([Sample("up", 1.0)], "# HELP up up\n# TYPE up gauge\nup 1\n"),
        ([Sample("x", float("nan")), Sample("x", float("inf"), {"a": "1"})], 'x NaN\nx{a="1"} +Inf\n'),
        ([Sample("q", 0.25, {"path": 'a"b\\c\nd'})], 'q{path="a\\"b\\\\c\\nd"} 0.25\n'),
        (
            [
                Sample("s_sum", 1.5, kind="summary", help="lat"),
                Sample("s_count", 3, kind="summary", help="lat"),
            ],
            "# HELP s lat\n# TYPE s summary\ns_sum 1.5\ns_count 3\n",
        ),
    ],
)
def test_exposition(samples: list[Sample], expected: str) -> None:
    text = exposition(samples)
    assert text.endswith(expected)
    _check_format(text)


def test_agent_metrics_from_frames_and_status() -> None:
    metrics = AgentMetrics()
    for i, ms in enumerate([10.0, 30.0]):
        result = frame_result("cam", i, [(1, 0), (2, 1)][: i + 1])
        stage_ms = {"detect": ms, "infer": 5.0, "detect_thread": 60.0, "detect_age": 100.0 * (i + 1)}
        metrics.observe_frame(dataclasses.replace(result, stage_ms=stage_ms))
    metrics.observe_camera(CameraStatus("cam", "reconnecting", fps=0.5, frames=40, drops=3))
    metrics.set_queue_depth("cam/frames", 2)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in metrics.samples()}
    cam = (("camera", "cam"),)
    assert got[("affectline_frames_processed_total", cam)] == 2
    assert got[("affectline_tracks", cam)] == 2
    assert got[("affectline_stage_seconds_sum", (("camera", "cam"), ("stage", "detect")))] == pytest.approx(
        0.04
    )
    assert got[("affectline_stage_seconds_count", (("camera", "cam"), ("stage", "detect")))] == 2
    # Off-path figures of a threaded detector get their own summaries, not a stage label.
    assert {dict(k[1]).get("stage") for k in got if k[0] == "affectline_stage_seconds_sum"} == {
        "detect",
        "infer",
    }
    assert got[("affectline_detection_age_seconds_sum", cam)] == pytest.approx(0.3)
    assert got[("affectline_detector_thread_seconds_count", cam)] == 2
    assert got[("affectline_camera_up", cam)] == 0.0 and got[("affectline_camera_drops_total", cam)] == 3
    assert got[("affectline_queue_depth", (("queue", "cam/frames"),))] == 2
    _check_format(exposition(metrics.samples()))


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    pub = Publisher(Mqtt(), "a1", ["cam"], CLASSES)  # not started: disconnected, counters at zero
    agent = AgentMetrics()
    agent.observe_camera(CameraStatus("cam", "online", fps=25.0))
    srv = MetricsServer(Metrics(enabled=True, port=0), [agent.samples, lambda: publisher_samples(pub)])
    srv.start()
    yield srv
    srv.close()


def test_server_serves_metrics(server: MetricsServer) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == CONTENT_TYPE
        text = resp.read().decode()
    _check_format(text)
    assert 'affectline_camera_fps{camera="cam"} 25' in text
    assert "affectline_mqtt_connected 0" in text
    assert 'affectline_mqtt_messages_total{kind="events",result="overflow"} 0' in text
    assert text.count("# TYPE affectline_mqtt_messages_total counter") == 1


@pytest.mark.parametrize("path, status", [("/", 404), ("/metricsx", 404)])
def test_server_other_paths(server: MetricsServer, path: str, status: int) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5)
    assert err.value.code == status


@pytest.mark.parametrize(
    "message",
    ["boom", "line one\r\nX-Injected: 1", "caméra ☃ failed"],  # a header line, non-latin-1 text
)
def test_broken_source_gives_500(message: str) -> None:
    def broken() -> list[Sample]:
        raise RuntimeError(message)

    srv = MetricsServer(Metrics(port=0), [broken])
    srv.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5)
        assert err.value.code == 500 and err.value.reason == "metrics source failed"
        assert "X-Injected" not in err.value.headers
    finally:
        srv.close()


def test_taken_port_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"metrics.host/metrics.port 127.0.0.1:{port}: cannot listen"):
            MetricsServer(Metrics(port=port), []).start()
