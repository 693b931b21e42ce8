"""Uniform weight averaging of fine-tuned checkpoints ("model soup", Wortsman et al. 2022).

Averaging is only meaningful for checkpoints in one loss basin, e.g. a run and a warm-started
continuation of it; the caller decides that. What is checked here is what would make the average
wrong silently: a different network, different views or classes, or a different held-out split
(the soup would then have seen another run's test images).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edge_agent.modelmeta import PREFIX
from train.checkpoint import (
    CheckpointError,
    checkpoint_meta,
    config_sha256,
    load_checkpoint,
    model_with_weights,
    save_checkpoint,
)

# Metadata that legitimately differs between the ingredients (the soup gets its own).
_OWN_PROPS = (PREFIX + "model_version", PREFIX + "train_config_sha256")


def _contract(blob: dict[str, Any]) -> dict[str, Any]:
    """What every ingredient must share: network, kwargs and the agent metadata but its identity."""
    props = {k: v for k, v in blob["meta_props"].items() if k not in _OWN_PROPS}
    return {"model": blob["model"], "model_kwargs": blob["model_kwargs"], "meta": props}


def _shapes(blob: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in blob["state_dict"].items()}


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of floating-point tensors (in float64, cast back); integer buffers from the first.

    Integer buffers are BatchNorm's ``num_batches_tracked`` counters, which do not enter inference.
    """
    first = states[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in first.items():
        if value.is_floating_point():
            out[key] = torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def average_checkpoints(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Write the uniform average of ``paths`` to ``out`` as a release checkpoint (no optimizer).

    Its resolved config is the first ingredient's plus ``soup_of`` (the ingredient files and their
    config hashes), so ``train evaluate`` uses the same held-out split.

    Raises:
        ValueError: fewer than two paths, or one file given twice.
        CheckpointError: an unreadable ingredient, or ingredients that differ in network, views,
            classes or held-out split (the message names the first that differs).
    """
    if len(paths) < 2:
        raise ValueError(f"checkpoints: need at least 2 to average, got {len(paths)}")
    seen: dict[Path, str | Path] = {}
    for p in paths:
        resolved = Path(p).resolve()
        if resolved in seen:  # the "average" would repeat one model, or weight it silently
            first = str(seen[resolved])
            spelt = "" if first == str(p) else f" (as {first!r})"
            raise ValueError(f"checkpoints: {str(p)!r} is given twice{spelt}")
        seen[resolved] = p
    blobs = [load_checkpoint(p) for p in paths]
    want = _contract(blobs[0])
    want_shapes = _shapes(blobs[0])
    for path, blob in zip(paths[1:], blobs[1:], strict=True):
        got = _contract(blob)
        for key in want:
            if got[key] != want[key]:
                raise CheckpointError(f"{path}: {key} differs from {paths[0]}: {got[key]!r} vs {want[key]!r}")
        differ = sorted(set(_shapes(blob).items()) ^ set(want_shapes.items()))
        if differ:
            raise CheckpointError(f"{path}: weight {differ[0][0]!r} differs in name or shape from {paths[0]}")
    config = {
        **blobs[0]["config"],
        "soup_of": [
            {"path": str(p), "config_sha256": b["config_sha256"]} for p, b in zip(paths, blobs, strict=True)
        ],
    }
    net = model_with_weights(blobs[0], average_state_dicts([b["state_dict"] for b in blobs]), str(paths[0]))
    meta = checkpoint_meta(blobs[0], str(paths[0]))
    meta = dataclasses.replace(
        meta,
        model_version=f"{meta.model_version} soup of {len(paths)}",
        train_config_sha256=config_sha256(config),
    )
    return save_checkpoint(out, net, None, int(blobs[0]["epoch"]), config, meta, {})
