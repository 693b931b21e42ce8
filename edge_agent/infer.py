"""Emotion inference stage: two views per tracked person, one batched model call per step.

Backends (ONNX Runtime on CPU, TensorRT on NVIDIA GPUs) sit behind one small interface and are
chosen by ``inference.backend.type``. Everything model-specific (classes, input names, view
geometry, normalisation) is read from the model file's metadata (`edge_agent.modelmeta`).

Re-inference is selective, DeepStream-style: a track is sent to the model when it is new, when
``reinfer_every_n`` of its camera's frames have passed, or when its box area changed by more
than ``reinfer_scale_change``; otherwise its cached result is reused and marked not observed, so
the smoother does not count it twice.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge_agent.config import Inference, OnnxRuntimeBackend, TensorRTBackend
from edge_agent.cpu import (
    FAST_INT8_KERNELS,
    X86_NO_VNNI,
    host_int8_kernel,
    ort_session_options,
)
from edge_agent.modelmeta import ModelContractError, ModelMeta
from edge_agent.smooth import SHARPNESS_SIDE, observation_quality
from edge_agent.structures import FrameResult
from edge_agent.views import crop_square, square_boxes

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"
BUILTIN_MODELS = {
    "default": MODELS_DIR / "affectline-default.onnx",
    # Portable Q/DQ: signed activations, the source for TensorRT engines; slower than FP32 on x86.
    "default-int8": MODELS_DIR / "affectline-default-int8.onnx",
    # Unsigned activations with zero points: ONNX Runtime fuses it fully, the fastest on CPUs
    # with fast INT8 kernels.
    "default-int8-cpu": MODELS_DIR / "affectline-default-int8-cpu.onnx",
}
# ``model: auto`` picks the CPU INT8 file where ONNX Runtime's INT8 kernels are fast, FP32
# elsewhere: on an x86 CPU without VNNI the exact INT8 kernels (`ort_session_options`) made the
# CPU INT8 file slower than FP32 (docs/benchmarks.md, "INT8 on CPUs without VNNI").
AUTO_MODEL = "auto"


class ModelLoadError(RuntimeError):
    """A model file is missing, unreadable, or does not match what the agent expects."""


class Backend(Protocol):
    """What every inference backend provides."""

    meta: ModelMeta
    path: Path  # the file it runs (``auto`` resolved)

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Run one batch.

        Args:
            inputs: ``{input_name: float32 (N, 3, S, S)}``, normalised as the metadata says.

        Returns:
            logits (N, C) and valence/arousal (N, 2), float32.
        """
        ...

    def close(self) -> None: ...


def auto_model(kernel: str) -> str:
    """The built-in model ``auto`` stands for on a CPU with this `int8_kernel`."""
    return "default-int8-cpu" if kernel in FAST_INT8_KERNELS else "default"


def _slower_than_fp32(model: str, kernel: str, machine: str) -> bool:
    """Measured, not guessed (docs/benchmarks.md): the CPU INT8 file on x86 without VNNI; the portable
    file on any x86 CPU (ONNX Runtime cannot fuse its signed activations there)."""
    if model == "default-int8":
        return machine.lower() in ("x86_64", "amd64")
    return kernel == X86_NO_VNNI


def resolve_model_path(model: str, key: str = "inference.backend.model", log_choice: bool = True) -> Path:
    """Map ``auto`` and the names in `BUILTIN_MODELS` to the shipped files; other values are paths.

    Args:
        model: ``auto``, a built-in name or a file path.
        key: What the caller calls this value (a config key path or a command-line argument), named
            in the error so that the user knows which input to fix.
        log_choice: Log which file ``auto`` picked and warn about a slow INT8 choice; off for callers
            that only check or record the path (the loader says it once).

    Raises:
        ModelLoadError: the resolved file does not exist.
    """
    if model in (AUTO_MODEL, "default-int8", "default-int8-cpu"):
        kernel = host_int8_kernel()
        if model == AUTO_MODEL:
            model = auto_model(kernel)
            if log_choice:
                log.info("model auto: %s on this CPU (INT8 kernels: %s)", model, kernel)
        elif log_choice and _slower_than_fp32(model, kernel, platform.machine()):
            log.warning(
                "model %s is slower than FP32 on this CPU (INT8 kernels: %s): 'auto' picks faster",
                model,
                kernel,
            )
    path = BUILTIN_MODELS.get(model, Path(model)).expanduser()
    if not path.is_file():
        hint = " (the shipped default model is missing from this install)" if model in BUILTIN_MODELS else ""
        raise ModelLoadError(f"{key}: {str(path)!r} is not a file{hint}")
    return path


