"""What ONNX Runtime's exact INT8 option (``session.x64quantprecision``) costs and changes on this CPU.

For each shipped file: the largest output difference with and without the option on real calibration
views, and the latency both ways (minimum over ``--rounds`` interleaved rounds of the median of
``--iters`` calls, 1 intra-op thread, batch 1 and 8). docs/benchmarks.md, "The exact INT8 kernel only
where it is needed", reports it.

    python scripts/int8_option_cost.py --calibration runs/engines/calib-default.npz
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort

from calibration.viewset import ViewSet
from edge_agent.cpu import X86_NO_VNNI, X86_VNNI, host_int8_kernel, ort_session_options
from edge_agent.infer import BUILTIN_MODELS
from engines.bench import measure_latency

# The agent's options for these CPU kinds are the two variants: with the option, and without it.
VARIANTS = {"exact": X86_NO_VNNI, "default": X86_VNNI}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibration", required=True, help=".npz view set (affectline engines calibrate)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=150)
    args = p.parse_args()
    views = ViewSet.load(args.calibration)
    names = sorted(BUILTIN_MODELS)
    diff = {}
    for name in names:
        a, b = (
            ort.InferenceSession(
                str(BUILTIN_MODELS[name]), ort_session_options(1, kernel), providers=["CPUExecutionProvider"]
            ).run(None, dict(views.inputs))
            for kernel in VARIANTS.values()
        )
        diff[name] = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    best: dict[str, float] = {}
    for _ in range(args.rounds):  # interleaved, so that a load spike hits every variant alike
        for name in names:
            for variant, kernel in VARIANTS.items():
                for batch in (1, 8):
                    lat = measure_latency(BUILTIN_MODELS[name], views, batch, 1, args.iters, 10, kernel)
                    key = f"{name} {variant} batch {batch}"
                    best[key] = min(best.get(key, float("inf")), lat.median_ms)
    report = {
        "int8_kernels": host_int8_kernel(),
        "max_abs_output_difference": diff,
        "median_ms": {k: round(v, 3) for k, v in best.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
