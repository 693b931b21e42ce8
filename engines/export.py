"""Checkpoint -> ONNX with the agent's metadata inside, checked before it is declared good.

The ONNX has a dynamic batch axis, inputs named after the model's views (``person``, ``scene``),
outputs ``logits`` and ``valence_arousal``, and `edge_agent.modelmeta` keys in ``metadata_props``
(classes, normalisation, view geometry, model version, training-config hash). After writing, the
file must pass ``onnx.checker`` (full check) and ONNX Runtime — through the agent's own loader —
must match PyTorch on real samples within `EXPORT_TOLERANCE`; otherwise the file is removed and
`VerificationError` is raised.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.viewset import ViewSet
from edge_agent.modelmeta import ModelMeta
from engines.artifacts import sha256_file, write_sidecar
from engines.errors import EnginesInputError, VerificationError
from engines.verify import Agreement, Tolerance, TorchRunner, check_inputs, compare, open_runner, run_views

log = logging.getLogger(__name__)

OPSETS = (17, 20)  # inclusive range the TorchScript exporter and TensorRT >= 8.6 both handle
EXPORT_TOLERANCE = Tolerance(min_top1_agreement=0.999, max_logit_abs=1e-3, max_va_abs=1e-3)
BATCH_AXIS = "batch"
PARITY_BATCH = 32  # the batch size of the full parity run (and the largest checked)


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote and how it checked it."""

    onnx: Path
    sidecar: Path
    opset: int
    parameters: int
    parity: Agreement
    batch_sizes: tuple[int, ...]


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    samples: ViewSet,
    opset: int = 17,
    tolerance: Tolerance = EXPORT_TOLERANCE,
) -> ExportReport:
    """Export a training checkpoint to a verified ONNX file.

    Args:
        checkpoint: ``.pt`` written by ``train.checkpoint.save_checkpoint``.
        out: Target ``.onnx``.
        samples: Real samples cut for this model (at least 2), used for the parity check at batch
            sizes 1, 3 and ``PARITY_BATCH`` (capped at their number).
        opset: ONNX opset, in ``OPSETS``.
        tolerance: Parity limits ONNX Runtime vs PyTorch.

    Raises:
        EnginesInputError: bad opset, path or samples.
        VerificationError: checker or parity failed (the file is removed).
    """
    out = Path(out)
    if not OPSETS[0] <= opset <= OPSETS[1]:
        raise EnginesInputError(f"--opset={opset}: allowed {OPSETS[0]}..{OPSETS[1]}")
    if out.suffix != ".onnx":
        raise EnginesInputError(f"--out={str(out)!r}: must end in .onnx")
    if len(samples) < 2:
        raise EnginesInputError(f"samples: {len(samples)} given, need >= 2 real samples for the parity check")
    torch_runner = TorchRunner(checkpoint)
    try:
        return _export_checked(torch_runner, Path(checkpoint), out, samples, opset, tolerance)
    finally:
        torch_runner.close()


def _export_checked(
    torch_runner: TorchRunner, checkpoint: Path, out: Path, samples: ViewSet, opset: int, tolerance: Tolerance
) -> ExportReport:
    """Trace the loaded checkpoint to ``out``, run the checker and the parity check, write the sidecar."""
    import onnx
    import torch

    meta = torch_runner.meta
    check_inputs(meta, samples, str(checkpoint))
    names = [meta.input_for("person").name, meta.input_for("scene").name]
    dummy = tuple(torch.from_numpy(samples.inputs[n][:2]) for n in names)
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {n: {0: BATCH_AXIS} for n in (*names, meta.logits_output, meta.va_output)}
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose: the dynamo exporter needs onnxscript, which
        # the training environment does not ship; its deprecation warning is noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Branches on view sizes trace as constants: correct, since the sizes are fixed per model
        # (the dynamic batch axis is checked below at batch 1, 3 and PARITY_BATCH).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            torch_runner.model,
            dummy,
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=[meta.logits_output, meta.va_output],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    model = onnx.load(str(out))
    _inline_initializer_identities(model)
    _write_metadata(model, meta, checkpoint)
    onnx.save(model, str(out))
    try:
        onnx.checker.check_model(str(out), full_check=True)
        parity, sizes = _parity(torch_runner, out, samples, tolerance)
    except (onnx.checker.ValidationError, VerificationError) as exc:
        out.unlink(missing_ok=True)
        raise VerificationError(f"{out}: exported model failed its check and was removed: {exc}") from None
    params = sum(int(p.numel()) for p in torch_runner.model.parameters())
    sidecar = write_sidecar(
        out,
        "onnx-fp32",
        {
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": sha256_file(checkpoint),
            "opset": opset,
            "precision": "fp32",
            "inputs": {n: [BATCH_AXIS, *samples.inputs[n].shape[1:]] for n in names},
            "outputs": [meta.logits_output, meta.va_output],
            "parameters": params,
            "model_props": meta.to_props(),
            "verification": {
                "onnx_checker": "full_check passed",
                "parity_vs_pytorch": parity.to_record(),
                "batch_sizes": list(sizes),
                "samples_sha256": samples.content_hash(),
            },
        },
    )
    return ExportReport(out, sidecar, opset, params, parity, sizes)


