"""Legacy INT8 calibrator pieces that do not need TensorRT: batching and the keyed cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.viewset import ViewSet
from engines.errors import EnginesInputError
from engines.trt_calibrator import CalibrationBatches, CalibrationCache


def _inputs(n: int) -> dict[str, np.ndarray]:
    person = np.arange(n * 3 * 4 * 4, dtype=np.float32).reshape(n, 3, 4, 4)
    return {"person": person, "scene": -person}


@pytest.mark.parametrize(
    ("n", "batch", "count", "dropped"),
    [(1, 1, 1, 0), (10, 10, 1, 0), (10, 3, 3, 1), (10, 4, 2, 2), (8, 2, 4, 0)],
)
def test_batches_fixed_size_tail_dropped(n: int, batch: int, count: int, dropped: int) -> None:
    b = CalibrationBatches(_inputs(n), batch)
    got = list(b)
    assert (len(b), len(got), b.dropped) == (count, count, dropped)
    assert all(x["person"].shape == (batch, 3, 4, 4) and x["person"].flags.c_contiguous for x in got)
    # In order, and both inputs stay aligned sample by sample.
    flat = np.concatenate([x["person"] for x in got])
    np.testing.assert_array_equal(flat, _inputs(n)["person"][: count * batch])
    np.testing.assert_array_equal(np.concatenate([x["scene"] for x in got]), -flat)
    assert b.nbytes("person") == batch * 3 * 4 * 4 * 4


@pytest.mark.parametrize("batch", [0, 11, -1])
def test_batch_size_out_of_range(batch: int) -> None:
    with pytest.raises(EnginesInputError, match=r"batch_size=.*must be in \[1, 10\]"):
        CalibrationBatches(_inputs(10), batch)


def test_batches_reject_empty_and_unequal_inputs() -> None:
    with pytest.raises(EnginesInputError, match="no inputs"):
        CalibrationBatches({}, 1)
    with pytest.raises(EnginesInputError, match="differ in sample count"):
        CalibrationBatches(
            {"person": np.zeros((4, 3, 2, 2), np.float32), "scene": np.zeros((3, 3, 2, 2), np.float32)}, 1
        )


def test_batches_from_real_calibration_file(calib_npz: Path) -> None:
    views = ViewSet.load(calib_npz)
    b = CalibrationBatches(views.inputs, 8)
    assert len(b) == len(views) // 8 and set(next(iter(b))) == {"person", "scene"}


def test_cache_empty_then_written(tmp_path: Path) -> None:
    cache = CalibrationCache(tmp_path / "m.calib", "onnx-a", "calib-a")
    assert cache.read() is None
    cache.write(b"TRT-1003-EntropyCalibration2\nperson: 3c010a14\n")
    assert cache.read() == b"TRT-1003-EntropyCalibration2\nperson: 3c010a14\n"


@pytest.mark.parametrize(("onnx", "calib"), [("onnx-b", "calib-a"), ("onnx-a", "calib-b")])
def test_cache_ignored_for_other_model_or_data(tmp_path: Path, onnx: str, calib: str) -> None:
    CalibrationCache(tmp_path / "m.calib", "onnx-a", "calib-a").write(b"table")
    assert CalibrationCache(tmp_path / "m.calib", onnx, calib).read() is None


def test_cache_without_key_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "m.calib").write_bytes(b"table from an unknown run")
    assert CalibrationCache(tmp_path / "m.calib", "onnx-a", "calib-a").read() is None