class OrtBackend:
    """ONNX Runtime on CPU; runs FP32 and INT8 Q/DQ models alike."""

    def __init__(self, cfg: OnnxRuntimeBackend):
        import onnxruntime as ort

        path = resolve_model_path(cfg.model)
        try:
            self.session = ort.InferenceSession(
                str(path), ort_session_options(cfg.threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise ModelLoadError(f"{path}: not a loadable ONNX model: {exc}") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.meta = ModelMeta.from_props(props, source=str(path))
        except ModelContractError as exc:
            raise ModelLoadError(str(exc)) from None
        self._check_io(path)
        self.path = path
        log.info("ONNX Runtime CPU, %d thread(s): %s", cfg.threads, path)

    def _check_io(self, path: Path) -> None:
        """Refuse a model whose inputs/outputs do not match its own metadata."""
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        for spec in self.meta.inputs:
            if spec.name not in inputs:
                raise ModelLoadError(
                    f"{path}: metadata names input {spec.name!r}, model has {sorted(inputs)}"
                )
            shape = inputs[spec.name]
            want = [3, spec.geometry.size, spec.geometry.size]
            if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != want:
                expected = "[N, " + ", ".join(map(str, want)) + "]"
                raise ModelLoadError(f"{path}: input {spec.name!r} has shape {shape}, expected {expected}")
        outputs = {o.name for o in self.session.get_outputs()}
        for name in (self.meta.logits_output, self.meta.va_output):
            if name not in outputs:
                raise ModelLoadError(f"{path}: metadata names output {name!r}, model has {sorted(outputs)}")
        self._check_outputs(path)

    def _check_outputs(self, path: Path) -> None:
        """Run one all-zero batch: logits must come out (1, C) for the C metadata classes, valence/
        arousal (1, 2). Output shapes are often dynamic, so only a run shows a mismatch, and one
        found here is a clear start-up error instead of a failure on every frame with a face."""
        batch = {
            s.name: np.zeros((1, 3, s.geometry.size, s.geometry.size), np.float32) for s in self.meta.inputs
        }
        try:
            logits, va = self.run(batch)
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelLoadError(f"{path}: a test batch of 1 does not run: {exc}") from None
        expected = {
            self.meta.logits_output: (logits.shape, (1, len(self.meta.classes))),
            self.meta.va_output: (va.shape, (1, 2)),
        }
        for name, (shape, want) in expected.items():
            if shape != want:
                raise ModelLoadError(
                    f"{path}: output {name!r} has shape {shape} for a batch of 1, expected {want} "
                    f"(classes in the metadata: {list(self.meta.classes)})"
                )

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        logits, va = self.session.run([self.meta.logits_output, self.meta.va_output], inputs)
        return np.asarray(logits, np.float32), np.asarray(va, np.float32)

    def close(self) -> None:
        self.__dict__.pop("session", None)  # idempotent; frees the ORT session


class TrtBackend:
    """TensorRT engine built by ``affectline engines build`` on this device."""

    def __init__(self, cfg: TensorRTBackend):
        from engines.errors import EngineMismatchError, EnginesInputError, TensorRTUnavailable
        from engines.trt_runtime import TrtEngine

        try:
            self.engine = TrtEngine(cfg.engine, device=cfg.device)
        except (ImportError, TensorRTUnavailable, EngineMismatchError, EnginesInputError) as exc:
            raise ModelLoadError(f"inference.backend.engine {cfg.engine!r}: {exc}") from None
        self.meta = self.engine.meta
        self.path = Path(cfg.engine)

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        person = inputs[self.meta.input_for("person").name]
        scene = inputs[self.meta.input_for("scene").name]
        return self.engine.infer(person, scene)

    def close(self) -> None:
        self.engine.close()


def build_backend(cfg: Inference) -> Backend:
    """The backend named by ``cfg.backend.type``."""
    if isinstance(cfg.backend, TensorRTBackend):
        return TrtBackend(cfg.backend)
    return OrtBackend(cfg.backend)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mirrored(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same model inputs, each view flipped left to right: ``{name: (N, 3, S, S)}``."""
    return {k: np.ascontiguousarray(v[..., ::-1]) for k, v in inputs.items()}


def predict(
    backend: Backend, inputs: dict[str, np.ndarray], mirror_average: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C) and valence/arousal (N, 2) for one batch of model inputs.

    With ``mirror_average`` the batch is run a second time with every view mirrored and the two
    results are averaged. A face and its mirror image show the same emotion, so the average cancels
    some of the model's left/right noise (FER+ Test +1.05 points on average over five models, at
    twice the model time; docs/results.md) -- the agent and ``train evaluate`` both call this.
    """
    logits, va = backend.run(inputs)
    probs = softmax(logits)
    if mirror_average:
        logits_m, va_m = backend.run(mirrored(inputs))
        probs = (probs + softmax(logits_m)) / 2
        va = (va + va_m) / 2
    return probs, va


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian: low for blurred or featureless crops."""
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


@dataclass
class _Cached:
    frame_index: int
    area: float
    probs: np.ndarray
    va: np.ndarray
    quality: float


class Preprocessor:
    """Cuts both views for each anchor box and normalises them as the model's metadata says."""

    def __init__(self, meta: ModelMeta):
        self.specs = meta.inputs
        self.person = meta.input_for("person")
        # (x/255 - mean)/std == x*scale + offset, per RGB channel.
        self._scale = {s.name: (1 / (255 * np.asarray(s.std, np.float32))) for s in meta.inputs}
        self._offset = {
            s.name: (-np.asarray(s.mean, np.float32) / np.asarray(s.std, np.float32)) for s in meta.inputs
        }

    def views(self, image: np.ndarray, anchors: np.ndarray) -> dict[str, np.ndarray]:
        """Uint8 RGB crops per input: ``{name: (N, S, S, 3)}``."""
        out = {}
        for spec in self.specs:
            boxes = square_boxes(anchors, spec.geometry)
            crops = [crop_square(image, b, spec.geometry.size, spec.geometry.resample) for b in boxes]
            arr = (
                np.stack(crops)
                if crops
                else np.zeros((0, spec.geometry.size, spec.geometry.size, 3), np.uint8)
            )
            # Frames are BGR (OpenCV); flip only for inputs the model wants as RGB.
            out[spec.name] = arr[..., ::-1] if spec.color == "RGB" else arr
        return out

    def sharpness(self, image: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """(N,) Laplacian variance of each person view, cut again at ``SHARPNESS_SIDE`` px in grey.

        The quality scale in ``edge_agent.smooth`` was set at that side; measuring at the model's own
        input size would make a 96-px model see every face as ~4.5x blurrier than a 64-px one.
        """
        geometry = self.person.geometry
        boxes = square_boxes(anchors, geometry)
        crops = (crop_square(image, b, SHARPNESS_SIDE) for b in boxes)
        return np.array([sharpness(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY)) for c in crops], np.float64)

    def normalise(self, name: str, views: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 model input."""
        x = views.astype(np.float32) * self._scale[name] + self._offset[name]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class EmotionInferencer:
    """The inference stage: adds raw model results to every tracked person with a face."""

    def __init__(self, backend: Backend, cfg: Inference):
        self.backend = backend
        self.cfg = cfg
        self.meta = backend.meta
        self.pre = Preprocessor(backend.meta)
        self._cache: dict[tuple[str, int], _Cached] = {}
        self.calls = 0  # batches; each runs the model twice with mirror_average
        self.persons_inferred = 0
        self.nonfinite = 0  # model results dropped because they held NaN or infinity

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.classes

    def infer(self, results: list[FrameResult]) -> list[FrameResult]:
        """Add ``probs_raw``, ``va_raw``, ``quality`` and ``observed`` columns to every result.

        All persons that need a fresh estimate, across all cameras, go into one batched call
        (split only at ``max_batch``). Rows without a face keep zero quality and are not observed.
        """
        jobs = [self._select(r) for r in results]
        todo = [(r, rows) for r, rows in zip(results, jobs, strict=True) if len(rows)]
        if todo:
            self._run_batch(todo)
        for r in results:
            self._fill_from_cache(r)
        return results

    def forget(self, camera: str, ended: tuple[int, ...]) -> None:
        """Drop cached results of tracks that ended."""
        for tid in ended:
            self._cache.pop((camera, tid), None)

    def _select(self, result: FrameResult) -> np.ndarray:
        """Row indices of persons that need a fresh model result.

        Only rows the detector matched in this frame: an unmatched row's face is the tracker's
        prediction, whose result would count for nothing (no detector score, quality 0) and would
        replace the cached one and restart its re-inference clock.
        """
        det = result.detections
        assert det.face_xyxy is not None and det.tracker_id is not None
        seen = det.has_face & det.data["matched"] if "matched" in det.data else det.has_face
        rows = []
        for i in np.flatnonzero(seen):
            face = det.face_xyxy[i]
            area = float((face[2] - face[0]) * (face[3] - face[1]))
            c = self._cache.get((result.frame.camera, int(det.tracker_id[i])))
            if (
                c is None
                or result.frame.index - c.frame_index >= self.cfg.reinfer_every_n
                or abs(area / max(c.area, 1e-6) - 1) > self.cfg.reinfer_scale_change
            ):
                rows.append(i)
        return np.asarray(rows, dtype=np.int64)

    def _run_batch(self, todo: list[tuple[FrameResult, np.ndarray]]) -> None:
        views: dict[str, list[np.ndarray]] = {s.name: [] for s in self.meta.inputs}
        sharp: list[np.ndarray] = []
        owners: list[tuple[FrameResult, int]] = []
        for result, rows in todo:
            det = result.detections
            assert det.face_xyxy is not None
            for name, arr in self.pre.views(result.frame.image, det.face_xyxy[rows]).items():
                views[name].append(arr)
            sharp.append(self.pre.sharpness(result.frame.image, det.face_xyxy[rows]))
            owners.extend((result, int(i)) for i in rows)
        stacked = {k: np.concatenate(v) for k, v in views.items()}
        sharpness_all = np.concatenate(sharp)
        n = len(owners)
        for start in range(0, n, self.cfg.max_batch):
            sl = slice(start, start + self.cfg.max_batch)
            inputs = {k: self.pre.normalise(k, v[sl]) for k, v in stacked.items()}
            probs, va = predict(self.backend, inputs, self.cfg.mirror_average)
            self.calls += 1
            finite = np.isfinite(probs).all(axis=1) & np.isfinite(va).all(axis=1)
            for j, (result, i) in enumerate(owners[sl]):
                if not finite[j]:  # NaN/inf from a broken model must not reach payloads (not JSON)
                    self.nonfinite += 1
                    continue
                self._store(result, i, probs[j], va[j], float(sharpness_all[start + j]))
        self.persons_inferred += n

    def _store(self, result: FrameResult, i: int, probs: np.ndarray, va: np.ndarray, sharp: float) -> None:
        det = result.detections
        assert det.face_xyxy is not None and det.tracker_id is not None
        face = det.face_xyxy[i]
        side = float(max(face[2] - face[0], face[3] - face[1]))
        score = float(det.data["face_score"][i]) if "face_score" in det.data else float(det.confidence[i])
        quality = float(observation_quality(np.array([side]), np.array([score]), np.array([sharp]))[0])
        self._cache[(result.frame.camera, int(det.tracker_id[i]))] = _Cached(
            frame_index=result.frame.index,
            area=float((face[2] - face[0]) * (face[3] - face[1])),
            probs=probs.astype(np.float32),
            va=np.clip(va, -1, 1).astype(np.float32),
            quality=quality,
        )

    def _fill_from_cache(self, result: FrameResult) -> None:
        det = result.detections
        assert det.tracker_id is not None
        n, c = len(det), len(self.meta.classes)
        probs = np.full((n, c), 1.0 / c, np.float32)
        va = np.zeros((n, 2), np.float32)
        quality = np.zeros(n, np.float32)
        observed = np.zeros(n, bool)
        for i, tid in enumerate(det.tracker_id):
            cached = self._cache.get((result.frame.camera, int(tid)))
            if cached is None:
                continue
            probs[i], va[i] = cached.probs, cached.va
            observed[i] = cached.frame_index == result.frame.index
            quality[i] = cached.quality
        det.set("probs_raw", probs)
        det.set("va_raw", va)
        det.set("quality", quality)
        det.set("observed", observed)

    def close(self) -> None:
        self._cache.clear()
        self.backend.close()
