"""Copy a model with its views' resample mode replaced, to measure what another resizer costs it.

Usage: ``python scripts/with_resample.py SRC DST {bilinear,area}`` where SRC is a fine-tuning
checkpoint (``.pt``) or an exported model (``.onnx``). Only the ``resample`` of each input's
geometry changes; evaluating the copy (``affectline train evaluate DST ...``) then cuts every view
the other way, through the same code as the agent.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from edge_agent.modelmeta import ModelMeta
from edge_agent.views import RESAMPLES
from engines.verify import read_meta


def with_resample(meta: ModelMeta, mode: str) -> ModelMeta:
    """``meta`` with every input's geometry resampled by ``mode``."""
    inputs = tuple(replace(s, geometry=replace(s.geometry, resample=mode)) for s in meta.inputs)
    return replace(meta, inputs=inputs)


def write_pt(src: str, dst: str, meta: ModelMeta) -> None:
    import torch

    from train.checkpoint import load_checkpoint

    blob = load_checkpoint(src)
    blob["meta_props"] = meta.to_props()
    torch.save(blob, dst)


def write_onnx(src: str, dst: str, meta: ModelMeta) -> None:
    import onnx

    model = onnx.load(src)
    props = meta.to_props()
    for prop in model.metadata_props:
        prop.value = props.get(prop.key, prop.value)
    onnx.save(model, dst)


def main(src: str, dst: str, mode: str) -> int:
    if mode not in RESAMPLES:
        print(f"mode={mode!r} not one of {RESAMPLES}", file=sys.stderr)
        return 2
    writers = {".pt": write_pt, ".onnx": write_onnx}
    suffix = "." + src.rsplit(".", 1)[-1]
    if suffix not in writers:
        print(f"{src}: not a .pt or .onnx file", file=sys.stderr)
        return 2
    try:
        meta = with_resample(read_meta(src), mode)
    except ValueError as exc:  # a missing file, an unreadable checkpoint or a broken contract
        print(f"error: {exc}", file=sys.stderr)
        return 2
    writers[suffix](src, dst, meta)
    print(f"{dst}: {src} with resample {mode}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:4]))
