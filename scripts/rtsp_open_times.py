"""Open times of the PyAV RTSP capture (open + first frame, 3 opens each), also beside a hanging open.

Serve the 10 fps sample clip (CLIP10: ../shared/videos/one-by-one-person-detection.mp4) and its 25 fps
camera re-encode (CLIP25: `tests.rtsp_server.camera_clip`, docs/reliability.md, Known limits) first:
    /usr/bin/python3 tests/rtsp_server.py --port 18554 --clip CLIP10 &
    /usr/bin/python3 tests/rtsp_server.py --port 18555 --clip CLIP25 &
    .venv/bin/python scripts/rtsp_open_times.py rtsp://127.0.0.1:18554/cam rtsp://127.0.0.1:18555/cam
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import av

from edge_agent.pyav_capture import PyAVCapture


def open_s(url: str, options: dict[str, str]) -> float:
    t0 = time.monotonic()
    cap = PyAVCapture(url, options, 10.0, 5.0)
    ok = cap.read()[0]
    took = time.monotonic() - t0
    cap.release()
    if not ok:
        raise SystemExit(f"{url}: {cap.error}")
    return round(took, 2)


def main(url10: str, url25: str) -> None:
    print(f"av {av.__version__}")
    for name, options in [
        ("default (fpsprobesize=0)", {}),
        ("default + analyzeduration=500000", {"analyzeduration": "500000"}),
        ("fpsprobesize=-1 (FFmpeg's own probe)", {"fpsprobesize": "-1"}),
    ]:
        print(f"10 fps, {name}: {[open_s(url10, options) for _ in range(3)]} s")
    print(f"25 fps, default: {[open_s(url25, {}) for _ in range(3)]} s")
    with socket.socket() as silent:  # accepts and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/x"
        hung = threading.Thread(target=PyAVCapture, args=(url, {}, 6.0, 6.0))
        hung.start()
        time.sleep(0.3)
        print(f"25 fps, beside a hanging open: {[open_s(url25, {}) for _ in range(3)]} s")
        hung.join()


if __name__ == "__main__":
    main(*sys.argv[1:3])
