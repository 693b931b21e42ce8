"""The smoothing stage: per-track temporal filter of the emotion distribution and valence/arousal.

The filter is an exponential moving average whose forgetting is set in seconds (``half_life_s``),
so it behaves the same at any fps, with dropped frames and with sparse re-inference. It keeps, per
track, decaying sums ``m = sum_i w_i 2^(-(t - t_i)/h) x_i`` and ``e = sum_i w_i 2^(-(t - t_i)/h)``
and reports ``m / e``, with the weight of an observation

    w_i = 1 - 2^(-q_i * dt_i / h),   dt_i = min(t_i - t_(i-1), h)

where ``t_(i-1)`` is the track's previous observation (or the previous frame, for its first one;
on a camera's very first frame nothing is credited) and ``q_i`` its quality. ``m / e`` is the
decay-weighted mean of the observations; once the memory is full (``e`` ~ 1) and with ``q = 1``
it is exactly ``x <- x + a (x_i - x)``, ``a = 1 - 2^(-dt/h)``, so after a step the output is
half-way after one half-life whatever the frame times were. Lower quality counts as less
observed time and moves the estimate less; an observation is credited with at most one
half-life, so one frame after a long absence is not taken as seconds of evidence. ``e`` in
[0, 1] is the evidence: the share of the filter's memory filled by observations, weighted by
their quality; it keeps decaying while the person is not observed.

Reported per person: ``probs`` (N, C), ``valence_arousal`` (N, 2) in [-1, 1], ``confidence`` =
``max(probs) * e`` (``e`` decayed to now), ``seconds_observed`` (credited observation time) and
``label``, which changes only with hysteresis: the first label is reported once one class leads
all others by ``hysteresis`` for ``min_dwell_s``, and a new label once it leads the current one
by ``hysteresis`` for ``min_dwell_s``. Tracks never observed report a uniform distribution, zero
valence/arousal, label -1 and confidence 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.config import Smoothing
from edge_agent.structures import Detections

# Observation quality: faces reach full weight at this size (longer side, frame pixels); the
# sharpness term saturates on the scale of the Laplacian variance of an 8-bit grey person view cut
# at SHARPNESS_SIDE px: sharp FER+ faces give ~200-900, Gaussian-blurred (sigma 1.5) ~20-60. The side
# is fixed, not the model's input size: upscaling a crop by 1.5x divides the variance by ~4.5.
SHARPNESS_SIDE = 64
_FULL_FACE_PX = 80.0
_SHARPNESS_SCALE = 100.0
_CLOCK_EPS = 1e-6  # s: timestamps that are sums of frame intervals carry rounding error


def observation_quality(face_px: np.ndarray, detector_score: np.ndarray, sharpness: np.ndarray) -> np.ndarray:
    """How much one model result should count, in [0, 1] (product of three terms).

    Size ``min(face_px / 80, 1)``: small faces carry little expression detail. Score
    ``clip(detector_score, 0, 1)``: doubtful detections are often not faces. Blur
    ``1 - exp(-sharpness / 100)``: motion or focus blur erases expressions. Each term is
    non-decreasing in its input; a NaN input (e.g. no face) gives 0.

    Args:
        face_px: (N,) longer side of the face box in frame pixels.
        detector_score: (N,) face (or person) detector score in [0, 1].
        sharpness: (N,) variance of the Laplacian of the 8-bit grey person view cut at
            ``SHARPNESS_SIDE`` px (``edge_agent.infer.Preprocessor.sharpness``).

    Returns:
        (N,) float32 quality.
    """
    size = np.clip(np.asarray(face_px, np.float64) / _FULL_FACE_PX, 0, 1)
    score = np.clip(np.asarray(detector_score, np.float64), 0, 1)
    blur = 1 - np.exp(-np.clip(np.asarray(sharpness, np.float64), 0, None) / _SHARPNESS_SCALE)
    quality = size * score * blur
    return np.nan_to_num(quality, nan=0.0).astype(np.float32)


@dataclass
class _State:
    """Filter state of one track; sums are decayed to ``t_obs``."""

    m: np.ndarray  # (C,) decayed weighted sum of distributions
    mva: np.ndarray  # (2,) same for valence/arousal
    t_obs: float  # last observation (or, before the first, the frame before the track appeared)
    e: float = 0.0  # decayed sum of weights
    seconds: float = 0.0
    label: int = -1
    candidate: int = -1
    since: float = 0.0

    def observe(self, x: np.ndarray, va: np.ndarray, quality: float, t: float, half_life: float) -> None:
        elapsed = t - self.t_obs
        decay = 2.0 ** (-elapsed / half_life)
        credited = min(elapsed, half_life)
        w = 1.0 - 2.0 ** (-quality * credited / half_life)
        self.m = decay * self.m + w * x
        self.mva = decay * self.mva + w * va
        self.e = decay * self.e + w
        self.seconds += credited
        self.t_obs = t


class Smoother:
    """Smooths the model results of one camera's tracks over time (one instance per camera).

    Args:
        cfg: Half-life, hysteresis, dwell and quality floor.
        num_classes: C, the length of the model's distribution.
    """

    def __init__(self, cfg: Smoothing, num_classes: int):
        if num_classes < 2:
            raise ValueError(f"Smoother: num_classes={num_classes} must be >= 2")
        self.cfg = cfg
        self.num_classes = num_classes
        self._states: dict[int, _State] = {}
        self._t: float | None = None

    def update(self, detections: Detections, t_mono: float, ended: Sequence[int] = ()) -> Detections:
        """Fold this frame's fresh model results into each track's filter and report the estimates.

        Args:
            detections: Tracked people (``tracker_id`` >= 0). Rows with ``data['observed']`` True
                carry a fresh result in ``probs_raw`` (N, C), ``va_raw`` (N, 2) and ``quality``
                (N,); other rows keep their state. Without an ``observed`` column no row is
                observed.
            t_mono: Capture time in seconds, non-decreasing across calls.
            ended: Track ids that ended; their state is dropped.

        Returns:
            The same rows and columns plus ``probs`` (N, C) float32, ``valence_arousal`` (N, 2)
            float32, ``label`` (N,) int64, ``confidence`` (N,) float32 and ``seconds_observed``
            (N,) float32.
        """
        if not math.isfinite(t_mono) or (self._t is not None and t_mono < self._t):
            raise ValueError(f"Smoother.update: t_mono={t_mono} must be finite and >= the previous {self._t}")
        for tid in ended:
            self._states.pop(int(tid), None)
        assert detections.tracker_id is not None
        ids = detections.tracker_id
        if np.any(ids < 0):
            raise ValueError(f"Smoother.update: detections need tracker ids >= 0, got {ids.tolist()}")
        observed, probs_raw, va_raw, quality = self._inputs(detections)
        n, c = len(detections), self.num_classes
        out = _Outputs.uniform(n, c)
        start = t_mono if self._t is None else self._t
        for i, tid in enumerate(ids):
            state = self._states.setdefault(int(tid), _State(np.zeros(c), np.zeros(2), start))
            if observed[i]:
                state.observe(probs_raw[i], va_raw[i], float(quality[i]), t_mono, self.cfg.half_life_s)
            if state.e > 0:
                self._report(state, t_mono, out, i)
        self._t = t_mono
        return Detections(
            xyxy=detections.xyxy,
            confidence=detections.confidence,
            face_xyxy=detections.face_xyxy,
            tracker_id=ids,
            data={**detections.data, **out.columns()},
        )

    def close(self) -> None:
        """Forget all tracks."""
        self._states.clear()
        self._t = None

    def _inputs(self, det: Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validated (observed, probs_raw, va_raw, quality); observed excludes low quality rows."""
        n, c = len(det), self.num_classes
        if "observed" not in det.data:
            return np.zeros(n, bool), np.zeros((n, c)), np.zeros((n, 2)), np.zeros(n)
        expected = {"probs_raw": (n, c), "va_raw": (n, 2), "quality": (n,)}
        for key, shape in expected.items():
            got = det.data[key].shape if key in det.data else None
            if got != shape:
                raise ValueError(f"Smoother.update: data[{key!r}] must have shape {shape}, got {got}")
        observed = det.data["observed"].astype(bool)
        probs = det.data["probs_raw"].astype(np.float64)
        va = det.data["va_raw"].astype(np.float64)
        quality = det.data["quality"].astype(np.float64)
        rows = np.flatnonzero(observed)
        sums = probs[rows].sum(axis=1)
        distributions = np.all(np.isfinite(probs[rows])) and np.all(probs[rows] >= 0)
        if not (distributions and np.all(abs(sums - 1) < 1e-2)):
            raise ValueError(f"Smoother.update: observed probs_raw rows must be distributions, sums {sums}")
        if not (np.all(np.isfinite(va[rows])) and np.all((quality[rows] >= 0) & (quality[rows] <= 1))):
            raise ValueError(
                f"Smoother.update: observed va_raw must be finite and quality in [0, 1], got {quality[rows]}"
            )
        probs[rows] /= sums[:, None]
        return observed & (quality >= self.cfg.min_quality), probs, va, quality

    def _report(self, state: _State, t: float, out: _Outputs, i: int) -> None:
        probs = state.m / state.e
        self._relabel(state, probs, t)
        out.probs[i] = probs
        out.va[i] = np.clip(state.mva / state.e, -1, 1)
        out.label[i] = state.label
        out.confidence[i] = probs.max() * state.e * 2.0 ** (-(t - state.t_obs) / self.cfg.half_life_s)
        out.seconds[i] = state.seconds

    def _relabel(self, state: _State, probs: np.ndarray, t: float) -> None:
        """Move the reported label to the leading class once it has led long and clearly enough."""
        best = int(np.argmax(probs))
        if state.label < 0:
            rival = float(np.partition(probs, -2)[-2])
        else:
            rival = float(probs[state.label]) if best != state.label else math.inf
        if probs[best] - rival < self.cfg.hysteresis:
            state.candidate = -1
            return
        if best != state.candidate:
            state.candidate, state.since = best, t
        if t - state.since >= self.cfg.min_dwell_s - _CLOCK_EPS:
            state.label, state.candidate = best, -1


@dataclass
class _Outputs:
    """Output columns being filled row by row."""

    probs: np.ndarray
    va: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    seconds: np.ndarray

    @classmethod
    def uniform(cls, n: int, c: int) -> _Outputs:
        """Values of never-observed tracks: uniform distribution, no label, zero confidence."""
        return cls(
            np.full((n, c), 1.0 / c, np.float32),
            np.zeros((n, 2), np.float32),
            np.full(n, -1, np.int64),
            np.zeros(n, np.float32),
            np.zeros(n, np.float32),
        )

    def columns(self) -> dict[str, np.ndarray]:
        return {
            "probs": self.probs,
            "valence_arousal": self.va,
            "label": self.label,
            "confidence": self.confidence,
            "seconds_observed": self.seconds,
        }
