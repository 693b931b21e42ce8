"""Detectors on real frames: BlazeFace (real mediapipe), SSD-MobileNetV2 (real cv2.dnn), ONNX contract."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from pydantic import ValidationError

from edge_agent.config import Detection, OnnxBodyDetector
from edge_agent.cpu import host_int8_kernel, needs_exact_int8
from edge_agent.detect import (
    Detector,
    DetectorResult,
    OnnxPersons,
    ThreadedDetector,
    build_detector,
    clip_boxes,
)
from edge_agent.infer import ModelLoadError
from edge_agent.structures import Detections, Frame
from tests.edge_agent.conftest import asks_exact_int8

# Frames of one-by-one-person-detection.mp4 (everyone walks away from the camera: no face visible).
PEOPLE_FRAMES = (120, 580, 1000, 1300)
EMPTY_FRAMES = (40, 460, 720)


def detection(**detector: Any) -> Detection:
    return Detection.model_validate({"detector": detector})


def frame_of(image: np.ndarray, index: int = 0) -> Frame:
    return Frame("cam", np.ascontiguousarray(image), index, 0.0, 0.0)


def read_frames(path: Path, indices: tuple[int, ...]) -> list[Frame]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    for i in indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, image = cap.read()
        assert ok, f"{path} has no frame {i}"
        frames.append(frame_of(image, i))
    cap.release()
    return frames


def assert_well_formed(det: Detections, frame: Frame) -> None:
    """Boxes inside the frame and finite; faces inside the frame where present."""
    w, h = frame.size
    assert det.face_xyxy is not None
    assert np.all(np.isfinite(det.xyxy))
    assert np.all(det.xyxy >= 0) and np.all(det.xyxy[:, [0, 2]] <= w) and np.all(det.xyxy[:, [1, 3]] <= h)
    faces = det.face_xyxy[det.has_face]
    assert np.all(faces >= 0) and np.all(faces[:, [0, 2]] <= w) and np.all(faces[:, [1, 3]] <= h)
    assert np.all(det.data["face_score"][~det.has_face] == 0)


@pytest.fixture(scope="module")
def blazeface() -> Iterator[Detector]:
    det = build_detector(Detection())
    yield det
    det.close()


@pytest.fixture(scope="module")
def ssd() -> Iterator[Detector]:
    det = build_detector(detection(type="ssd_mobilenet"))
    yield det
    det.close()


@pytest.fixture
def face_frames(single_face_clip: Path) -> list[Frame]:
    return read_frames(single_face_clip, (0, 12, 24, 36, 48, 60, 71))


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    ("boxes", "clipped", "keep"),
    [
        (np.zeros((0, 4)), np.zeros((0, 4)), []),
        ([[np.nan, 0, 10, 10]], [[0, 0, 10, 10]], [False]),  # NaN never survives
        ([[-5, -5, -1, -1]], [[0, 0, 0, 0]], [False]),  # wholly outside
        ([[20, 5, 30, 5]], [[20, 5, 30, 5]], [False]),  # zero height
        ([[-5, 2, 10, 50]], [[0, 2, 10, 40]], [True]),  # partly outside: clipped
        (
            [[1, 2, 3, 4], [10, 50, 20, 60]],
            [[1, 2, 3, 4], [10, 40, 20, 40]],
            [True, False],
        ),  # below the image
    ],
)
def test_clip_boxes(boxes: Any, clipped: Any, keep: list[bool]) -> None:
    out, ok = clip_boxes(np.asarray(boxes, np.float32), 100, 40)
    np.testing.assert_array_equal(out, np.asarray(clipped, np.float32).reshape(-1, 4))
    assert ok.tolist() == keep


# ----------------------------------------------------------------------------- blazeface
def test_blazeface_finds_the_one_face_of_single_face(blazeface: Detector, face_frames: list[Frame]) -> None:
    for frame in face_frames:
        det = blazeface.detect(frame)
        assert len(det) == 1, f"frame {frame.index}"
        assert_well_formed(det, frame)
        assert det.face_xyxy is not None and det.has_face.all()
        face, person = det.face_xyxy[0], det.xyxy[0]
        assert person[0] <= face[0] and person[1] <= face[1] and face[2] <= person[2] and face[3] <= person[3]
        assert det.confidence[0] == det.data["face_score"][0] >= 0.5


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((3, 500, 3), np.uint8),  # a strip thinner than any face
        np.zeros((360, 640, 3), np.uint8),
        np.full((360, 640, 3), 128, np.uint8),
        np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8),
    ],
    ids=["empty", "1px", "strip", "black", "grey", "noise"],
)
@pytest.mark.parametrize("which", ["blazeface", "ssd"])
def test_no_one_on_blank_or_tiny_frames(
    request: pytest.FixtureRequest, which: str, image: np.ndarray
) -> None:
    det = request.getfixturevalue(which).detect(frame_of(image))
    assert len(det) == 0 and det.xyxy.shape == (0, 4)


@pytest.mark.parametrize(("min_face_px", "found"), [(4, 1), (100, 1), (300, 0), (1024, 0)])
def test_min_face_px_filters_small_faces(face_frames: list[Frame], min_face_px: int, found: int) -> None:
    # The face of single_face.mp4 is about 185 x 185 px.
    det = build_detector(Detection(min_face_px=min_face_px))
    try:
        assert len(det.detect(face_frames[0])) == found
    finally:
        det.close()


@pytest.mark.parametrize("cut", [0, 250, 300])
def test_face_cut_by_the_frame_edge_gives_boxes_inside(
    blazeface: Detector, face_frames: list[Frame], cut: int
) -> None:
    frame = frame_of(face_frames[0].image[:, cut:])  # the face spans x = 204..388
    det = blazeface.detect(frame)
    assert_well_formed(det, frame)
    assert len(det) <= 1


# ----------------------------------------------------------------------------- ssd + faces
def test_ssd_finds_people_seen_from_behind_without_faces(ssd: Detector, one_by_one_clip: Path) -> None:
    for frame in read_frames(one_by_one_clip, PEOPLE_FRAMES):
        det = ssd.detect(frame)
        assert len(det) == 1, f"frame {frame.index}"
        assert_well_formed(det, frame)
        assert not det.has_face.any(), f"frame {frame.index}: a face on someone seen from behind"
        assert det.confidence[0] >= 0.4
    for frame in read_frames(one_by_one_clip, EMPTY_FRAMES):
        assert len(ssd.detect(frame)) == 0, f"frame {frame.index}"


def test_ssd_person_carries_the_face_inside_it(ssd: Detector, face_frames: list[Frame]) -> None:
    for frame in face_frames[::3]:
        det = ssd.detect(frame)
        assert len(det) == 1 and det.has_face.all(), f"frame {frame.index}"
        assert_well_formed(det, frame)
        assert det.face_xyxy is not None
        face, person = det.face_xyxy[0], det.xyxy[0]
        assert person[0] <= face[0] and person[1] <= face[1] and face[2] <= person[2] and face[3] <= person[3]
        assert det.data["face_score"][0] >= 0.5


# ----------------------------------------------------------------------------- onnx contract
def write_onnx(path: Path, rows: list[list[float]], input_shape: list[int], last_axis: int = 7) -> Path:
    """A real ONNX model that ignores its image and always outputs ``rows`` as (1, 1, K, 7)."""
    table = np.asarray(rows, np.float32).reshape(1, 1, -1, last_axis)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["detections"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed_detections",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, list(table.shape))],
        initializer=[
            helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel().tolist()),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# single_face.mp4 is 640 x 360; its face spans x 204..388, y 113..297.
ROWS = [
    [0, 1, 0.9, 0.2, 0.2, 0.8, 1.0],  # a person around the face
    [0, 1, 0.2, 0.0, 0.0, 0.5, 0.5],  # below person_confidence
    [0, 3, 0.9, 0.0, 0.0, 0.5, 0.5],  # not a person
    [0, 1, 0.6, 0.9, -0.2, 1.3, 0.4],  # partly outside: clipped, no face
]


@pytest.mark.parametrize(
    "shape", [[1, 3, 64, 64], [1, 64, 64, 3], [1, 3, "h", "w"]], ids=["nchw", "nhwc", "dynamic"]
)
def test_onnx_detector_follows_the_documented_contract(
    tmp_path: Path, face_frames: list[Frame], shape: list[Any]
) -> None:
    path = write_onnx(tmp_path / "det.onnx", ROWS, shape)
    det = build_detector(detection(type="onnx", model_path=str(path), input_size=64))
    try:
        out = det.detect(face_frames[0])
    finally:
        det.close()
    assert_well_formed(out, face_frames[0])
    np.testing.assert_allclose(out.xyxy, [[128, 72, 512, 360], [576, 0, 640, 144]], atol=0.5)
    np.testing.assert_allclose(out.confidence, [0.9, 0.6])
    assert out.has_face.tolist() == [True, False]


def test_onnx_detector_runs_with_the_exact_int8_kernels_where_needed(tmp_path: Path) -> None:
    """A user's INT8 detector gives the same boxes on every x86 CPU (docs/benchmarks.md): it gets the
    agent's options, exact INT8 kernels included wherever this CPU needs them."""
    path = write_onnx(tmp_path / "det.onnx", ROWS, [1, 3, 64, 64])
    cfg = detection(type="onnx", model_path=str(path), input_size=64).detector
    assert isinstance(cfg, OnnxBodyDetector)
    options = OnnxPersons(cfg)._session.get_session_options()
    assert asks_exact_int8(options) is needs_exact_int8(host_int8_kernel())


