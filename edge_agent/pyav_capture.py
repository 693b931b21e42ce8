"""RTSP capture through PyAV (FFmpeg's own Python bindings): the source's ``pyav`` RTSP backend.

Why not OpenCV for RTSP: FFmpeg returns from opening an H.264 RTSP stream only after estimating the
frame rate from about 28 frames (2.8 s for a 10 fps camera). The option that skips the estimate,
``fpsprobesize=0``, reaches FFmpeg only through ``OPENCV_FFMPEG_CAPTURE_OPTIONS``, which the pinned
opencv-python wheel ignores (opencv/opencv#27091). PyAV passes options straight to
``avformat_open_input``: the same 10 fps stream opens in 0.8 s (docs/reliability.md).

`PyAVCapture` offers the part of ``cv2.VideoCapture`` that `edge_agent.sources.Source` uses
(``isOpened``, ``read``, ``get``, ``set``, ``release``), so the capture loop is shared. PyAV
releases the GIL while it opens, reads and decodes, so one camera's slow open stalls no other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import av
import cv2
import numpy as np

# Over TCP: UDP gives torn, grey-smeared frames on lossy links. No frame-rate probe: the SDP's
# ``a=framerate`` or the stream's time base gives the rate, and the open is ~2 s shorter at 10 fps.
DEFAULT_OPTIONS: dict[str, str] = {"rtsp_transport": "tcp", "fpsprobesize": "0"}
# Refused packets in a row that end the session: a decoder that refuses everything (e.g. parameter
# sets lost) will not recover by itself, and a reconnect fetches them afresh. 50 = 2 s at 25 fps.
MAX_DAMAGED_RUN = 50


class PyAVCapture:
    """One open RTSP session decoding the first video stream to BGR frames.

    Attributes:
        error: Why the open or the last read failed ("" while all is well).
        damaged: Packets the decoder refused so far (each costs its frame, not the session).
    """

    def __init__(self, url: str, options: Mapping[str, str], open_timeout_s: float, read_timeout_s: float):
        """Open ``url`` at once; a failure leaves ``isOpened()`` False and the reason in ``error``.

        Args:
            url: ``rtsp://`` or ``rtsps://`` URL (credentials allowed).
            options: FFmpeg format/protocol options, applied over `DEFAULT_OPTIONS`.
            open_timeout_s: Longest wait for the connection and stream set-up.
            read_timeout_s: Longest wait for data once open; then ``read`` fails.
        """
        self.error = ""
        self.damaged = 0
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._fps = 0.0
        self._read_timeout_s = read_timeout_s
        t0 = time.monotonic()
        try:
            self._container = av.open(
                url, options={**DEFAULT_OPTIONS, **options}, timeout=(open_timeout_s, read_timeout_s)
            )
            if not self._container.streams.video:
                raise ValueError("the stream has no video track")
            stream = self._container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self._fps = float(rate) if rate else 0.0
            self._frames = self._decode(stream)
        except (av.FFmpegError, ValueError) as exc:
            self.error = _reason(exc, time.monotonic() - t0, open_timeout_s, "no answer")
            self.release()

    def _decode(self, stream: Any) -> Iterator[Any]:
        """Frames of ``stream``, decoded packet by packet: PyAV's own ``decode`` generator ends at the
        first damaged packet (a lossy link would cost a reconnect); here only that packet is lost."""
        run = 0
        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                self.damaged, run = self.damaged + 1, run + 1
                if run >= MAX_DAMAGED_RUN:
                    raise ValueError(f"the decoder refused {run} packets in a row") from None
                continue
            run = 0 if frames else run
            yield from frames

    def isOpened(self) -> bool:  # noqa: N802 - cv2.VideoCapture's name, so the capture loop takes both
        return self._frames is not None

    def read(self) -> tuple[bool, np.ndarray | None]:
        """The next decoded frame as (H, W, 3) uint8 BGR; ``(False, None)`` once the stream ended,
        failed or went silent for longer than the read timeout."""
        if self._frames is None:
            return False, None
        t0 = time.monotonic()
        try:
            frame = next(self._frames)
        except StopIteration:
            self.error = "end of stream"
            return False, None
        except (av.FFmpegError, ValueError) as exc:
            self.error = _reason(exc, time.monotonic() - t0, self._read_timeout_s, "no data")
            return False, None
        return True, frame.to_ndarray(format="bgr24")

    def get(self, prop: int) -> float:
        """``CAP_PROP_FPS``: the stream's frame rate (0 if unknown); other properties are 0."""
        return self._fps if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop: int, value: float) -> bool:
        """Nothing can be set on a live stream (``cv2.VideoCapture.set`` returns False likewise)."""
        return False

    def release(self) -> None:
        self._frames = None
        if self._container is not None:
            self._container.close()
            self._container = None


def _reason(exc: Exception, waited_s: float, timeout_s: float, what: str) -> str:
    """FFmpeg's message, led by the timeout when that is what ended the wait: FFmpeg reports its
    own interrupt as "Invalid data found" or "Immediate exit requested", which would mislead."""
    # strerror leaves out the URL (and its credentials) that str(FFmpegError) repeats.
    message = getattr(exc, "strerror", None) or str(exc)
    if waited_s >= 0.95 * timeout_s:
        return f"{what} within {timeout_s:g} s ({message})"
    return str(message)
