"""Calibration samples from a user's own camera or clip, through the agent's own stages.

Frames come from `edge_agent.sources` (the agent's capture code, so RTSP/USB/GStreamer/file behave
as in deployment), faces from `edge_agent.detect` with the agent's detection config, and both
views from `edge_agent.infer.Preprocessor` (the agent's crop and normalisation code). The INT8
scales are therefore fitted on exactly the inputs the model will get on that camera.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calibration.datasets import CalibrationDataError, luma
from calibration.viewset import ViewSet
from edge_agent.config import Camera, Detection, redact
from edge_agent.modelmeta import ModelMeta

if TYPE_CHECKING:
    from edge_agent.infer import Preprocessor
    from edge_agent.sources import Source
    from edge_agent.structures import Frame

DEFAULT_EVERY_S = 0.2


def camera_from_uri(uri: str) -> Camera:
    """A camera config for ``--from-video``: ``rtsp(s)://...``, a USB index, a GStreamer pipeline or a file.

    Raises:
        CalibrationDataError: a file path that does not exist, or nothing recognisable.
    """
    if uri.startswith(("rtsp://", "rtsps://")):
        source: dict[str, object] = {"type": "rtsp", "url": uri}
    elif uri.isdigit():
        source = {"type": "usb", "index": int(uri)}
    elif "appsink" in uri:
        source = {"type": "gstreamer", "pipeline": uri}
    elif Path(uri).is_file():
        source = {"type": "file", "path": uri}
    else:
        raise CalibrationDataError(
            f"--from-video={uri!r}: not an rtsp:// URL, a USB index, a GStreamer pipeline with appsink, "
            "or an existing video file"
        )
    return Camera.model_validate({"name": "calibration", "source": source})


def source_label(camera: Camera) -> str:
    """Where a camera's frames come from, as the samples' origins name it.

    Sets cut from different clips or streams must never share an origin: ``engines quantize``
    refuses an evaluation set that shares one with its calibration set. Files are named by their
    resolved path, streams by their URL (credentials hidden), pipelines by a hash of their text.
    """
    src = camera.source
    if src.type == "file":
        return str(Path(src.path).resolve())
    if src.type == "rtsp":
        return redact(src.url)
    if src.type == "usb":
        return f"usb{src.index}"
    return "gstreamer-" + hashlib.sha256(src.pipeline.encode()).hexdigest()[:12]


def recording_label(camera: Camera, started_unix: float) -> str:
    """`source_label`, plus the UTC start of this recording for live sources.

    Two recordings of one file hold the same frames and rightly share origins; two recordings of one
    live camera hold different frames (docs/jetson.md calibrates on one and checks on the other), so
    their origins must differ although both clocks start at 0 s.
    """
    label = source_label(camera)
    if camera.source.type == "file":
        return label
    return f"{label}@{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started_unix))}"


@dataclass(frozen=True)
class VideoCapture:
    """What a video calibration run saw.

    Attributes:
        frames: Frames read.
        frames_with_faces: Frames where the detector found at least one face.
        faces: Face views cut (before thinning to ``n``).
        seconds: Stream seconds covered.
    """

    frames: int
    frames_with_faces: int
    faces: int
    seconds: float


def video_views(
    meta: ModelMeta,
    camera: Camera,
    seconds: float,
    n: int,
    detection: Detection | None = None,
    every_s: float = DEFAULT_EVERY_S,
) -> tuple[ViewSet, VideoCapture]:
    """Person/scene views of the faces seen in ``seconds`` of a camera or clip.

    Args:
        meta: Model metadata (geometry, normalisation, input names).
        camera: Camera config (see `camera_from_uri`).
        seconds: Stream time to watch (clip time for files, wall time for live sources), (0, 3600].
        n: Samples wanted; if more faces are seen, ``n`` are kept evenly spread over time.
        detection: The agent's detection config (default: its defaults).
        every_s: Minimum stream time between frames used, in [0, 60], so samples are not
            near-duplicates.

    Raises:
        CalibrationDataError: bad arguments, or no face found in the window.
    """
    from edge_agent.detect import build_detector
    from edge_agent.infer import Preprocessor
    from edge_agent.sources import open_source

    _check_window(seconds, n, every_s)
    pre = Preprocessor(meta)
    detector = build_detector(detection or Detection())
    source = open_source(camera)
    faces = _Faces(pre)
    tally = _Tally()
    label = recording_label(camera, time.time())
    try:
        source.start()
        for t_stream, frame in _spaced_frames(source, camera, seconds, every_s, tally):
            det = detector.detect(frame)
            boxes = det.face_xyxy[det.has_face] if det.face_xyxy is not None else np.zeros((0, 4))
            if len(boxes):
                tally.frames_with_faces += 1
                faces.add(frame.image, boxes, f"video:{label}@{t_stream:.2f}s")
    finally:
        source.close()
        detector.close()
    if not tally.frames:
        raise CalibrationDataError(
            f"--from-video: no frame could be read from {label} in {seconds} s "
            "(not a video OpenCV can read, or a stream that sent nothing)"
        )
    if not faces.origin:
        raise CalibrationDataError(
            f"no face found in {tally.frames} frames of the video; point the camera at people "
            "or use a longer --seconds"
        )
    seen = VideoCapture(tally.frames, tally.frames_with_faces, len(faces.origin), max(tally.t_stream, 0.0))
    return faces.spread(meta, n), seen


def _check_window(seconds: float, n: int, every_s: float) -> None:
    if not 0 < seconds <= 3600:
        raise CalibrationDataError(f"--seconds={seconds}: must be in (0, 3600]")
    if n < 1:
        raise CalibrationDataError(f"n={n}: must be >= 1")
    if not 0 <= every_s <= 60:
        raise CalibrationDataError(f"--every={every_s}: must be in [0, 60] seconds")


@dataclass
class _Tally:
    """Counters of one watch, for `VideoCapture` and the no-face message."""

    frames: int = 0
    frames_with_faces: int = 0
    t_stream: float = 0.0


def _spaced_frames(
    source: Source, camera: Camera, seconds: float, every_s: float, tally: _Tally
) -> Iterator[tuple[float, Frame]]:
    """Frames at least ``every_s`` apart in stream time, until ``seconds`` of stream have passed.

    Yields:
        ``(stream time in s, frame)``. A live source that stalls ends the watch 30 s after the
        window, so a dead camera cannot hang calibration.
    """
    start = time.monotonic()
    last_used = -np.inf
    while not source.ended and time.monotonic() - start < seconds + 30:
        frame = source.read(timeout=0.5)
        if frame is None:
            continue
        tally.frames += 1
        fps = source.source_fps
        # Clip time for files (decoding may run faster or slower than real time), wall time live.
        t_stream = frame.index / fps if camera.source.type == "file" and fps > 0 else frame.t_mono - start
        tally.t_stream = t_stream
        if t_stream > seconds:
            return
        if t_stream - last_used >= every_s:
            last_used = t_stream
            yield t_stream, frame


class _Faces:
    """Both views of every face seen, with where each came from."""

    def __init__(self, pre: Preprocessor) -> None:
        self.pre = pre
        self.views: dict[str, list[np.ndarray]] = {}
        self.origin: list[str] = []

    def add(self, image: np.ndarray, boxes: np.ndarray, where: str) -> None:
        for name, arr in self.pre.views(image, boxes).items():
            self.views.setdefault(name, []).append(arr)
        self.origin += [f"{where}#{i}" for i in range(len(boxes))]

    def spread(self, meta: ModelMeta, n: int) -> ViewSet:
        """``n`` of the faces (all if fewer), evenly spread over the watch, normalised for the model."""
        count = len(self.origin)
        keep = np.unique(np.linspace(0, count - 1, min(n, count)).round().astype(np.int64))
        raw = {name: np.concatenate(arrs)[keep] for name, arrs in self.views.items()}
        person = raw[meta.input_for("person").name]
        return ViewSet(
            {name: self.pre.normalise(name, arr) for name, arr in raw.items()},
            np.full(len(keep), -1, np.int64),
            luma(np.ascontiguousarray(person)),
            np.array(self.origin)[keep],
            meta.classes,
        )
