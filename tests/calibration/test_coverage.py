"""Coverage report of a calibration set."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.coverage import coverage
from calibration.viewset import ViewSet

CLASSES = ("angry", "happy", "neutral")


def make(labels: list[int], luma: list[float], origin: list[str]) -> ViewSet:
    n = len(labels)
    return ViewSet(
        {"person": np.zeros((n, 3, 2, 2), np.float32)},
        np.array(labels),
        np.array(luma),
        np.array(origin),
        CLASSES,
    )


def test_counts_bands_and_origins() -> None:
    cov = coverage(
        make(
            [0, 1, 1, -1, 2],
            [10, 70, 120, 200, 99.9],
            ["expw:a", "ferplus:b", "ferplus:c", "video:cam@1.0s#0", "expw:d"],
        )
    )
    assert cov.count == 5 and cov.unlabelled == 1
    assert cov.per_class == {"angry": 1, "happy": 2, "neutral": 1}
    assert cov.brightness == {"dark": 1, "dim": 2, "normal": 1, "bright": 1}
    assert cov.origins == {"expw": 2, "ferplus": 2, "video": 1}
    assert cov.warnings == ()
    lines = cov.lines()
    assert lines[0] == "samples: 5 (1 unlabelled)" and "per class: angry 1, happy 2, neutral 1" in lines


@pytest.mark.parametrize(
    ("labels", "luma", "warning"),
    [
        ([0] * 40 + [1] * 40, [120.0] * 79 + [10.0], "under 3% of labelled samples: neutral"),
        ([0, 1, 2], [120.0, 120.0, 200.0], "no dark samples"),
        ([0, 1, 2], [120.0, 120.0, 20.0], "no bright samples"),
    ],
)
def test_warnings(labels: list[int], luma: list[float], warning: str) -> None:
    cov = coverage(make(labels, luma, ["x:y"] * len(labels)))
    assert any(warning in w for w in cov.warnings)
    assert any(warning in line for line in cov.lines())


def test_unlabelled_only_has_no_class_warning() -> None:
    cov = coverage(make([-1, -1], [10.0, 200.0], ["video:a", "video:b"]))
    assert cov.per_class == {"angry": 0, "happy": 0, "neutral": 0} and cov.warnings == ()
    percentiles = cov.to_record()["brightness_p5_p50_p95"]
    assert isinstance(percentiles, (list, tuple)) and percentiles[1] == pytest.approx(105.0)
