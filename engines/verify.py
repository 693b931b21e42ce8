"""Numeric agreement between a built model and its reference, on real samples.

Every model file `engines` writes is checked here before it is declared good: the exported ONNX
against the PyTorch checkpoint, the INT8 Q/DQ ONNX against the FP32 ONNX, a TensorRT engine
against the ONNX it was built from. ``affectline engines verify MODEL`` runs the same check on
demand. Models are opened through the agent's own backends (`edge_agent.infer`), so a model that
verifies here is one the agent loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from calibration.viewset import ViewSet
from edge_agent.modelmeta import ModelMeta
from engines.artifacts import load_onnx, read_sidecar, sidecar_path
from engines.errors import EnginesInputError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
SUFFIXES = (".onnx", *ENGINE_SUFFIXES, *CHECKPOINT_SUFFIXES)


@dataclass(frozen=True)
class Tolerance:
    """How close a model must stay to its reference.

    Attributes:
        min_top1_agreement: Share of samples with the same arg-max class, in [0, 1].
        max_logit_abs: Largest allowed |Δlogit|, or None (not checked: quantized models).
        max_va_abs: Largest allowed |Δvalence/arousal|, or None.
    """

    min_top1_agreement: float
    max_logit_abs: float | None = None
    max_va_abs: float | None = None


# Keyed by the precision of the model under test. FP32 vs FP32 differs only by kernel order;
# FP16 keeps ~3 significant digits; INT8 is judged by class agreement (its accuracy budget is
# enforced separately on labelled held-out data by `engines.quantize`).
TOLERANCES = {
    "fp32": Tolerance(0.999, 1e-3, 1e-3),
    "fp16": Tolerance(0.98, 0.1, 0.05),
    "int8": Tolerance(0.90),
}


@dataclass(frozen=True)
class Agreement:
    """Model vs reference on the same samples."""

    samples: int
    top1_agreement: float
    max_logit_abs: float
    mean_logit_abs: float
    max_va_abs: float
    ref_accuracy: float | None
    test_accuracy: float | None
    labelled: int
    tolerance: Tolerance
    ok: bool

    def line(self) -> str:
        text = (
            f"top-1 agreement {self.top1_agreement:.2%} on {self.samples} samples, "
            f"max|Δlogit| {self.max_logit_abs:.2e} (mean {self.mean_logit_abs:.2e}), "
            f"max|Δva| {self.max_va_abs:.2e}"
        )
        if self.ref_accuracy is not None and self.test_accuracy is not None:
            text += (
                f"; accuracy reference {self.ref_accuracy:.2%} vs this {self.test_accuracy:.2%} "
                f"on {self.labelled} labelled"
            )
        return text + (" — OK" if self.ok else f" — FAILS {self.tolerance}")

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    ref: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    tolerance: Tolerance,
    labels: np.ndarray | None = None,
) -> Agreement:
    """Agreement of two models' outputs on the same samples.

    Args:
        ref: Reference logits (N, C) and valence/arousal (N, 2).
        test: Same for the model under test.
        tolerance: Limits.
        labels: (N,) class labels (-1 unknown) for accuracies, optional.
    """
    (rl, rv), (tl, tv) = ref, test
    if rl.shape != tl.shape or rv.shape != tv.shape or not len(rl):
        raise EnginesInputError(
            f"outputs differ in shape or are empty: {rl.shape}/{tl.shape}, {rv.shape}/{tv.shape}"
        )
    dl = np.abs(rl.astype(np.float64) - tl)
    dv = np.abs(rv.astype(np.float64) - tv)
    agree = float(np.mean(rl.argmax(1) == tl.argmax(1)))
    ref_acc = test_acc = None
    labelled = 0
    if labels is not None and (labels >= 0).any():
        m = labels >= 0
        labelled = int(m.sum())
        ref_acc = float(np.mean(rl[m].argmax(1) == labels[m]))
        test_acc = float(np.mean(tl[m].argmax(1) == labels[m]))
    ok = (
        agree >= tolerance.min_top1_agreement
        and (tolerance.max_logit_abs is None or float(dl.max()) <= tolerance.max_logit_abs)
        and (tolerance.max_va_abs is None or float(dv.max()) <= tolerance.max_va_abs)
    )
    return Agreement(
        len(rl),
        agree,
        float(dl.max()),
        float(dl.mean()),
        float(dv.max()),
        ref_acc,
        test_acc,
        labelled,
        tolerance,
        ok,
    )


class Runner(Protocol):
    """A model that maps named inputs to (logits, valence/arousal); the agent's backends fit."""

    meta: ModelMeta

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class TorchRunner:
    """A training checkpoint run in PyTorch (the reference of an export)."""

    def __init__(self, checkpoint: str | Path):
        import torch

        from train.checkpoint import load_model

        self._torch = torch
        model, self.meta = load_model(checkpoint)
        self.model: Any = model  # None after close()

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        person = self._torch.from_numpy(inputs[self.meta.input_for("person").name])
        scene = self._torch.from_numpy(inputs[self.meta.input_for("scene").name])
        with self._torch.inference_mode():
            logits, va = self.model(person, scene)
        return logits.numpy().astype(np.float32), va.numpy().astype(np.float32)

    def close(self) -> None:
        self.model = None


