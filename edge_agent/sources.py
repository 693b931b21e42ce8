"""Camera sources: one capture thread per camera feeding a small bounded queue, plus a watchdog.

Supported ``source.type`` values (how each is opened is one entry of ``_OPENERS``):

- ``file``: any container FFmpeg decodes. ``loop`` restarts at the end. ``realtime: false`` (offline
  processing) is lossless: the capture thread waits for the consumer instead of dropping frames, and
  ``fps_cap`` paces reading. ``realtime: true`` paces reading at the file's fps and then behaves like
  a camera (latest frame wins, ``fps_cap`` skips frames).
- ``rtsp``: FFmpeg over TCP with open and read timeouts. ``backend: pyav`` (default) opens through
  PyAV (`edge_agent.pyav_capture`) with ``fpsprobesize=0`` and the source's ``ffmpeg_options``:
  0.8 s for a 10 fps camera; a packet its decoder refuses costs that frame (counted as an error),
  not the session. ``backend: opencv`` opens through OpenCV, whose pinned 4.11.0.86 Linux
  wheel ignores FFmpeg options (opencv/opencv#27091; ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` only forces
  TCP), so its open returns after FFmpeg has probed about 28 frames: 1.2 s at 25 fps, 2.8 s at
  10 fps (docs/reliability.md, Known limits).
- ``usb``: a V4L2 device index (any backend off Linux), optional requested width/height.
- ``gstreamer``: a pipeline string ending in ``appsink``; needs an OpenCV built with GStreamer (the
  pip wheels are not; Ubuntu's ``python3-opencv`` is). Jetson example (``protocols=tcp`` as the
  ``rtsp`` source does: RTP over UDP loses packets and tears frames):
  ``rtspsrc location=rtsp://cam/stream latency=200 protocols=tcp ! rtph264depay ! h264parse !
  nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR !
  appsink drop=1``.

Live sources (and realtime files) keep only the newest ``queue_size`` frames: when the consumer is
slow the oldest queued frame is dropped and counted, so latency stays bounded. ``fps_cap`` skips
frames that arrive sooner than ``1 / fps_cap`` after the last delivered one (not counted as drops).

``roi`` is applied here: frames are cropped to the region of interest before they are queued, so
every later stage (detection, crops, preview) sees and reports coordinates of the ROI image.

Health: a watchdog thread reconnects a stream that delivers no frame for ``stall_timeout_s`` (plus
the RTSP open timeout while opening). Because a hung ``read()`` cannot be interrupted, the watchdog
does not touch the hung capture: it starts a new capture thread (a new *generation*) and abandons
the old one, which releases its capture object itself if its call ever returns. Failed opens and
lost streams are retried with exponential backoff. Every state change is reported as a
`CameraStatus` through ``on_status``; details name the camera and its file/URL with credentials
redacted. Frames whose image is empty or not 8-bit are skipped and counted as errors; a resolution
change mid-stream is accepted (each `Frame` carries its own size).
"""

from __future__ import annotations

import enum
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_agent.config import (
    Camera,
    FileSource,
    GstreamerSource,
    Reconnect,
    RtspSource,
    UsbSource,
    redact,
)
from edge_agent.structures import CameraState, CameraStatus, Frame

if TYPE_CHECKING:
    from edge_agent.pyav_capture import PyAVCapture

log = logging.getLogger(__name__)

StatusCallback = Callable[[CameraStatus], None]

# Capture threads stuck in a call we cannot interrupt; past this many we stop starting new ones
# (each holds a thread and a capture object) and report the camera offline until they return.
_MAX_ABANDONED = 4
# Consecutive unreadable frames tolerated before a stream counts as lost (a file as finished):
# a corrupt stretch of a file fails for dozens of reads and then decodes again.
_MAX_BAD_READS = 100
# A frame may arrive this fraction of the period early and still pass fps_cap (timing jitter).
_FPS_CAP_SLACK = 0.1
_FPS_WINDOW = 30


