"""A real RTSP server on loopback for camera fault tests (GStreamer's gst-rtsp-server).

Serves an H.264 clip without re-encoding (``qtdemux ! h264parse ! rtph264pay``), paced in real
time by the server, at ``rtsp://[USER:PASS@]127.0.0.1:PORT/cam``. Every client gets its own
pipeline that starts at the beginning of the clip. Prints ``ready`` on stdout once listening.

`camera_clip` prepares what the tests serve: a sample clip re-encoded once (system ``ffmpeg``)
the way IP cameras stream. The frame rate matters: FFmpeg (OpenCV's backend) returns from opening
an H.264 RTSP stream only after about 28 frames (it estimates the frame rate from 20 frame
durations, H.264 time bases being "unreliable" to it, after guessing the decoder delay), so the
10 fps sample clip as it is would make every open last 2.8 s, where a 25 fps camera opens in 1.2 s.

It runs under the *system* Python (``/usr/bin/python3``), which has PyGObject and the GStreamer
typelibs from Debian (``python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good
gstreamer1.0-plugins-bad``, installed by ``scripts/install-mosquitto.sh``); the tests start it as a
subprocess, so a test can kill it (stream gone), SIGSTOP it (stream hangs with the socket open)
and start it again on the same port.

Usage: ``/usr/bin/python3 tests/rtsp_server.py --port 8554 --clip video.mp4 [--user U --password P]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MOUNT = "/cam"
SYSTEM_PYTHON = "/usr/bin/python3"
# What the server needs from Debian; the tests skip with this hint when it is missing.
PACKAGES = "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad ffmpeg"
# IP camera main streams run at 25-30 fps with a keyframe every 1-2 s and mostly without B-frames.
CAMERA_FPS = 25
CAMERA_SECONDS = 60.0  # each client starts at the beginning; no test keeps one session longer


def unavailable() -> str | None:
    """Why the server cannot run here (None when it can)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (apt-get install {PACKAGES})"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"GStreamer RTSP server not importable by {SYSTEM_PYTHON} (apt-get install {PACKAGES})"
    ffmpeg = shutil.which("ffmpeg")
    encoders = (
        subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True)
        if ffmpeg
        else None
    )
    if encoders is None or "libx264" not in encoders.stdout:
        return (
            f"ffmpeg with libx264 not found, needed to prepare the served clip (apt-get install {PACKAGES})"
        )
    return None


def camera_clip(src: Path, cache: Path, fps: int = CAMERA_FPS, seconds: float = CAMERA_SECONDS) -> Path:
    """``src`` re-encoded as an IP camera streams it, made once and kept in ``cache``.

    ``fps`` frames/s (frames repeated as needed), a keyframe every second, no B-frames (H.264
    baseline profile), the first ``seconds`` only.

    Raises:
        subprocess.CalledProcessError: ffmpeg failed (its stderr is in the exception).
    """
    out = cache / f"{src.stem}-{fps}fps-{seconds:g}s.mp4"
    if out.exists():
        return out
    part = out.with_name(out.stem + ".part.mp4")
    gop = ["-g", str(fps), "-keyint_min", str(fps), "-sc_threshold", "0", "-bf", "0"]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-t", f"{seconds:g}", "-i", str(src), "-an", "-vf", f"fps={fps}"]
        + ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "baseline", *gop, "-pix_fmt", "yuv420p"]
        + [str(part)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    part.replace(out)  # whole or absent: an interrupted run leaves only the .part file
    return out


@dataclass
class RtspServer:
    """Controls one server process from a test; `start` again after `kill` reuses the port.

    Attributes:
        port: Loopback TCP port.
        clip: The served file.
        user: Basic-auth user (None = no authentication).
        password: Basic-auth password.
    """

    port: int
    clip: Path
    user: str | None = None
    password: str | None = None
    proc: subprocess.Popen[str] | None = field(default=None, repr=False)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """The stream's URL, with the given credentials in it."""
        auth = f"{user}:{password}@" if user is not None else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{MOUNT}"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the server and wait until it listens."""
        auth = ["--user", self.user, "--password", self.password or ""] if self.user is not None else []
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, __file__, "--port", str(self.port), "--clip", str(self.clip), *auth],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # 'ready', or '' when it died
        if line.strip() != "ready":
            self.proc.kill()
            err = self.proc.communicate(timeout=timeout_s)[1]
            raise RuntimeError(f"RTSP server did not start on port {self.port}: {err}")

    def kill(self) -> None:
        """SIGKILL: the stream disappears mid-run, connections are reset."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the stream hangs; sockets stay open and accept, nothing is sent."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGKILL's cleanup
            self.kill()


def build_server(port: int, clip: str, user: str | None, password: str | None) -> Any:
    """An RTSP server (not yet attached) serving ``clip`` at ``MOUNT``, optionally with basic auth."""
    from gi.repository import Gst, GstRtspServer

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = clip.replace("\\", "\\\\").replace('"', '\\"')
    # No re-encoding: the clip's H.264 is repacketised, so serving costs almost no CPU.
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux ! h264parse '
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(False)
    if user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(
            Gst.Structure.new_from_string("viewer, media.factory.access=true, media.factory.construct=true")
        )
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(MOUNT, factory)
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clip", required=True, help="an MP4 with an H.264 video track")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    import gi  # the system Python's PyGObject; the test venv does not have it

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst

    Gst.init(None)
    server = build_server(args.port, args.clip, args.user, args.password)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
