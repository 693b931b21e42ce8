"""Shared test fixtures: where the read-only shared data and clips live, and skips when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AFFECTLINE_SHARED", ROOT.parent / "shared"))
VIDEOS = SHARED / "videos"
DATA = SHARED / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (research-only data lives in ../shared, not in the repo)")
    return path


@pytest.fixture
def single_face_clip() -> Path:
    return shared_path("videos", "single_face.mp4")


@pytest.fixture
def one_by_one_clip() -> Path:
    return shared_path("videos", "one-by-one-person-detection.mp4")


@pytest.fixture
def face_noface_clip() -> Path:
    return shared_path("videos", "face_noface.mov")
