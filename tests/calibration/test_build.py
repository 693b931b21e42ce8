"""Calibration sets from a clip plus datasets, saved with a sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibration.build import build_calibration_set, save_calibration_set
from calibration.datasets import CalibrationDataError
from calibration.video import camera_from_uri
from calibration.viewset import ViewSet
from edge_agent.modelmeta import ModelMeta


def test_clip_first_then_datasets(
    tmp_path: Path, meta: ModelMeta, single_face_clip: Path, expw_spec: str
) -> None:
    result = build_calibration_set(
        meta, specs=[expw_spec], camera=camera_from_uri(str(single_face_clip)), seconds=1.5, n=14
    )
    assert len(result.views) == 14 and result.video is not None
    origins = result.coverage.origins
    assert origins["video"] == min(result.video.faces, 14) and origins.get("expw", 0) == 14 - origins["video"]
    digest = save_calibration_set(result, tmp_path / "c.npz", "model.onnx")
    side = json.loads((tmp_path / "c.npz.json").read_text())
    assert (
        side["kind"] == "calibration-set"
        and side["content_sha256"] == digest == ViewSet.load(tmp_path / "c.npz").content_hash()
    )
    assert side["coverage"]["count"] == 14 and side["sources"]["datasets"] == [expw_spec]
    assert '"type":"file"' in side["sources"]["camera"]


def test_rtsp_credentials_are_not_recorded() -> None:
    from calibration.build import _describe

    assert "pw" not in str(_describe(camera_from_uri("rtsp://user:pw@cam/stream")))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "--count=0"),
        ({"n": 8, "min_count": 9}, "--min-count=9"),
        ({"specs": []}, "no calibration source"),
    ],
)
def test_rejects(meta: ModelMeta, expw_spec: str, kwargs: dict[str, object], match: str) -> None:
    args = {"specs": [expw_spec], **kwargs}
    with pytest.raises(CalibrationDataError, match=match):
        build_calibration_set(meta, **args)  # type: ignore[arg-type]


def test_too_few_samples_says_what_to_do(meta: ModelMeta, single_face_clip: Path) -> None:
    with pytest.raises(CalibrationDataError, match=r"only \d+ calibration samples found, need >= 500"):
        build_calibration_set(
            meta, camera=camera_from_uri(str(single_face_clip)), seconds=0.5, n=512, min_count=500
        )