@pytest.mark.parametrize(
    ("shape", "input_size", "last_axis", "message"),
    [
        ([1, 64, 64], 64, 7, "model_path: '.*det.onnx' has input shape \\[1, 64, 64\\], need \\(1,3,S,S\\)"),
        ([1, 3, 64, 64], 128, 7, "input_size: 128, but '.*det.onnx' takes \\[64, 64\\]"),
        ([1, 3, 64, 64], 64, 6, "model_path: '.*det.onnx' outputs shape \\(1, 1, 1, 6\\), need last axis 7"),
    ],
)
def test_onnx_detector_off_contract_stops_at_start_naming_the_key(
    tmp_path: Path, shape: list[int], input_size: int, last_axis: int, message: str
) -> None:
    path = write_onnx(
        tmp_path / "det.onnx", [[0, 1, 0.9, 0.1, 0.1, 0.2, 0.2, 0.0][:last_axis]], shape, last_axis
    )
    cfg = detection(type="onnx", model_path=str(path), input_size=input_size)
    with pytest.raises(ModelLoadError, match="^detection.detector." + message):
        build_detector(cfg)


def test_unreadable_onnx_detector_is_named(tmp_path: Path) -> None:
    path = tmp_path / "det.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(
        ModelLoadError, match=r"^detection.detector.model_path: '.*det.onnx' is not a usable ONNX"
    ):
        build_detector(detection(type="onnx", model_path=str(path)))


