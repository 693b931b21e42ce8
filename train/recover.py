"""A trainable checkpoint from an exported FP32 ONNX file (``affectline train recover``).

The package ships ONNX files only, and the export folds every BatchNorm into the convolution before
it: ``conv_bn(x) = W' * x + b'`` with ``W' = W·γ/σ`` and ``b' = β − μ·γ/σ``. To fine-tune such a model
(on a factory's own faces, or as a warm restart) the folded weights go back into a ``DualViewNet``:

- each convolution takes ``W'``;
- its BatchNorm is re-parameterised as ``BN(y) = γ·(y − μ)/√(σ² + ε) + β`` with ``μ, σ²`` the per-channel
  mean and variance of ``W' * x`` over real views, ``γ = √(σ² + ε)`` and ``β = μ + b'``.

At inference that is ``y + b'`` exactly, so the checkpoint reproduces the file (the caller checks it
with the exporter's own parity test). In training, BatchNorm normalises with batch statistics; with
``μ, σ²`` measured on the views the model will see, those are close to the running ones, so the first
training steps start from the shipped function instead of from a network whose every activation was
re-scaled (``μ = 0, σ² = 1`` would be exact at inference too, but on the shipped default the first
training-mode outputs then agree with the file on 45 % of faces instead of 96 %).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from calibration.viewset import ViewSet
from edge_agent.modelmeta import PREFIX, ModelMeta
from engines.artifacts import load_onnx, sha256_file
from engines.errors import VerificationError
from engines.verify import TOLERANCES, Agreement, TorchRunner, check_inputs, compare, open_runner, run_views
from train.checkpoint import save_checkpoint
from train.models import build_model, view_sizes
from train.models.dual_view import DualViewNet

# Heads by their weight shapes' roles: Gemm nodes of the export in forward order.
_GEMMS = ("fuse", "cls_head", "va_head")
_LAYER_NORMS = ("norm_person", "norm_scene")
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}


class RecoverError(ValueError):
    """The ONNX file is not an FP32 Affectline export this version can map back (message says why)."""


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == op]


def conv_bn_pairs(net: DualViewNet) -> Iterator[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The encoder's (convolution, BatchNorm) pairs in forward order; every convolution has one."""
    modules = list(net.features.modules())
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            bn = modules[i + 1]
            assert isinstance(bn, nn.BatchNorm2d), f"conv without BatchNorm after it: {module}"
            yield module, bn


def model_name(model: onnx.ModelProto, meta: ModelMeta, source: str) -> str:
    """The factory name of an export: the first word of its model version when that names a network
    with the file's input sizes (so ``train soup`` accepts the checkpoint beside the run's own), else
    ``affectline_mnv2_<Sp>_<Ss>``."""
    sizes = {}
    for value in model.graph.input:
        sizes[value.name] = value.type.tensor_type.shape.dim[-1].dim_value
    person, scene = (meta.input_for(view).name for view in ("person", "scene"))
    if set(sizes) != {person, scene} or not all(sizes.values()):
        raise RecoverError(f"{source}: inputs {sorted(sizes)} are not the fixed-size person and scene views")
    named = (meta.model_version.split() or [""])[0]
    try:
        if view_sizes(named) == (sizes[person], sizes[scene]):
            return named
    except ValueError:  # a version string that is not a factory name
        pass
    return f"affectline_mnv2_{sizes[person]}_{sizes[scene]}"


def _take(weights: dict[str, np.ndarray], name: str, source: str) -> torch.Tensor:
    if name not in weights:
        raise RecoverError(f"{source}: {name!r} is not a stored weight (a quantized or optimised file?)")
    return torch.from_numpy(weights[name].copy())


