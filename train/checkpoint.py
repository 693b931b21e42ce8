"""Checkpoints: model name + kwargs + weights + the agent's ``ModelMeta`` + resolved config (+ sha256).

A checkpoint is self-describing: ``load_model`` rebuilds the network from the factory name and kwargs
and returns the metadata the exporter writes into the ONNX file, so nothing about views,
normalisation or class order is re-typed downstream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from edge_agent.modelmeta import InputSpec, ModelMeta, train_split_of
from edge_agent.views import ViewGeometry
from train.errors import CheckpointError
from train.models import IMAGENET_MEAN, IMAGENET_STD, build_model

FORMAT = "affectline-checkpoint-1"
# What ``save_checkpoint`` always writes and the readers index without checking.
REQUIRED = ("model", "model_kwargs", "state_dict", "epoch", "meta_props", "config", "extra")


def config_sha256(config: dict[str, Any]) -> str:
    """Hash of the resolved config in canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def make_meta(
    classes: tuple[str, ...], person: ViewGeometry, scene: ViewGeometry, config: dict[str, Any], version: str
) -> ModelMeta:
    """The agent-facing metadata of a model trained with ``config``.

    Inputs are named ``person`` and ``scene``, outputs ``logits`` and ``valence_arousal``.
    """

    def spec(name: str, geo: ViewGeometry) -> InputSpec:
        return InputSpec(name, name, geo, IMAGENET_MEAN, IMAGENET_STD, "RGB")

    return ModelMeta(
        classes=tuple(classes),
        inputs=(spec("person", person), spec("scene", scene)),
        logits_output="logits",
        va_output="valence_arousal",
        model_version=version,
        train_config_sha256=config_sha256(config),
        train_split=train_split_of(config),
    )


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    assert isinstance(inner, nn.Module)
    return inner


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    config: dict[str, Any],
    meta: ModelMeta,
    extra: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically and its resolved config (``<stem>.config.yaml``) beside it.

    Args:
        path: Target ``.pt`` file.
        model: The network (DDP wrapper allowed).
        optimizer: Optimizer whose state is kept for resuming, or ``None`` for a release file.
        epoch: Completed epochs (or the epoch in progress for a mid-epoch save; see ``extra``).
        config: Resolved config; must contain ``model`` (factory name) and ``model_kwargs``.
        meta: Agent metadata (see ``make_meta``).
        extra: Anything else to keep (metrics, step within the epoch, scheduler position).

    Raises:
        ValueError: ``config`` lacks ``model`` or ``model_kwargs``.
    """
    if "model" not in config or "model_kwargs" not in config:
        raise ValueError(f"save_checkpoint: config needs 'model' and 'model_kwargs', has {sorted(config)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "model": config["model"],
        "model_kwargs": config["model_kwargs"],
        "state_dict": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "meta_props": meta.to_props(),
        "config": config,
        "config_sha256": config_sha256(config),
        "extra": extra,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    with open(path.with_name(path.stem + ".config.yaml"), "w") as fh:
        yaml.safe_dump(
            {"config_sha256": blob["config_sha256"], **json.loads(json.dumps(config, default=str))},
            fh,
            sort_keys=True,
        )
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (for resuming).

    Raises:
        CheckpointError: missing file, not a torch file, not an Affectline checkpoint, or one that
            lacks an entry of ``REQUIRED``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch would try it as a legacy pickle and report a stray byte
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint (not a zip archive)")
    try:
        # weights_only: a checkpoint is tensors and plain data; unpickling anything else could run
        # code from a file someone handed us (export and verify accept any path).
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files; report them all the same way
        # torch's messages run over many lines; the first says what went wrong, and a problem is one line.
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:160]
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {first})"
        ) from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an Affectline checkpoint (format {FORMAT!r})")
    missing = [key for key in REQUIRED if key not in blob]
    if missing:
        raise CheckpointError(f"{path}: an incomplete checkpoint, missing {', '.join(missing)}")
    return blob


def load_matching_weights(model: nn.Module, path: str | Path) -> set[str]:
    """Initialise ``model`` from a pretraining or fine-tuning checkpoint: every weight whose name and
    shape match is taken, the rest keep their values.

    Returns:
        The names of the parameters and buffers that were loaded.

    Raises:
        CheckpointError: see ``load_checkpoint``; also a checkpoint with no matching encoder weights.
    """
    return match_weights(model, load_checkpoint(path), str(path))


def match_weights(model: nn.Module, blob: dict[str, Any], source: str) -> set[str]:
    """``load_matching_weights`` for a checkpoint already loaded from ``source``."""
    own = model.state_dict()
    take = {k: v for k, v in blob["state_dict"].items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("features.") for k in take):
        raise CheckpointError(f"{source}: no encoder weights match model {blob.get('model')!r}")
    model.load_state_dict(take, strict=False)
    return set(take)


def load_model(path: str | Path) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model of a checkpoint in eval mode, with its agent metadata.

    Raises:
        CheckpointError: see ``load_checkpoint``; also a model name or kwargs this version cannot
            build, or weights that do not fit the named model.
    """
    blob = load_checkpoint(path)
    model = model_with_weights(blob, blob["state_dict"], str(path))
    return model.eval(), checkpoint_meta(blob, str(path))


def model_with_weights(blob: dict[str, Any], state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The network a loaded checkpoint names (factory name and kwargs), holding ``state_dict``.

    Raises:
        CheckpointError: a model name or kwargs this version cannot build, or weights that do not
            fit it (the message names ``source``).
    """
    try:
        model = build_model(blob["model"], **{**blob["model_kwargs"], "pretrained": False})
    except (ValueError, TypeError) as exc:  # unknown factory name or kwargs of another version
        raise CheckpointError(f"{source}: cannot build its model: {exc}") from exc
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit model {blob['model']!r}: {exc}") from exc
    return model


def checkpoint_meta(blob: dict[str, Any], source: str) -> ModelMeta:
    """The agent metadata of a loaded checkpoint; one written before ``train_split`` was recorded
    gets it from its own config."""
    meta = ModelMeta.from_props(blob["meta_props"], source=source)
    if not meta.train_split:
        meta = dataclasses.replace(meta, train_split=train_split_of(blob.get("config", {})))
    return meta
