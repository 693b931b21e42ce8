"""What ONNX Runtime's exact INT8 option (``session.x64quantprecision``) costs and changes on this CPU.

For each shipped file: the largest output difference with and without the option on real calibration
views, and the latency both ways (minimum over ``--rounds`` interleaved rounds of the median of
``--iters`` calls, 1 intra-op thread, batch 1 and 8). docs/benchmarks.md, "The exact INT8 kernel only
where it is needed", reports it.

    python scripts/int8_option_cost.py --calibration runs/engines/calib-soup.npz
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort

from calibration.viewset import ViewSet
from edge_agent.cpu import host_int8_kernel
from edge_agent.infer import BUILTIN_MODELS


def session(name: str, exact: bool) -> ort.InferenceSession:
    """The agent's options but for the exact-INT8 option, which is set or not as asked."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if exact:
        opts.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(BUILTIN_MODELS[name]), opts, providers=["CPUExecutionProvider"])


def median_ms(sess: ort.InferenceSession, feed: dict[str, np.ndarray], iters: int) -> float:
    for _ in range(10):  # warm-up: allocations, caches
        sess.run(None, feed)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


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
        a, b = (session(name, exact).run(None, dict(views.inputs)) for exact in (False, True))
        diff[name] = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    best: dict[str, float] = {}
    for _ in range(args.rounds):  # interleaved, so that a load spike hits every variant alike
        for name in names:
            for exact in (False, True):
                sess = session(name, exact)
                for batch in (1, 8):
                    feed = {k: np.ascontiguousarray(v[:batch]) for k, v in views.inputs.items()}
                    key = f"{name} {'exact' if exact else 'default'} batch {batch}"
                    best[key] = min(best.get(key, float("inf")), median_ms(sess, feed, args.iters))
    report = {
        "int8_kernels": host_int8_kernel(),
        "max_abs_output_difference": diff,
        "median_ms": {k: round(v, 3) for k, v in best.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
