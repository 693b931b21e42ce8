"""Camera degradations of the cut views: what a factory camera does to a face that a dataset photo does not.

One set of pure functions serves two uses:

- **Evaluation** (``affectline train evaluate --degrade KIND:SEVERITY``): every view of a held-out part is
  degraded the same way, so a report says how a model holds up on small, blurred, compressed, noisy or dark
  faces. The draws are seeded, so a report is reproducible.
- **Training** (``augment.degrade``): with that probability a sample's two views get one degradation of a
  random kind and severity (``random_degradation``), so the model sees such faces while it learns.

Every function takes and returns (S, S, 3) uint8 RGB views. A degradation acts on both views of a sample
alike, in view pixels. That is a simplification: the scene view covers 3.2 times the camera pixels of the
person view (scales 4.0 and 1.25), so a real camera gives it up to 3.2 times the detail and a third of the
blur. The figures measured this way are pessimistic for the scene view's share of the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.ranges import Range

# Kind → (lowest, highest) severity accepted, and what the severity means. ``downscale`` is in camera
# pixels, the same for every view size (a 32-px face crop holds 32 px whatever the model scales it to);
# ``blur`` is relative to the face, so it is given at a 128-px view and scales with the view.
RANGES: dict[str, Range] = {
    "downscale": Range(8, 512),  # px across the face crop before it is scaled up (at least the view: none)
    "blur": Range(0.1, 10.0),  # Gaussian sigma in px of a 128-px view (motion and focus blur alike)
    "jpeg": Range(1, 100),  # JPEG quality (an RTSP stream's H.264 blocks look alike)
    "noise": Range(0.5, 100.0),  # std of additive Gaussian noise in 8-bit levels (sensor noise, gain)
    "dark": Range(0.05, 1.0),  # gain on the pixel values (under-exposure; the rounding loses levels)
}
UNITS = {
    "downscale": "px across the face crop",
    "blur": "sigma px at a 128-px view",
    "jpeg": "quality",
    "noise": "std, 8-bit levels",
    "dark": "gain",
}
REFERENCE_SIDE = 128

# Severity ranges drawn in training (``random_degradation``): milder than the evaluation ranges' ends, so
# the model learns from faces that still show their expression.
TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "downscale": (20, 64),
    "blur": (0.5, 2.5),
    "jpeg": (15, 60),
    "noise": (2.0, 12.0),
    "dark": (0.25, 0.7),
}


@dataclass(frozen=True)
class Degradation:
    """One degradation kind at one severity (see ``RANGES`` for each kind's unit)."""

    kind: str
    severity: float

    def __post_init__(self) -> None:
        if self.kind not in RANGES:
            raise ValueError(f"degradation kind {self.kind!r} not one of {sorted(RANGES)}")
        allowed = RANGES[self.kind]
        if not allowed.allows(self.severity):
            raise ValueError(
                f"{self.kind} severity {self.severity:g} outside [{allowed.lo:g}, {allowed.hi:g}] "
                f"({UNITS[self.kind]})"
            )

    @property
    def spec(self) -> str:
        """``kind:severity``, as parsed by ``parse_degradation``."""
        return f"{self.kind}:{self.severity:g}"


def parse_degradation(spec: str) -> Degradation:
    """``KIND:SEVERITY`` → ``Degradation``.

    Raises:
        ValueError: not of that form, an unknown kind, or a severity outside the kind's range.
    """
    kind, sep, value = spec.partition(":")
    if not sep:
        raise ValueError(f"degradation {spec!r} is not KIND:SEVERITY (kinds: {', '.join(sorted(RANGES))})")
    try:
        severity = float(value)
    except ValueError:
        raise ValueError(f"degradation {spec!r}: severity {value!r} is not a number") from None
    return Degradation(kind, severity)


def downscale(view: np.ndarray, side: float) -> np.ndarray:
    """Shrink to ``side`` px (area average, as a far camera samples) and scale back (bilinear, as the agent).

    A view of ``side`` px or fewer is returned as it is: it holds no more detail than that already.
    """
    s, small_side = view.shape[0], int(round(side))
    if small_side >= s:
        return view
    small = cv2.resize(view, (small_side, small_side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR)


def blur(view: np.ndarray, sigma_at_reference: float) -> np.ndarray:
    """Gaussian blur of ``sigma_at_reference`` px at a 128-px view (scaled with the view)."""
    sigma = sigma_at_reference * view.shape[0] / REFERENCE_SIDE
    return cv2.GaussianBlur(view, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


def jpeg(view: np.ndarray, quality: float) -> np.ndarray:
    """Encode and decode as JPEG at ``quality``.

    OpenCV encodes BGR: the view is turned round first, so that luma (kept sharp) and the subsampled
    chroma are those of the real colours.
    """
    bgr = cv2.cvtColor(view, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(round(quality))])
    assert ok, "OpenCV failed to JPEG-encode a uint8 image"  # cannot fail for a valid uint8 array
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def noise(view: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise of ``std`` 8-bit levels, independent per pixel and channel."""
    return np.clip(view + rng.normal(0, std, view.shape), 0, 255).round().astype(np.uint8)


def dark(view: np.ndarray, gain: float) -> np.ndarray:
    """Scale pixel values by ``gain`` and round: an under-exposed frame keeps fewer grey levels."""
    return np.clip(view.astype(np.float32) * gain, 0, 255).round().astype(np.uint8)


def apply(view: np.ndarray, d: Degradation, rng: np.random.Generator) -> np.ndarray:
    """``d`` applied to one (S, S, 3) uint8 view; ``rng`` is drawn from only by ``noise``."""
    ops: dict[str, Callable[[], np.ndarray]] = {
        "downscale": lambda: downscale(view, d.severity),
        "blur": lambda: blur(view, d.severity),
        "jpeg": lambda: jpeg(view, d.severity),
        "noise": lambda: noise(view, d.severity, rng),
        "dark": lambda: dark(view, d.severity),
    }
    return ops[d.kind]()


def apply_batch(views: np.ndarray, d: Degradation, rng: np.random.Generator) -> np.ndarray:
    """``d`` applied to each of (N, S, S, 3) uint8 views, in order (so ``rng``'s draws follow the samples)."""
    return np.stack([apply(np.ascontiguousarray(v), d, rng) for v in views]) if len(views) else views


def random_degradation(rng: np.random.Generator) -> Degradation:
    """A kind drawn uniformly and a severity uniform in its ``TRAIN_RANGES`` (log-uniform for ``noise``)."""
    kind = sorted(TRAIN_RANGES)[int(rng.integers(len(TRAIN_RANGES)))]
    lo, hi = TRAIN_RANGES[kind]
    if kind == "noise":  # small stds are the common case; log-uniform spends draws there
        return Degradation(kind, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    return Degradation(kind, float(rng.uniform(lo, hi)))