@pytest.mark.parametrize(
    ("detector", "message"),
    [
        (
            {"type": "onnx", "model_path": "/nonexistent/det.onnx"},
            "model_path: '/nonexistent/det.onnx' is not",
        ),
        (
            {"type": "ssd_mobilenet", "model_path": "/x.pb", "config_path": "/x.pbtxt"},
            "model_path: '/x.pb' is not",
        ),
    ],
)
def test_missing_model_files_are_named(detector: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match="^detection.detector." + message):
        build_detector(detection(**detector))


def test_ssd_files_come_in_pairs() -> None:
    with pytest.raises(ValidationError, match="model_path and config_path must be given together"):
        detection(type="ssd_mobilenet", model_path="/x.pb")


def test_unreadable_ssd_files_are_named(tmp_path: Path) -> None:
    model, config = tmp_path / "m.pb", tmp_path / "m.pbtxt"
    model.write_bytes(b"\x00garbage")
    config.write_text("garbage {")
    with pytest.raises(
        ModelLoadError, match=r"^detection.detector: '.*m.pb' with '.*m.pbtxt' cannot be read"
    ):
        build_detector(detection(type="ssd_mobilenet", model_path=str(model), config_path=str(config)))


# ----------------------------------------------------------------------------- detector thread
def wait_for(thread: ThreadedDetector, camera: str, index: int, timeout_s: float = 20.0) -> DetectorResult:
    """Collect results of ``camera`` until the one for frame ``index`` arrives."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = thread.collect(camera)
        if done is not None and done.frame_index == index:
            return done
        time.sleep(0.005)
    raise AssertionError(f"no result for {camera} frame {index} within {timeout_s} s")


def test_detector_thread_gives_what_the_detector_gives(face_frames: list[Frame]) -> None:
    inline = build_detector(Detection())
    thread = ThreadedDetector(build_detector(Detection()))
    try:
        for frame in face_frames[:3]:
            thread.submit(frame)
            done = wait_for(thread, frame.camera, frame.index)
            want = inline.detect(frame)
            np.testing.assert_allclose(done.detections.xyxy, want.xyxy, atol=1e-3)
            assert done.t_mono == frame.t_mono and done.ms > 0
        assert thread.collect("cam") is None  # each result is handed out once
    finally:
        thread.close()
        inline.close()


def test_detector_thread_newest_frame_wins_and_replacements_are_counted(one_by_one_clip: Path) -> None:
    frames = read_frames(one_by_one_clip, PEOPLE_FRAMES)
    thread = ThreadedDetector(build_detector(detection(type="ssd_mobilenet")))
    try:
        for frame in frames:  # far faster than the ~80 ms SSD: the worker takes at most the first
            thread.submit(frame)
        done = wait_for(thread, "cam", frames[-1].index)
        assert len(done.detections) >= 1
        assert thread.replaced >= len(frames) - 2
        assert thread.errors == 0
    finally:
        thread.close()


def test_detector_thread_serves_cameras_in_turn(face_frames: list[Frame]) -> None:
    thread = ThreadedDetector(build_detector(Detection()))
    try:
        for camera in ("a", "b", "c"):
            thread.submit(dataclasses.replace(face_frames[0], camera=camera))
        for camera in ("a", "b", "c"):
            assert len(wait_for(thread, camera, face_frames[0].index).detections) == 1
        assert thread.replaced == 0
    finally:
        thread.close()


def test_detector_thread_counts_failures_and_keeps_going(face_frames: list[Frame]) -> None:
    broken = build_detector(Detection())
    broken.close()  # a released MediaPipe graph raises on use: a real failure, not a stand-in
    thread = ThreadedDetector(broken)
    try:
        thread.submit(face_frames[0])
        deadline = time.monotonic() + 10
        while thread.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert thread.errors == 1
        assert thread.collect("cam") is None
        thread.submit(face_frames[1])
        while thread.errors == 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert thread.errors == 2  # the thread survived the first failure
    finally:
        thread.close()  # closes the detector a second time, which must be harmless


def test_detector_thread_close_twice_releases_once(face_frames: list[Frame]) -> None:
    thread = ThreadedDetector(build_detector(detection(type="ssd_mobilenet")))
    thread.submit(face_frames[0])
    thread.close()
    thread.close()  # shutdown paths overlap (signal handler and finally): must not raise
    assert not any(t.name == "detector" and t.is_alive() for t in threading.enumerate())
