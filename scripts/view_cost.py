"""Time cutting both 96-px views of one person, bilinear against area averaging, on a real frame.

Usage: ``python scripts/view_cost.py CLIP`` (frame 30 of the clip; anchor boxes of 48-384 px
centred in it; best of 5 rounds of 50 calls of `edge_agent.views.cut_views`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import cv2
import numpy as np

from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE, cut_views


def ms_per_person(frame: np.ndarray, box: np.ndarray, mode: str) -> float:
    person = replace(DEFAULT_PERSON, size=96, resample=mode)
    scene = replace(DEFAULT_SCENE, size=96, resample=mode)
    cut_views(frame, box, person, scene)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(50):
            cut_views(frame, box, person, scene)
        best = min(best, (time.perf_counter() - t) / 50 * 1000)
    return best


def main(clip: str) -> int:
    cap = cv2.VideoCapture(clip)
    cap.set(cv2.CAP_PROP_POS_FRAMES, 30)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        print(f"{clip}: could not read frame 30", file=sys.stderr)
        return 2
    h, w = frame.shape[:2]
    print(f"{clip}: frame {w}x{h}")
    for side in (48, 96, 192, 384):
        box = np.array([[w / 2 - side / 2, h / 2 - side / 2, w / 2 + side / 2, h / 2 + side / 2]], np.float32)
        bil, area = (ms_per_person(frame, box, m) for m in ("bilinear", "area"))
        print(f"anchor {side:4d} px: bilinear {bil:.3f} ms, area {area:.3f} ms per person (both views)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
