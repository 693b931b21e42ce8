"""Copy a model with its views' resample mode replaced, to measure what another resizer costs it.

Usage: ``python scripts/with_resample.py SRC DST {bilinear,area}`` where SRC is a fine-tuning
checkpoint (``.pt``) or an exported model (``.onnx``). Only the ``resample`` field of the input
metadata changes; evaluating the copy (``affectline train evaluate DST ...``) then cuts every view
the other way, through the same code as the agent.
"""

from __future__ import annotations

import json
import sys

from edge_agent.views import RESAMPLES

KEY = "affectline.inputs"


def swap(inputs: str, mode: str) -> str:
    """The ``affectline.inputs`` JSON with every view's ``resample`` set to ``mode``."""
    views = json.loads(inputs)
    for view in views.values():
        view["resample"] = mode
    return json.dumps(views)


def main(src: str, dst: str, mode: str) -> int:
    if mode not in RESAMPLES:
        print(f"mode={mode!r} not one of {RESAMPLES}", file=sys.stderr)
        return 2
    if src.endswith(".pt"):
        import torch

        blob = torch.load(src, map_location="cpu", weights_only=False)
        blob["meta_props"][KEY] = swap(blob["meta_props"][KEY], mode)
        torch.save(blob, dst)
    elif src.endswith(".onnx"):
        import onnx

        model = onnx.load(src)
        for prop in model.metadata_props:
            if prop.key == KEY:
                prop.value = swap(prop.value, mode)
        onnx.save(model, dst)
    else:
        print(f"{src}: not a .pt or .onnx file", file=sys.stderr)
        return 2
    print(f"{dst}: {src} with resample {mode}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:4]))