def folded_state(
    model: onnx.ModelProto, weights: dict[str, np.ndarray], net: DualViewNet, source: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Load every weight but the encoder's into ``net``; return the encoder's folded ``(W', b')`` pairs.

    Args:
        model: The export's graph.
        weights: Its initializers by name (``_initializers``).
        net: The network its input sizes name.
        source: The file, for messages.

    Raises:
        RecoverError: the graph's convolutions, layer norms or linear layers do not match ``net``.
    """
    convs = _nodes(model, "Conv")
    pairs = list(conv_bn_pairs(net))
    if len(convs) != len(pairs):
        raise RecoverError(f"{source}: {len(convs)} convolutions, the network has {len(pairs)}")
    folded = []
    for node, (conv, _) in zip(convs, pairs, strict=True):
        w = _take(weights, node.input[1], source)
        b = _take(weights, node.input[2], source) if len(node.input) > 2 else torch.zeros(w.shape[0])
        if w.shape != conv.weight.shape:
            raise RecoverError(
                f"{source}: convolution {node.name} has shape {tuple(w.shape)}, "
                f"the network's is {tuple(conv.weight.shape)}"
            )
        folded.append((w, b))
    _load_heads(model, weights, net, source)
    return folded


def _load_heads(
    model: onnx.ModelProto, weights: dict[str, np.ndarray], net: DualViewNet, source: str
) -> None:
    gemms, norms = _nodes(model, "Gemm"), _nodes(model, "LayerNormalization")
    if len(gemms) != len(_GEMMS) or len(norms) != len(_LAYER_NORMS):
        raise RecoverError(
            f"{source}: {len(gemms)} linear layers and {len(norms)} layer norms, "
            f"the network has {len(_GEMMS)} and {len(_LAYER_NORMS)}"
        )
    with torch.no_grad():
        for node, name in zip(gemms, _GEMMS, strict=True):
            layer = getattr(net, name)
            weight = _take(weights, node.input[1], source)
            # torch exports nn.Linear as Gemm(transB=1); a transposed copy would be transB=0.
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            layer.weight.copy_(weight if trans_b else weight.T)
            layer.bias.copy_(_take(weights, node.input[2], source))
        for node, name in zip(norms, _LAYER_NORMS, strict=True):
            layer = getattr(net, name)
            layer.weight.copy_(_take(weights, node.input[1], source))
            layer.bias.copy_(_take(weights, node.input[2], source))
        net.view_embed.copy_(_take(weights, "view_embed", source))


def _set_folded(
    net: DualViewNet,
    folded: list[tuple[torch.Tensor, torch.Tensor]],
    stats: list[tuple[torch.Tensor, torch.Tensor]] | None,
) -> None:
    """Write ``W'`` and the re-parameterised BatchNorms (module docstring)."""
    with torch.no_grad():
        for i, ((conv, bn), (w, b)) in enumerate(zip(conv_bn_pairs(net), folded, strict=True)):
            mean, var = stats[i] if stats is not None else (torch.zeros_like(b), torch.ones_like(b))
            running_mean, running_var, tracked = bn.running_mean, bn.running_var, bn.num_batches_tracked
            assert running_mean is not None and running_var is not None and tracked is not None
            conv.weight.copy_(w)
            running_mean.copy_(mean)
            running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps))
            bn.bias.copy_(mean + b)
            tracked.zero_()