def next_backoff(attempt: int, cfg: Reconnect) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 = first retry).

    Doubles from ``initial_backoff_s`` up to ``max_backoff_s``.
    """
    if attempt < 0:
        raise ValueError(f"attempt={attempt} must be >= 0")
    return float(min(cfg.initial_backoff_s * 2.0 ** min(attempt, 60), cfg.max_backoff_s))


class SourceUnavailable(Exception):
    """The source can never open as configured (file missing, backend not built in): no retry."""


# ----------------------------------------------------------------------------- backends
def _open_file(src: FileSource) -> cv2.VideoCapture:
    if not Path(src.path).exists():  # not is_file(): named pipes and devices are valid files here
        raise SourceUnavailable(f"file not found: {src.path}")
    return cv2.VideoCapture(src.path)


def _open_rtsp(src: RtspSource) -> cv2.VideoCapture | PyAVCapture:
    if src.backend == "pyav":
        from edge_agent.pyav_capture import PyAVCapture  # PyAV's import (50 ms) only where it is used

        return PyAVCapture(src.url, src.ffmpeg_options, src.open_timeout_s, src.read_timeout_s)
    # OpenCV's FFmpeg backend takes demuxer options only from this variable. TCP avoids the torn,
    # grey-smeared frames UDP gives on lossy links; a value the user set wins.
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(src.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(src.read_timeout_s * 1000),
    ]
    return cv2.VideoCapture(src.url, cv2.CAP_FFMPEG, params)


def _open_usb(src: UsbSource) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(src.index, cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY)
    if src.width:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, src.width)
    if src.height:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, src.height)
    return cap


def _open_gstreamer(src: GstreamerSource) -> cv2.VideoCapture:
    if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        raise SourceUnavailable(
            "this OpenCV build has no GStreamer backend (pip wheels lack it; use the system/JetPack OpenCV)"
        )
    return cv2.VideoCapture(src.pipeline, cv2.CAP_GSTREAMER)


_OPENERS: dict[str, Callable[[Any], cv2.VideoCapture | PyAVCapture]] = {
    "file": _open_file,
    "rtsp": _open_rtsp,
    "usb": _open_usb,
    "gstreamer": _open_gstreamer,
}


def _where(src: FileSource | RtspSource | UsbSource | GstreamerSource) -> str:
    """What the source reads, for status details (credentials redacted)."""
    if isinstance(src, FileSource):
        return f"file {src.path}"
    if isinstance(src, RtspSource):
        return redact(src.url)
    if isinstance(src, UsbSource):
        return f"USB camera {src.index}"
    return redact(f"GStreamer pipeline '{src.pipeline}'")


def _as_bgr(image: np.ndarray | None) -> np.ndarray | None:
    """The decoded image as uint8 (H, W, 3) BGR, or None when it is empty or of an unknown kind."""
    if image is None or image.size == 0 or image.dtype != np.uint8:
        return None
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image if image.ndim == 3 and image.shape[2] == 3 else None


def _crop_roi(image: np.ndarray, roi: tuple[float, float, float, float] | None) -> np.ndarray:
    """Cut the normalised ROI (x1, y1, x2, y2) out of the image; at least one pixel survives."""
    if roi is None:
        return image
    h, w = image.shape[:2]
    x1, y1 = min(int(roi[0] * w), w - 1), min(int(roi[1] * h), h - 1)
    x2, y2 = max(int(round(roi[2] * w)), x1 + 1), max(int(round(roi[3] * h)), y1 + 1)
    return np.ascontiguousarray(image[y1:y2, x1:x2])


class _End(enum.Enum):
    """How one capture session ended, and so what the capture thread does next."""

    FINISHED = enum.auto()  # a file reached its end: stop for good
    DEAD = enum.auto()  # can never work as configured: stop for good
    DOWN = enum.auto()  # could not open: retry after backoff
    LOST = enum.auto()  # was streaming, then failed: retry after backoff
    LOOP = enum.auto()  # a looping file reached its end: reopen now
    STALE = enum.auto()  # the watchdog replaced this thread, or the source closed: exit


_END_STATE: dict[_End, CameraState] = {
    _End.FINISHED: "stopped",
    _End.DEAD: "offline",
    _End.DOWN: "offline",
    _End.LOST: "reconnecting",
}


# ----------------------------------------------------------------------------- source
class Source:
    """Frames of one camera, captured in a background thread.

    Args:
        camera: The camera's config section.
        on_status: Called from the capture (or watchdog) thread with a `CameraStatus` on every
            change of state or detail; it must be quick and must not call back into this source.
    """

    def __init__(self, camera: Camera, on_status: StatusCallback | None = None):
        self.camera = camera
        self._src = camera.source
        self._reconnect = camera.reconnect
        self._on_status = on_status
        self._where = _where(camera.source)
        self._is_file = isinstance(self._src, FileSource)
        self._realtime_file = isinstance(self._src, FileSource) and self._src.realtime
        self._lossless = self._is_file and not self._realtime_file
        self._open_grace = self._src.open_timeout_s if isinstance(self._src, RtspSource) else 0.0
        self._cond = threading.Condition()
        self._queue: deque[Frame] = deque()
        self._stop = threading.Event()
        self._gen = 0
        self._workers: list[threading.Thread] = []
        self._watchdog: threading.Thread | None = None
        self._phase = ("wait", time.monotonic())  # what the current capture thread does since when
        self._attempt = 0  # failed attempts since the last delivered frame
        self._finished = False
        self._state: CameraState = "starting"
        self._detail = "not started"
        self._frames = self._drops = self._errors = self._reconnects = 0
        self._index = 0
        self._last_delivery = -math.inf
        self._media_next = -math.inf  # earliest media time of the next frame of a lossless file
        self._delivered: deque[float] = deque(maxlen=_FPS_WINDOW)
        self.source_fps = 0.0  # the stream's nominal fps once open (0 = unknown)

    # ------------------------------------------------------------------ public
    def start(self) -> None:
        """Start the capture and watchdog threads (a second call does nothing)."""
        with self._cond:
            if self._watchdog is not None or self._stop.is_set():
                return
            self._watchdog = threading.Thread(
                target=self._watch, name=f"watchdog-{self.camera.name}", daemon=True
            )
        self._transition(0, "starting", f"camera {self.camera.name}: opening {self._where}")
        self._spawn(0)
        self._watchdog.start()

    def read(self, timeout: float = 0.1) -> Frame | None:
        """The oldest queued frame, waiting up to ``timeout`` seconds; None when there is none."""
        with self._cond:
            if timeout > 0:
                self._cond.wait_for(lambda: self._queue or self._finished, timeout)
            if not self._queue:
                return None
            frame = self._queue.popleft()
            self._cond.notify_all()  # a lossless file source may be waiting for room
            return frame

    @property
    def ended(self) -> bool:
        """True once the source stopped for good (file end, unusable source, closed) and is drained."""
        with self._cond:
            return self._finished and not self._queue

    def status(self) -> CameraStatus:
        """A snapshot of the camera's health."""
        with self._cond:
            return self._snapshot()

    def close(self) -> None:
        """Stop the threads and release the capture; idempotent.

        A capture thread blocked inside OpenCV is abandoned after a short wait; it releases its
        capture object itself when the call returns.
        """
        with self._cond:
            if self._stop.is_set():
                return
            self._stop.set()
            self._gen += 1
            self._finished = True
            self._queue.clear()
            self._cond.notify_all()
            threads = [*self._workers, *([self._watchdog] if self._watchdog else [])]
        deadline = time.monotonic() + 2.0
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._state != "stopped":
            self._transition(None, "stopped", f"camera {self.camera.name}: closed")

    # ------------------------------------------------------------------ capture thread
    def _spawn(self, gen: int) -> None:
        thread = threading.Thread(
            target=self._run, args=(gen,), name=f"capture-{self.camera.name}-{gen}", daemon=True
        )
        with self._cond:
            self._workers = [t for t in self._workers if t.is_alive()] + [thread]
        thread.start()

    def _run(self, gen: int) -> None:
        """Open, read until the session ends, retry with backoff; never raises."""
        while self._current(gen):
            if self._attempt and not self._wait_backoff(gen):
                return
            end, detail = self._session(gen)
            if end is _End.STALE:
                return
            if end is _End.LOOP:
                continue
            if end in (_End.FINISHED, _End.DEAD):
                self._finish(gen, _END_STATE[end], detail)
                return
            with self._cond:
                self._attempt += 1
                delay = next_backoff(self._attempt - 1, self._reconnect)
            self._transition(gen, _END_STATE[end], f"{detail}; retrying in {delay:.1f} s")

    def _wait_backoff(self, gen: int) -> bool:
        """Sleep before a reconnect; False when the source closed or this thread was replaced."""
        self._mark(gen, "wait")
        if self._stop.wait(next_backoff(self._attempt - 1, self._reconnect)):
            return False
        with self._cond:
            if gen != self._gen:
                return False
            self._reconnects += 1
        return True

    def _session(self, gen: int) -> tuple[_End, str]:
        """One open-read cycle; exceptions end it (a file for good, a live source for a retry)."""
        cap = None
        try:
            self._mark(gen, "open")
            cap = _OPENERS[self._src.type](self._src)
            if not cap.isOpened():
                if self._is_file:
                    return _End.DEAD, f"camera {self.camera.name}: cannot decode {self._where} (corrupt?)"
                reason = str(getattr(cap, "error", ""))  # PyAVCapture says why; cv2 cannot
                why = f": {redact(reason)}" if reason else ""
                return _End.DOWN, f"camera {self.camera.name}: cannot open {self._where}{why}"
            return self._pump(cap, gen)
        except SourceUnavailable as exc:
            return _End.DEAD, f"camera {self.camera.name}: {redact(str(exc))}"
        except Exception as exc:  # noqa: BLE001 - a capture thread must report, not die
            self._count_error()
            end = _End.DEAD if self._is_file else _End.LOST
            return end, f"camera {self.camera.name}: capture error on {self._where}: {redact(repr(exc))}"
        finally:
            if cap is not None:
                cap.release()

    def _pump(self, cap: cv2.VideoCapture | PyAVCapture, gen: int) -> tuple[_End, str]:
        """Read frames until the stream ends, fails or this thread is replaced."""
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.source_fps = fps if 0 < fps < 1000 else 0.0
        total = cap.get(cv2.CAP_PROP_FRAME_COUNT) if self._is_file else 0
        t_open, good, bad, laps = max(time.monotonic(), self._media_next), 0, 0, 0
        damaged = 0
        while self._current(gen):
            self._mark(gen, "read")
            ok, raw = cap.read()
            refused = getattr(cap, "damaged", 0)  # packets PyAV's decoder refused (OpenCV's: silent)
            if refused > damaged:
                self._count_error(refused - damaged)
                damaged = refused
            t_mono, t_wall = time.monotonic(), time.time()
            image = _as_bgr(raw) if ok else None
            if image is None:
                if not ok and not self._is_file:
                    return (
                        _End.LOST,
                        f"camera {self.camera.name}: lost {self._where} (read failed or timed out)",
                    )
                if not ok and cap.get(cv2.CAP_PROP_POS_FRAMES) >= total - 1:
                    end = self._file_end(good or laps)
                    # Loop by seeking, not reopening: OpenCV's FFmpeg backend runs every open under
                    # one process-wide lock, so a reopen would wait out another camera's slow RTSP open.
                    # A lap that decoded nothing after a seek falls back to reopening.
                    if end[0] is _End.LOOP and good and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                        t_open, good, laps = max(time.monotonic(), self._media_next), 0, laps + 1
                        continue
                    return end
                bad += 1
                self._count_error()
                if bad > _MAX_BAD_READS:
                    return self._file_end(good, f"; gave up after {bad} unreadable frames")
                continue
            # A file read faster than real time carries media time, so seconds-based tracking and
            # smoothing behave as they would on a live camera at the file's frame rate.
            t_frame = t_open + good / self.source_fps if self._lossless and self.source_fps else t_mono
            if self._lossless and self.source_fps:  # media time goes on across a loop, never back
                self._media_next = t_frame + 1.0 / self.source_fps
            bad, good = 0, good + 1
            self._deliver(gen, _crop_roi(image, self.camera.roi), t_mono, t_wall, t_frame)
            if self._realtime_file and self.source_fps:
                self._pause(gen, t_open + good / self.source_fps)
        return _End.STALE, ""

    def _file_end(self, good: int, why: str = "") -> tuple[_End, str]:
        assert isinstance(self._src, FileSource)
        if good == 0:
            return _End.DEAD, f"camera {self.camera.name}: no frame could be decoded from {self._where}{why}"
        if self._src.loop:
            return _End.LOOP, ""
        return _End.FINISHED, f"camera {self.camera.name}: end of {self._where}{why}"

    def _deliver(self, gen: int, image: np.ndarray, t_mono: float, t_wall: float, t_frame: float) -> None:
        """Queue a frame (or skip it for fps_cap); the first frame of a session sets ``online``.

        ``t_mono`` is when it was read (pacing, fps); ``t_frame`` is the frame's own time.
        """
        period = 1.0 / self.camera.fps_cap if self.camera.fps_cap else 0.0
        with self._cond:
            if gen != self._gen:
                return
            self._frames += 1
        if self._lossless:
            self._pause(gen, self._last_delivery + period)
        elif t_mono - self._last_delivery < period * (1 - _FPS_CAP_SLACK):
            return
        with self._cond:
            while self._lossless and len(self._queue) >= self.camera.queue_size and gen == self._gen:
                self._phase = ("wait", time.monotonic())
                self._cond.wait(0.1)
            if gen != self._gen:
                return
            if len(self._queue) >= self.camera.queue_size:
                self._queue.popleft()
                self._drops += 1
            self._queue.append(Frame(self.camera.name, image, self._index, t_frame, t_wall, t_mono))
            self._index += 1
            self._attempt = 0
            self._last_delivery = time.monotonic() if self._lossless else t_mono
            self._delivered.append(t_mono)
            self._cond.notify_all()
            went_online = self._state != "online"
        if went_online:
            self._transition(gen, "online", f"camera {self.camera.name}: streaming {self._where}")

    def _pause(self, gen: int, until: float) -> None:
        """Sleep until a monotonic time (pacing); wakes early when the source closes."""
        delay = until - time.monotonic()
        if delay > 0:
            self._mark(gen, "wait")
            self._stop.wait(delay)

    # ------------------------------------------------------------------ watchdog
    def _watch(self) -> None:
        period = min(0.5, self._reconnect.stall_timeout_s / 4)
        while not self._stop.wait(period):
            self._check_stall()

    def _check_stall(self) -> None:
        """Replace a capture thread that has been stuck opening or reading for too long."""
        with self._cond:
            phase, since = self._phase
            limit = self._reconnect.stall_timeout_s + (self._open_grace if phase == "open" else 0.0)
            stalled_s = time.monotonic() - since
            if phase == "wait" or self._finished or stalled_s < limit:
                return
            hung = sum(t.is_alive() for t in self._workers)
            if hung > _MAX_ABANDONED:
                state: CameraState = "offline"
                detail = f"camera {self.camera.name}: {hung} captures of {self._where} hung; waiting for them"
            else:
                self._gen += 1
                self._attempt += 1
                self._phase = ("wait", time.monotonic())
                state = "reconnecting"
                delay = next_backoff(self._attempt - 1, self._reconnect)
                detail = (
                    f"camera {self.camera.name}: no frame from {self._where} for {stalled_s:.1f} s; "
                    f"retrying in {delay:.1f} s"
                )
            gen = self._gen
        self._transition(gen, state, detail)
        if state == "reconnecting":
            self._spawn(gen)

    # ------------------------------------------------------------------ bookkeeping
    def _current(self, gen: int) -> bool:
        with self._cond:
            return gen == self._gen

    def _mark(self, gen: int, phase: str) -> None:
        with self._cond:
            if gen == self._gen:
                self._phase = (phase, time.monotonic())

    def _count_error(self, n: int = 1) -> None:
        with self._cond:
            self._errors += n

    def _finish(self, gen: int, state: CameraState, detail: str) -> None:
        with self._cond:
            if gen != self._gen:
                return
            self._finished = True
            self._phase = ("wait", time.monotonic())
            self._cond.notify_all()
        self._transition(gen, state, detail)

    def _transition(self, gen: int | None, state: CameraState, detail: str) -> None:
        """Set state and detail (unless ``gen`` is stale) and report a change to ``on_status``."""
        with self._cond:
            if (gen is not None and gen != self._gen) or (state, detail) == (self._state, self._detail):
                return
            self._state, self._detail = state, redact(detail)
            status = self._snapshot()
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:  # noqa: BLE001 - a faulty listener must not stop the capture
                log.exception("on_status callback failed for camera %s", self.camera.name)

    def _snapshot(self) -> CameraStatus:
        """Current status; the caller holds the lock."""
        stamps = self._delivered
        span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
        fps = (len(stamps) - 1) / span if span > 0 and self._state == "online" else 0.0
        return CameraStatus(
            camera=self.camera.name,
            state=self._state,
            fps=fps,
            frames=self._frames,
            drops=self._drops,
            errors=self._errors,
            reconnects=self._reconnects,
            detail=self._detail,
            t_wall=time.time(),
        )


def open_source(camera: Camera, on_status: StatusCallback | None = None) -> Source:
    """A (not yet started) source for the camera; the backend is picked by ``camera.source.type``."""
    if camera.source.type not in _OPENERS:
        raise ValueError(f"camera.source.type={camera.source.type!r} not in {sorted(_OPENERS)}")
    return Source(camera, on_status)