def open_runner(path: str | Path, threads: int = 1, device: int = 0) -> Runner:
    """Open a model by type: ``.onnx`` (ONNX Runtime), ``.engine``/``.plan`` (TensorRT), ``.pt`` (PyTorch).

    Raises:
        EnginesInputError: unknown suffix or missing file.
    """
    from edge_agent.config import OnnxRuntimeBackend, TensorRTBackend
    from edge_agent.infer import OrtBackend, TrtBackend

    path = _model_file(path)
    if path.suffix == ".onnx":
        return OrtBackend(OnnxRuntimeBackend(type="onnxruntime", model=str(path), threads=threads))
    if path.suffix in ENGINE_SUFFIXES:
        return TrtBackend(TensorRTBackend(type="tensorrt", engine=str(path), device=device))
    return TorchRunner(path)  # _model_file lets no suffix but the checkpoint ones through


def read_meta(path: str | Path) -> ModelMeta:
    """Model metadata of an ``.onnx`` (metadata_props), ``.engine`` (sidecar) or ``.pt`` (checkpoint).

    Raises:
        EnginesInputError: unknown suffix, missing file, or an unreadable ONNX file.
    """
    path = _model_file(path)
    if path.suffix == ".onnx":
        props = {p.key: p.value for p in load_onnx(path).metadata_props}
        return ModelMeta.from_props(props, source=str(path))
    if path.suffix in ENGINE_SUFFIXES:
        from engines.trt_sidecar import EngineSidecar

        return ModelMeta.from_props(EngineSidecar.read(path).model_props, source=f"{path} sidecar")
    # _model_file lets no suffix but the checkpoint ones through.
    from train.checkpoint import checkpoint_meta, load_checkpoint

    return checkpoint_meta(load_checkpoint(path), str(path))


def _model_file(path: str | Path) -> Path:
    """``path`` as a Path, checked to be a file with a model suffix.

    Raises:
        EnginesInputError: unknown suffix or missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise EnginesInputError(f"model {str(path)!r} is not a file")
    if path.suffix not in SUFFIXES:
        raise EnginesInputError(f"model {str(path)!r}: suffix {path.suffix!r} not in {', '.join(SUFFIXES)}")
    return path


def check_inputs(meta: ModelMeta, views: ViewSet, where: str) -> None:
    """Refuse samples cut for other input names or sizes than the model's."""
    want = {s.name: (3, s.geometry.size, s.geometry.size) for s in meta.inputs}
    have = {k: tuple(v.shape[1:]) for k, v in views.inputs.items()}
    if want != have:
        raise EnginesInputError(
            f"{where}: samples have inputs {have}, the model wants {want}; "
            "cut samples for this model with `affectline engines calibrate --model ...`"
        )


def run_views(runner: Runner, views: ViewSet, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of a model on every sample, in batches: logits (N, C), valence/arousal (N, 2)."""
    outs = [runner.run(b) for b in views.batches(batch)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


@dataclass(frozen=True)
class VerifyReport:
    """Result of ``affectline engines verify``."""

    model: str
    reference: str
    precision: str
    agreement: Agreement


def precision_of(path: str | Path) -> str:
    """``int8``/``fp16``/``fp32`` from a model's sidecar (fp32 for checkpoints and unknown ONNX).

    Raises:
        EnginesInputError: the sidecar records a precision without tolerances here.
    """
    path = Path(path)
    if path.suffix in CHECKPOINT_SUFFIXES or not sidecar_path(path).exists():
        return "fp32"
    side = read_sidecar(path)
    if side.get("kind") == "onnx-int8-qdq":
        return "int8"
    precision = str(side.get("precision", "fp32"))
    if precision not in TOLERANCES:
        raise EnginesInputError(f"{path}: sidecar precision {precision!r} not one of {tuple(TOLERANCES)}")
    return precision


def default_reference(model: str | Path) -> Path:
    """The file a model was made from, per its sidecar.

    INT8 ONNX -> FP32 ONNX, engine -> its ONNX, FP32 ONNX -> checkpoint.

    Raises:
        EnginesInputError: no sidecar or the recorded source is not next to the model.
    """
    model = Path(model)
    side = read_sidecar(model)
    key = {"onnx-fp32": "checkpoint", "onnx-int8-qdq": "source_onnx", "tensorrt-engine": "source_onnx"}.get(
        str(side.get("kind"))
    )
    if key is None or not side.get(key):
        raise EnginesInputError(f"{model}: sidecar names no source model; pass --reference")
    recorded = Path(side[key])
    # Relative paths were recorded as given: next to the model (shipped pairs) or from the working dir.
    for ref in (recorded, model.parent / recorded):
        if ref.is_file():
            return ref
    raise EnginesInputError(f"{model}: its source {recorded} is not here; pass --reference")


def verify_model(
    model: str | Path,
    samples: ViewSet,
    reference: str | Path | None = None,
    tolerance: Tolerance | None = None,
    threads: int = 1,
    device: int = 0,
) -> VerifyReport:
    """Run a model and its reference on the same real samples and compare.

    Args:
        model: ``.onnx``, ``.engine`` or ``.pt`` file.
        samples: Real samples cut for this model.
        reference: Reference model (default: the source named in the model's sidecar).
        tolerance: Limits (default: `TOLERANCES` for the model's precision).
        threads: ONNX Runtime threads.
        device: CUDA device of a TensorRT engine (the one it was built on).
    """
    ref_path = Path(reference) if reference is not None else default_reference(model)
    if reference is not None and not ref_path.is_file():
        raise EnginesInputError(f"--reference={str(reference)!r}: is not a file")
    precision = precision_of(model)
    tol = tolerance or TOLERANCES[precision]
    outputs = []
    for path in (ref_path, Path(model)):
        runner = open_runner(path, threads, device)
        try:
            check_inputs(runner.meta, samples, str(path))
            outputs.append(run_views(runner, samples))
        finally:
            runner.close()
    agreement = compare(outputs[0], outputs[1], tol, samples.labels)
    return VerifyReport(str(model), str(ref_path), precision, agreement)