def conv_statistics(
    net: DualViewNet, person: torch.Tensor, scene: torch.Tensor, batch: int = 64
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and variance of every encoder convolution's output over the views.

    Args:
        net: A network whose BatchNorms are still identity-plus-bias (``_set_folded`` without stats),
            so each convolution sees the input the exported file's does.
        person: (N, 3, Sp, Sp) normalised person views.
        scene: (N, 3, Ss, Ss) normalised scene views, paired with ``person``.
        batch: Pairs per forward pass (memory only; the statistics are over all N).

    Returns:
        ``(mean, var)`` per convolution in forward order, each (C,); var is the population variance.
    """
    pairs = list(conv_bn_pairs(net))
    sums = [torch.zeros(conv.out_channels, dtype=torch.float64) for conv, _ in pairs]
    squares = [torch.zeros_like(s) for s in sums]
    counts = [0] * len(pairs)

    def hook(index: int) -> Any:
        def record(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            y = out.double().transpose(0, 1).reshape(out.shape[1], -1)  # (C, N·H·W)
            sums[index] += y.sum(1)
            squares[index] += (y * y).sum(1)
            counts[index] += y.shape[1]

        return record

    handles = [conv.register_forward_hook(hook(i)) for i, (conv, _) in enumerate(pairs)]
    try:
        with torch.no_grad():
            for start in range(0, person.shape[0], batch):
                net.feature_maps(person[start : start + batch], scene[start : start + batch])
    finally:
        for handle in handles:
            handle.remove()
    moments = []
    for s, q, n in zip(sums, squares, counts, strict=True):
        mean = s / n
        moments.append((mean.float(), (q / n - mean * mean).clamp_min(0).float()))
    return moments


def recover(onnx_path: str | Path, views: ViewSet) -> tuple[DualViewNet, ModelMeta, str]:
    """The ``DualViewNet`` of an FP32 export, in eval mode, with its agent metadata and factory name.

    Args:
        onnx_path: An FP32 file written by ``affectline engines export`` (not a quantized one).
        views: Real samples cut for this model (``affectline engines calibrate``); the BatchNorm
            statistics are measured on them.

    Raises:
        RecoverError: unreadable file, no Affectline metadata, or a graph that does not map onto the
            network its input sizes name.
        EnginesInputError: ``views`` were cut for other input names or sizes.
    """
    source = str(onnx_path)
    model = load_onnx(onnx_path)
    quantized = sorted({n.op_type for n in model.graph.node} & _QUANTIZED_OPS)
    if quantized:
        raise RecoverError(
            f"{source}: a quantized file ({', '.join(quantized)}); recover from its FP32 source "
            "(the built-in model 'default')"
        )
    props = {p.key: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
    if not props:
        raise RecoverError(f"{source}: no {PREFIX}* metadata; not an Affectline export")
    meta = ModelMeta.from_props(props, source=source)
    check_inputs(meta, views, "--calibration")
    name = model_name(model, meta, source)
    weights = _initializers(model)
    fusion_dim = int(_take(weights, "fuse.bias", source).shape[0])
    net = build_model(name, num_classes=len(meta.classes), fusion_dim=fusion_dim, pretrained=False).eval()
    folded = folded_state(model, weights, net, source)
    _set_folded(net, folded, None)
    person = torch.from_numpy(views.inputs[meta.input_for("person").name])
    scene = torch.from_numpy(views.inputs[meta.input_for("scene").name])
    _set_folded(net, folded, conv_statistics(net, person, scene))
    return net, meta, name


def recover_checkpoint(onnx_path: str | Path, out: str | Path, calibration: str | Path) -> RecoverReport:
    """Write the trainable checkpoint of an FP32 export and check it against the file.

    The checkpoint's config records the file it came from and the view set; its held-out split is
    the file's (``affectline.train_split``), so ``train evaluate`` and ``train soup`` treat it like
    the run that produced the file.

    Args:
        onnx_path: FP32 ONNX file with Affectline metadata.
        out: The ``.pt`` to write.
        calibration: ``.npz`` view set cut for this model (``affectline engines calibrate``).

    Raises:
        RecoverError, EnginesInputError, ViewSetError: bad file, views or output path.
        VerificationError: the checkpoint's outputs differ from the file's beyond the export
            tolerance (the checkpoint is removed).
    """
    out = Path(out)
    if out.suffix != ".pt":
        raise RecoverError(f"--out={str(out)!r}: must end in .pt")
    views = ViewSet.load(calibration)
    net, meta, name = recover(onnx_path, views)
    config: dict[str, Any] = {
        "model": name,
        # Every factory keyword a fine-tuning run records, so `train soup` takes both (dropout is
        # not in the file: the network's default, which is fine-tuning's).
        "model_kwargs": {"fusion_dim": net.fusion_dim, "dropout": net.dropout.p},
        **meta.train_split,
        "recovered_from": {"file": str(onnx_path), "sha256": sha256_file(onnx_path)},
        "recovered_bn_statistics": {
            "file": str(calibration),
            "sha256": views.content_hash(),
            "samples": len(views),
        },
    }
    save_checkpoint(out, net, None, 0, config, meta, {})
    parity = _parity(onnx_path, out, views)
    if not parity.ok:
        out.unlink()
        raise VerificationError(f"{out}: does not reproduce {onnx_path}: {parity.line()}")
    # Written again with its own check inside, so the file says how closely it reproduced the source.
    save_checkpoint(out, net, None, 0, config, meta, {"recovered_parity": parity.to_record()})
    return RecoverReport(out, parity)


def _parity(onnx_path: str | Path, checkpoint: Path, views: ViewSet) -> Agreement:
    """The checkpoint in PyTorch against the file in ONNX Runtime, on the views."""
    ref, test = open_runner(onnx_path), TorchRunner(checkpoint)
    try:
        return compare(run_views(ref, views), run_views(test, views), TOLERANCES["fp32"], views.labels)
    finally:
        ref.close()
        test.close()


@dataclass(frozen=True)
class RecoverReport:
    """What ``recover_checkpoint`` wrote and how closely it reproduces the file."""

    checkpoint: Path
    parity: Agreement
