"""Calibration samples from a user's own camera or clip, through the agent's own stages.

Frames come from `edge_agent.sources` (the agent's capture code, so RTSP/USB/GStreamer/file behave
as in deployment), faces from `edge_agent.detect` with the agent's detection config, and both
views from `edge_agent.infer.Preprocessor` (the agent's crop and normalisation code). The INT8
scales are therefore fitted on exactly the inputs the model will get on that camera.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.datasets import CalibrationDataError, luma
from calibration.viewset import ViewSet
from edge_agent.config import Camera, Detection
from edge_agent.modelmeta import ModelMeta

log = logging.getLogger(__name__)


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
    every_s: float = 0.2,
) -> tuple[ViewSet, VideoCapture]:
    """Person/scene views of the faces seen in ``seconds`` of a camera or clip.

    Args:
        meta: Model metadata (geometry, normalisation, input names).
        camera: Camera config (see `camera_from_uri`).
        seconds: Stream time to watch (clip time for files, wall time for live sources), (0, 3600].
        n: Samples wanted; if more faces are seen, ``n`` are kept evenly spread over time.
        detection: The agent's detection config (default: its defaults).
        every_s: Minimum stream time between frames used, so samples are not near-duplicates.

    Raises:
        CalibrationDataError: bad arguments, or no face found in the window.
    """
    from edge_agent.detect import build_detector
    from edge_agent.infer import Preprocessor
    from edge_agent.sources import open_source

    if not 0 < seconds <= 3600:
        raise CalibrationDataError(f"--seconds={seconds}: must be in (0, 3600]")
    if n < 1:
        raise CalibrationDataError(f"n={n}: must be >= 1")
    pre = Preprocessor(meta)
    detector = build_detector(detection or Detection())
    source = open_source(camera)
    person_name, scene_name = meta.input_for("person").name, meta.input_for("scene").name
    views: dict[str, list[np.ndarray]] = {person_name: [], scene_name: []}
    origin: list[str] = []
    frames = with_faces = 0
    t_stream = last_used = -np.inf
    try:
        source.start()
        start = time.monotonic()
        while not source.ended and time.monotonic() - start < seconds + 30:
            frame = source.read(timeout=0.5)
            if frame is None:
                continue
            frames += 1
            fps = source.source_fps
            t_stream = frame.index / fps if camera.source.type == "file" and fps > 0 else frame.t_mono - start
            if t_stream > seconds:
                break
            if t_stream - last_used < every_s:
                continue
            last_used = t_stream
            det = detector.detect(frame)
            faces = det.face_xyxy[det.has_face] if det.face_xyxy is not None else np.zeros((0, 4))
            if not len(faces):
                continue
            with_faces += 1
            for name, arr in pre.views(frame.image, faces).items():
                views[name].append(arr)
            origin += [f"video:{camera.name}@{t_stream:.2f}s#{i}" for i in range(len(faces))]
    finally:
        source.close()
        detector.close()
    if not origin:
        raise CalibrationDataError(
            f"no face found in {frames} frames of the video; point the camera at people "
            "or use a longer --seconds"
        )
    person = np.concatenate(views[person_name])
    scene = np.concatenate(views[scene_name])
    keep = np.unique(np.linspace(0, len(origin) - 1, min(n, len(origin))).round().astype(np.int64))
    vs = ViewSet(
        {
            person_name: pre.normalise(person_name, person[keep]),
            scene_name: pre.normalise(scene_name, scene[keep]),
        },
        np.full(len(keep), -1, np.int64),
        luma(np.ascontiguousarray(person[keep])),
        np.array(origin)[keep],
        meta.classes,
    )
    return vs, VideoCapture(frames, with_faces, len(origin), float(max(t_stream, 0.0)))
