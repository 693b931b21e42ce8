"""Typed containers that flow between pipeline stages.

`Frame` carries one decoded image with its clocks; `Detections` carries everything known about
the people in that frame as parallel numpy arrays (one row per person), validated on
construction, in the spirit of supervision's ``Detections``. Stages add columns to
``Detections.data`` (e.g. ``probs``) instead of passing positional tuples around.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        camera: Camera name from the config.
        image: BGR uint8 image, shape (H, W, 3).
        index: Frame counter of this camera since start (monotonic, gaps mean drops).
        t_mono: The frame's time on the ``time.monotonic()`` clock; used for all durations. Live
            sources stamp it at capture; a file read faster than real time stamps media time.
        t_wall: ``time.time()`` at capture; used only for timestamps sent to users.
        t_read: ``time.monotonic()`` when the frame was read (start of frame-to-output latency);
            None = same as ``t_mono``.
    """

    camera: str
    image: np.ndarray
    index: int
    t_mono: float
    t_wall: float
    t_read: float | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"Frame.image must be uint8 (H, W, 3), got {self.image.dtype} {self.image.shape}"
            )

    @property
    def read_time(self) -> float:
        """Monotonic time the frame was read."""
        return self.t_mono if self.t_read is None else self.t_read

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


def _as_2d(name: str, value: Any, n: int, cols: int, dtype: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.size == 0 and n == 0:
        return arr.reshape(0, cols)
    if arr.shape != (n, cols):
        raise ValueError(f"Detections.{name} must have shape ({n}, {cols}), got {arr.shape}")
    return arr


def _as_1d(name: str, value: Any, n: int, dtype: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"Detections.{name} must have shape ({n},), got {arr.shape}")
    return arr


@dataclass
class Detections:
    """People in one frame, as parallel arrays (row i describes person i).

    Attributes:
        xyxy: (N, 4) float32 person boxes, pixels, x1 < x2 and y1 < y2.
        confidence: (N,) float32 detector score in [0, 1].
        face_xyxy: (N, 4) float32 face boxes in pixels; NaN rows where no face was found.
        tracker_id: (N,) int64; -1 until the tracker assigns an id.
        data: extra per-person columns, each an array whose first axis has length N
            (``probs`` (N, C), ``valence_arousal`` (N, 2), ``quality`` (N,), ...).
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    face_xyxy: np.ndarray | None = None
    tracker_id: np.ndarray | None = None
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        n = 0 if xyxy.size == 0 else int(xyxy.shape[0])
        self.xyxy = _as_2d("xyxy", xyxy, n, 4, np.float32)
        self.confidence = _as_1d("confidence", self.confidence, n, np.float32)
        face = np.full((n, 4), np.nan, np.float32) if self.face_xyxy is None else self.face_xyxy
        self.face_xyxy = _as_2d("face_xyxy", face, n, 4, np.float32)
        ids = np.full(n, -1, np.int64) if self.tracker_id is None else self.tracker_id
        self.tracker_id = _as_1d("tracker_id", ids, n, np.int64)
        if not np.all(np.isfinite(self.xyxy)):
            raise ValueError("Detections.xyxy must be finite")
        if n and not np.all((self.xyxy[:, 2] > self.xyxy[:, 0]) & (self.xyxy[:, 3] > self.xyxy[:, 1])):
            raise ValueError("Detections.xyxy rows must satisfy x1 < x2 and y1 < y2")
        for key, value in list(self.data.items()):
            self.data[key] = self._check_column(key, value, n)

    @staticmethod
    def _check_column(key: str, value: Any, n: int) -> np.ndarray:
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise ValueError(f"Detections.data[{key!r}] must have first axis {n}, got {arr.shape}")
        return arr

    @classmethod
    def empty(cls) -> Detections:
        """A container with no people."""
        return cls(xyxy=np.zeros((0, 4), np.float32), confidence=np.zeros(0, np.float32))

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: Any) -> Detections:
        """Rows selected by an index array, boolean mask or slice (always returns Detections)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        assert self.face_xyxy is not None and self.tracker_id is not None
        return Detections(
            xyxy=self.xyxy[index],
            confidence=self.confidence[index],
            face_xyxy=self.face_xyxy[index],
            tracker_id=self.tracker_id[index],
            data={k: v[index] for k, v in self.data.items()},
        )

    def set(self, key: str, value: Any) -> None:
        """Add or replace a per-person column, validating its length."""
        self.data[key] = self._check_column(key, value, len(self))

    @property
    def has_face(self) -> np.ndarray:
        """(N,) bool: rows with a face box."""
        assert self.face_xyxy is not None
        return ~np.isnan(self.face_xyxy[:, 0])

    @classmethod
    def merge(cls, parts: list[Detections]) -> Detections:
        """Concatenate containers that share the same ``data`` columns."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        keys = set(parts[0].data)
        if any(set(p.data) != keys for p in parts):
            raise ValueError("Detections.merge needs the same data columns in every part")
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            confidence=np.concatenate([p.confidence for p in parts]),
            face_xyxy=np.concatenate([p.face_xyxy for p in parts if p.face_xyxy is not None]),
            tracker_id=np.concatenate([p.tracker_id for p in parts if p.tracker_id is not None]),
            data={k: np.concatenate([p.data[k] for p in parts]) for k in keys},
        )


@dataclass(frozen=True)
class FrameResult:
    """What the pipeline knows after processing one frame: handed to publisher and preview.

    ``detections`` holds the confirmed tracks alive in this frame, with ``tracker_id`` set and
    these ``data`` columns after smoothing (see `edge_agent.smooth`):
    ``probs`` (N, C) float32 smoothed distribution, ``valence_arousal`` (N, 2) float32 in
    [-1, 1], ``label`` (N,) int64 reported class index after hysteresis (-1 = not yet),
    ``confidence`` (N,) float32, ``seconds_observed`` (N,) float32.
    """

    frame: Frame
    detections: Detections
    labels: tuple[str, ...] = ()
    ended_tracks: tuple[int, ...] = ()
    stage_ms: dict[str, float] = field(default_factory=dict)


CameraState = Literal["starting", "online", "reconnecting", "offline", "stopped"]


@dataclass(frozen=True)
class CameraStatus:
    """Health of one camera, reported by its source (published retained on ``.../state``).

    Attributes:
        camera: Camera name.
        state: ``starting`` | ``online`` | ``reconnecting`` | ``offline`` | ``stopped``.
        fps: Frames per second delivered recently.
        frames: Frames captured since start.
        drops: Frames dropped since start (queue full, fps cap excluded).
        errors: Unreadable/corrupt frames skipped since start.
        reconnects: Reconnect attempts since start.
        detail: Human-readable reason for the last state change (no secrets, no URLs with passwords).
        t_wall: ``time.time()`` of this report.
    """

    camera: str
    state: CameraState
    fps: float = 0.0
    frames: int = 0
    drops: int = 0
    errors: int = 0
    reconnects: int = 0
    detail: str = ""
    t_wall: float = 0.0
