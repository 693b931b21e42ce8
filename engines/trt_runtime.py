"""Run a TensorRT engine built by ``affectline engines build`` (the agent's TensorRT backend calls this).

`TrtEngine` loads an engine only after its sidecar says it was built here: same TensorRT version,
same GPU and compute capability; otherwise `EngineMismatchError` names what differs and the exact
rebuild command. Model metadata (classes, normalisation, views) comes from the sidecar. Device
buffers are allocated once for the engine's largest batch; bigger requests are split.

Needs ``tensorrt`` and ``cuda-python`` (import-guarded: importing this module never fails).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.modelmeta import ModelMeta
from engines.artifacts import read_sidecar
from engines.errors import EngineMismatchError, EnginesInputError
from engines.trt_sidecar import EngineSidecar, check_compatible, check_engine_bytes


def batch_slices(n: int, max_batch: int) -> list[slice]:
    """Consecutive slices of at most ``max_batch`` covering ``range(n)``."""
    if max_batch < 1:
        raise EnginesInputError(f"max_batch={max_batch}: must be >= 1")
    return [slice(i, min(i + max_batch, n)) for i in range(0, n, max_batch)]


def check_batch(inputs: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Validate one request against the engine's per-sample input shapes; return the batch size.

    Raises:
        EnginesInputError: missing input, wrong per-sample shape or dtype, or differing batch sizes.
    """
    sizes = set()
    for name, shape in shapes.items():
        if name not in inputs:
            raise EnginesInputError(f"engine input {name!r} missing; got {sorted(inputs)}")
        arr = inputs[name]
        if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape) or arr.dtype != np.float32:
            raise EnginesInputError(
                f"engine input {name!r}: need float32 (N, {', '.join(map(str, shape))}), "
                f"got {arr.dtype} {arr.shape}"
            )
        sizes.add(int(arr.shape[0]))
    if len(sizes) != 1:
        raise EnginesInputError(f"engine inputs differ in batch size: {sorted(sizes)}")
    return sizes.pop()


def pad_batch(inputs: Mapping[str, np.ndarray], min_batch: int) -> dict[str, np.ndarray]:
    """Zero rows appended so that every input holds at least ``min_batch`` samples.

    An engine runs only at batch sizes inside its optimization profile; one built with a larger
    minimum (a DLA engine takes exactly one batch size) gets the short tail of a request padded,
    and the caller drops the padded rows' results.

    Args:
        inputs: ``{name: (N, ...)}`` arrays with one batch size N.
        min_batch: The profile's smallest batch, >= 1.

    Returns:
        The same arrays when N >= ``min_batch``, else C-contiguous copies of ``min_batch`` rows.
    """
    if min_batch < 1:
        raise EnginesInputError(f"min_batch={min_batch}: must be >= 1")
    out = {}
    for name, arr in inputs.items():
        short = min_batch - int(arr.shape[0])
        out[name] = arr if short <= 0 else np.concatenate([arr, np.zeros((short, *arr.shape[1:]), arr.dtype)])
    return out


