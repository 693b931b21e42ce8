"""Legacy implicit INT8 calibration for TensorRT < 11 (``IInt8EntropyCalibrator2``).

Only used when an engine is built INT8 from an FP32 ONNX (see `engines.trt_plan`); the normal
route is the Q/DQ ONNX, which carries its scales. The batching and cache logic is plain Python
(tested without TensorRT); `make_entropy_calibrator` wraps it in TensorRT's calibrator class.

The cache file is TensorRT's own (opaque) calibration table. It is reused only when its key
file says it was made from the same ONNX and the same calibration set; otherwise it is ignored
and rewritten, so stale scales never leak into a new engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.artifacts import write_json_atomic
from engines.errors import EnginesInputError


class CalibrationBatches:
    """Fixed-size batches of the calibration set, one array per network input.

    TensorRT calibrates at a fixed batch size, so the tail that does not fill a batch is dropped
    (``dropped`` says how many samples).

    Args:
        inputs: ``{input_name: float32 (N, 3, S, S)}`` normalised model inputs.
        batch_size: Samples per calibration batch, in [1, N].
    """

    def __init__(self, inputs: Mapping[str, np.ndarray], batch_size: int):
        if not inputs:
            raise EnginesInputError("calibration set has no inputs")
        counts = {name: int(a.shape[0]) for name, a in inputs.items()}
        n = min(counts.values())
        if len(set(counts.values())) != 1:
            raise EnginesInputError(f"calibration inputs differ in sample count: {counts}")
        if not 1 <= batch_size <= n:
            raise EnginesInputError(
                f"calibration batch_size={batch_size}: must be in [1, {n}] (samples in the set)"
            )
        self.inputs = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in inputs.items()}
        self.batch_size = batch_size
        self.count = n // batch_size
        self.dropped = n - self.count * batch_size

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.count):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield {name: np.ascontiguousarray(a[sl]) for name, a in self.inputs.items()}

    def nbytes(self, name: str) -> int:
        """Bytes of one batch of input ``name`` (device buffer size)."""
        a = self.inputs[name]
        return int(a[: self.batch_size].nbytes)


class CalibrationCache:
    """TensorRT's calibration table on disk, valid only for one (ONNX, calibration set) pair.

    Args:
        path: The cache file (``engines build`` uses ``<calibration>.trt-calib``); its key goes to
            ``<path>.json``.
        onnx_sha256: Hash of the ONNX being calibrated.
        calibration_sha256: Content hash of the calibration set.
    """

    def __init__(self, path: str | Path, onnx_sha256: str, calibration_sha256: str):
        self.path = Path(path)
        self.key = {"onnx_sha256": onnx_sha256, "calibration_sha256": calibration_sha256}
        self.key_path = self.path.with_name(self.path.name + ".json")

    def read(self) -> bytes | None:
        """The cached table if it matches this ONNX and calibration set, else None (recalibrate)."""
        try:
            key = json.loads(self.key_path.read_text())
            data = self.path.read_bytes()
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if key == self.key and data else None

    def write(self, data: bytes) -> None:
        """Store a fresh table and its key."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(bytes(data))
        write_json_atomic(self.key_path, self.key)


def make_entropy_calibrator(trt: Any, batches: CalibrationBatches, cache: CalibrationCache) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` feeding ``batches`` from device memory.

    Args:
        trt: The imported ``tensorrt`` module (< 11).
        batches: Calibration batches.
        cache: Calibration cache.

    Returns:
        The calibrator; call its ``close()`` after the build to free device memory.
    """
    from engines.cuda_mem import DeviceBuffer, call, import_cudart

    cudart = import_cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._iter = iter(batches)
            self._stream = call(cudart, cudart.cudaStreamCreate())
            self._buffers = {name: DeviceBuffer(cudart, batches.nbytes(name)) for name in batches.inputs}

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._iter, None)
            if batch is None:
                return None
            for name in names:
                self._buffers[name].upload(batch[name], self._stream)
            call(cudart, cudart.cudaStreamSynchronize(self._stream))
            return [self._buffers[name].ptr for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read()

        def write_calibration_cache(self, data: Any) -> None:
            cache.write(bytes(data))

        def close(self) -> None:
            for buf in self._buffers.values():
                buf.close()
            call(cudart, cudart.cudaStreamDestroy(self._stream))

    return EntropyCalibrator()
