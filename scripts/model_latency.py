"""CPU latency of the shipped ONNX models, as docs/benchmarks.md reports it.

Minimum over ``--rounds`` interleaved rounds (so a load spike hits every model alike) of the median
of ``--iters`` calls, one intra-op thread, batch 1 and 8, on real calibration views.

    python scripts/model_latency.py --calibration runs/engines/calib-default.npz
"""

from __future__ import annotations

import argparse
import json

from calibration.viewset import ViewSet
from edge_agent.infer import BUILTIN_MODELS, resolve_model_path
from engines.bench import measure_latency


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibration", required=True, help=".npz view set (affectline engines calibrate)")
    p.add_argument(
        "--models", nargs="+", default=sorted(BUILTIN_MODELS), help="built-in names, auto or paths"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=200)
    args = p.parse_args()
    views = ViewSet.load(args.calibration)
    files = {name: resolve_model_path(name) for name in args.models}  # auto too, resolved (and logged) once
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, path in files.items():
            for batch in (1, 8):
                t = measure_latency(path, views, batch, threads=1, iters=args.iters).median_ms
                best[f"{name} batch {batch}"] = min(best.get(f"{name} batch {batch}", t), t)
    ms = {k: round(v, 3) for k, v in best.items()}
    print(json.dumps({"files": {k: str(v) for k, v in files.items()}, "median_ms": ms}, indent=1))


if __name__ == "__main__":
    main()