class TrtEngine:
    """A TensorRT engine for batched person/scene inference.

    Args:
        engine_path: ``.engine`` file with its ``.engine.json`` sidecar.
        device: CUDA device index.

    Raises:
        EnginesInputError: file or sidecar missing/invalid.
        EngineMismatchError: built for another TensorRT version or GPU, or not deserializable.
        TensorRTUnavailable: TensorRT or cuda-python missing.
    """

    def __init__(self, engine_path: str | Path, device: int = 0):
        from engines.cuda_mem import call, device_info, import_cudart
        from engines.trt_build import import_tensorrt

        path = Path(engine_path)
        if not path.is_file():
            raise EnginesInputError(f"engine {str(path)!r} is not a file")
        self.sidecar = EngineSidecar.read(path)
        self.meta = ModelMeta.from_props(self.sidecar.model_props, source=f"{path} sidecar")
        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        call(cudart, cudart.cudaSetDevice(device))
        gpu_name, cc = device_info(device)
        check_compatible(self.sidecar, str(path), trt.__version__, gpu_name, cc)
        blob = path.read_bytes()
        check_engine_bytes(blob, self.sidecar, str(read_sidecar(path)["sha256"]), str(path))
        self._buffers: dict[str, Any] = {}
        self._stream: Any = None
        try:
            self._load(trt, blob, path)
        except BaseException:
            self.close()  # a load that fails half-way must not keep device memory or a stream
            raise

    def _load(self, trt: Any, blob: bytes, path: Path) -> None:
        """Deserialize ``blob`` and allocate a stream and a device buffer for every I/O tensor."""
        from engines.cuda_mem import DeviceBuffer, call

        cudart = self._cudart
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        dla_core = self.sidecar.plan.get("dla_core")
        if dla_core is not None:
            # The runtime, not the engine file, picks the DLA core the engine runs on (Python API,
            # `Runtime.DLA_core`); left unset, an engine built for core 1 would run on core 0.
            self._runtime.DLA_core = int(dla_core)
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise EngineMismatchError(
                f"{path}: TensorRT could not deserialize it; rebuild: {self.sidecar.rebuild}"
            )
        self._context = self._engine.create_execution_context()
        self.max_batch = self.sidecar.max_batch
        self.min_batch = self.sidecar.min_batch
        self._shapes = {n: tuple(v["opt"][1:]) for n, v in self.sidecar.inputs.items()}
        self._outputs = (self.meta.logits_output, self.meta.va_output)
        # execute_async_v3 needs an address for every I/O tensor, so outputs the agent does not
        # read get a buffer too.
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        engine_outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        missing = [n for n in self._outputs if n not in engine_outputs]
        if missing:
            raise EngineMismatchError(
                f"{path}: engine has outputs {engine_outputs}, its metadata names {missing}; "
                f"rebuild: {self.sidecar.rebuild}"
            )
        self._stream = call(cudart, cudart.cudaStreamCreate())
        for name, shape in self._shapes.items():
            self._buffers[name] = DeviceBuffer(cudart, self.max_batch * int(np.prod(shape)) * 4)
            self._set_input_shape(name, (self.max_batch, *shape))
        self._out_dtype = {}
        for name in engine_outputs:
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = tuple(self._context.get_tensor_shape(name))
            self._out_dtype[name] = dtype
            self._buffers[name] = DeviceBuffer(cudart, int(np.prod(shape)) * dtype.itemsize)

    def infer(self, person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N, C) and valence/arousal (N, 2), float32, for normalised views.

        Args:
            person: float32 (N, 3, Sp, Sp) person views.
            scene: float32 (N, 3, Ss, Ss) scene views.
        """
        inputs = {self.meta.input_for("person").name: person, self.meta.input_for("scene").name: scene}
        n = check_batch(inputs, self._shapes)
        if n == 0:
            return np.zeros((0, len(self.meta.classes)), np.float32), np.zeros((0, 2), np.float32)
        parts = [
            self._run({k: np.ascontiguousarray(v[sl]) for k, v in inputs.items()})
            for sl in batch_slices(n, self.max_batch)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """Set one input's shape; TensorRT answers False (and runs nothing) for a shape outside the
        engine's optimization profile."""
        if not self._context.set_input_shape(name, shape):
            raise EnginesInputError(
                f"engine input {name!r}: shape {tuple(shape)} is outside the engine's profile "
                f"(batch {self.min_batch}..{self.max_batch}, per sample {self._shapes[name]})"
            )

    def _run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from engines.cuda_mem import call

        n = int(next(iter(inputs.values())).shape[0])
        for name, arr in pad_batch(inputs, self.min_batch).items():
            self._set_input_shape(name, arr.shape)
            self._buffers[name].upload(arr, self._stream)
        for name, buf in self._buffers.items():
            self._context.set_tensor_address(name, buf.ptr)
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT messages)")
        outs = []
        for name in self._outputs:
            host = np.empty(tuple(self._context.get_tensor_shape(name)), self._out_dtype[name])
            self._buffers[name].download(host, self._stream)
            outs.append(host)
        call(self._cudart, self._cudart.cudaStreamSynchronize(self._stream))
        return outs[0][:n].astype(np.float32), outs[1][:n].astype(np.float32)

    def close(self) -> None:
        """Free device memory and TensorRT objects; idempotent."""
        from engines.cuda_mem import call

        for buf in self._buffers.values():
            buf.close()
        self._buffers = {}
        if self._stream is not None:
            call(self._cudart, self._cudart.cudaStreamDestroy(self._stream))
            self._stream = None
        self._context = self._engine = self._runtime = None
