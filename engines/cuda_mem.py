"""Minimal CUDA runtime helpers over NVIDIA's ``cuda-python`` binding (import-guarded).

Only what TensorRT inference and calibration need: device info, a stream, device buffers and
host<->device copies of contiguous numpy arrays. Newer ``cuda-python`` exposes the runtime as
``cuda.bindings.runtime``; older releases as ``cuda.cudart``. Both have the same call shapes:
every call returns ``(error, *results)``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from engines.errors import TensorRTUnavailable


def import_cudart() -> ModuleType:
    """The CUDA runtime binding.

    Raises:
        TensorRTUnavailable: ``cuda-python`` is not installed.
    """
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise TensorRTUnavailable(
                f"CUDA Python binding not importable ({exc}); install it with `pip install cuda-python` "
                "matching the CUDA version of this device (JetPack 6: cuda-python 12.x)"
            ) from None
    return cudart


def call(cudart: ModuleType, result: Any) -> Any:
    """Unpack a ``(error, *values)`` result, raising on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}: {cudart.cudaGetErrorString(err)[1]!r}")
    return values[0] if len(values) == 1 else tuple(values) or None


def device_info(device: int) -> tuple[str, str]:
    """(GPU name, compute capability ``"major.minor"``) of a CUDA device."""
    cudart = import_cudart()
    prop = call(cudart, cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.strip("\x00 ").strip(), f"{prop.major}.{prop.minor}"


class DeviceBuffer:
    """A block of device memory with copies to and from contiguous numpy arrays."""

    def __init__(self, cudart: ModuleType, nbytes: int):
        self._cudart = cudart
        self.nbytes = int(nbytes)
        self.ptr = int(call(cudart, cudart.cudaMalloc(self.nbytes)))

    def _check(self, host: np.ndarray) -> None:
        """A copy past the block's end would corrupt device memory: refuse it (not an ``assert``,
        which ``python -O`` removes).

        Raises:
            ValueError: ``host`` is not C-contiguous or larger than the block.
        """
        if not host.flags.c_contiguous or host.nbytes > self.nbytes:
            raise ValueError(
                f"host array of {host.nbytes} bytes (C-contiguous: {host.flags.c_contiguous}) does not "
                f"fit a device block of {self.nbytes} bytes; need C-contiguous and at most that size"
            )

    def upload(self, host: np.ndarray, stream: Any) -> None:
        self._check(host)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        call(
            self._cudart, self._cudart.cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes, kind, stream)
        )

    def download(self, host: np.ndarray, stream: Any) -> None:
        self._check(host)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        call(
            self._cudart, self._cudart.cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes, kind, stream)
        )

    def close(self) -> None:
        if self.ptr:
            call(self._cudart, self._cudart.cudaFree(self.ptr))
            self.ptr = 0