def _inline_initializer_identities(model: Any) -> None:
    """Let every node read shared weights straight from their initializer.

    Both views run one shared encoder; the TorchScript exporter gives the second branch its
    weights through ``Identity`` nodes. Quantizers (and some TensorRT weight fusions) only treat
    a Conv/Gemm input as a weight when it *is* an initializer, so those Identities are removed.
    """
    inits = {i.name for i in model.graph.initializer}
    alias = {
        n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits
    }
    graph_outputs = {o.name for o in model.graph.output}
    keep = [
        n
        for n in model.graph.node
        if not (n.op_type == "Identity" and n.output[0] in alias and n.output[0] not in graph_outputs)
    ]
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias and alias[name] != name:
                node.input[i] = alias[name]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _write_metadata(model: object, meta: ModelMeta, checkpoint: str | Path) -> None:
    """Put the agent's metadata keys into ``metadata_props`` (replacing any stale ones)."""
    props = meta.to_props()
    kept = [p for p in model.metadata_props if p.key not in props]  # type: ignore[attr-defined]
    del model.metadata_props[:]  # type: ignore[attr-defined]
    model.metadata_props.extend(kept)  # type: ignore[attr-defined]
    for key, value in props.items():
        entry = model.metadata_props.add()  # type: ignore[attr-defined]
        entry.key, entry.value = key, value
    model.producer_name = "affectline engines export"  # type: ignore[attr-defined]
    model.doc_string = f"Affectline dual-view emotion model {meta.model_version} from {Path(checkpoint).name}"  # type: ignore[attr-defined]


def _parity(
    torch_runner: TorchRunner, onnx_path: Path, samples: ViewSet, tolerance: Tolerance
) -> tuple[Agreement, tuple[int, ...]]:
    """ONNX Runtime (through the agent's loader) vs PyTorch on all samples, at several batch sizes."""
    ort_runner = open_runner(onnx_path)
    try:
        if ort_runner.meta != torch_runner.meta:
            raise VerificationError("metadata read back by the agent differs from the checkpoint's")
        ref = run_views(torch_runner, samples, PARITY_BATCH)
        # The dynamic batch axis must really be dynamic: the full batches of run_views, a single
        # sample and an odd batch (as many of those as there are samples for).
        batch = min(PARITY_BATCH, len(samples))
        sizes = tuple(sorted({1, min(3, len(samples)), batch}))
        got = run_views(ort_runner, samples, PARITY_BATCH)  # the full batches: compared below
        atol = tolerance.max_logit_abs if tolerance.max_logit_abs is not None else 1e-3
        for size in sizes[:-1]:
            small = ort_runner.run(samples.take(slice(0, size)).inputs)
            if not np.allclose(small[0], ref[0][:size], atol=atol):
                raise VerificationError(f"at batch size {size}, ONNX Runtime's logits differ from PyTorch's")
    finally:
        ort_runner.close()
    agreement = compare(ref, got, tolerance, samples.labels)
    log.info("export parity: %s", agreement.line())
    if not agreement.ok:
        raise VerificationError(f"ONNX Runtime vs PyTorch: {agreement.line()}")
    return agreement, sizes
