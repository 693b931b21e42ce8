"""TensorRT runtime: request validation and batching without a GPU; the engine itself only with one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.viewset import ViewSet
from engines.errors import EnginesInputError
from engines.trt_runtime import batch_slices, check_batch, pad_batch

SHAPES = {"person": (3, 8, 8), "scene": (3, 16, 16)}


def _req(n: int, m: int | None = None, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {
        "person": np.zeros((n, 3, 8, 8), dtype),
        "scene": np.zeros((n if m is None else m, 3, 16, 16), dtype),
    }


@pytest.mark.parametrize(
    ("n", "max_batch", "sizes"), [(0, 4, []), (1, 4, [1]), (4, 4, [4]), (9, 4, [4, 4, 1]), (3, 1, [1, 1, 1])]
)
def test_batch_slices(n: int, max_batch: int, sizes: list[int]) -> None:
    slices = batch_slices(n, max_batch)
    assert [s.stop - s.start for s in slices] == sizes
    assert sum(sizes) == n and all(a.stop == b.start for a, b in zip(slices, slices[1:], strict=False))


def test_batch_slices_rejects_zero_max() -> None:
    with pytest.raises(EnginesInputError, match="max_batch=0"):
        batch_slices(3, 0)


@pytest.mark.parametrize("n", [0, 1, 7])
def test_check_batch_ok(n: int) -> None:
    assert check_batch(_req(n), SHAPES) == n


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        ({"person": np.zeros((1, 3, 8, 8), np.float32)}, "input 'scene' missing"),
        (_req(2, 3), "differ in batch size"),
        (_req(2, dtype=np.float64), "need float32"),
        (
            {"person": np.zeros((1, 3, 8, 9), np.float32), "scene": np.zeros((1, 3, 16, 16), np.float32)},
            r"need float32 \(N, 3, 8, 8\)",
        ),
        (
            {"person": np.zeros((3, 8, 8), np.float32), "scene": np.zeros((1, 3, 16, 16), np.float32)},
            "person",
        ),
    ],
)
def test_check_batch_rejects(request_: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(EnginesInputError, match=match):
        check_batch(request_, SHAPES)


def test_pad_batch_fills_a_short_tail_with_zero_rows() -> None:
    req = {k: v + 1 for k, v in _req(3).items()}
    padded = pad_batch(req, 8)
    for name, arr in padded.items():
        assert arr.shape == (8, *SHAPES[name]) and arr.dtype == np.float32 and arr.flags.c_contiguous
        assert np.array_equal(arr[:3], req[name]) and not arr[3:].any()


@pytest.mark.parametrize("n", [4, 9])
def test_pad_batch_leaves_full_batches_alone(n: int) -> None:
    req = _req(n)
    assert all(pad_batch(req, 4)[k] is v for k, v in req.items())


def test_pad_batch_rejects_zero_min() -> None:
    with pytest.raises(EnginesInputError, match="min_batch=0"):
        pad_batch(_req(1), 0)


@pytest.mark.gpu
def test_engine_matches_onnx_on_gpu(
    tensorrt: object, tmp_path: Path, int8_onnx: Path, fp32_onnx: Path, eval_views: ViewSet, eval_npz: Path
) -> None:
    """Full path on an NVIDIA GPU: build INT8 and FP16 engines, run them through `TrtEngine`."""
    from engines.trt_build import build_engine
    from engines.trt_plan import BatchRange
    from engines.trt_runtime import TrtEngine
    from engines.verify import read_meta

    report = build_engine(int8_onnx, tmp_path / "m.engine", batch=BatchRange(1, 4, 8), samples=eval_npz)
    engine = TrtEngine(report.engine)
    try:
        person = eval_views.inputs["person"][:11]
        logits, va = engine.infer(person, eval_views.inputs["scene"][:11])  # > max batch: split in two calls
        assert logits.shape == (11, 7) and va.shape == (11, 2)
        assert engine.meta == read_meta(int8_onnx)
    finally:
        engine.close()
    fp16 = build_engine(
        fp32_onnx, tmp_path / "m16.engine", precision="fp16", fallback=False, samples=eval_npz
    )
    assert fp16.plan.precision == "fp16"
