"""Smoother: half-life in seconds at any frame timing, quality weighting, hysteresis, dwell, state."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from edge_agent.config import Smoothing
from edge_agent.smooth import Smoother, observation_quality
from edge_agent.structures import Detections
from tests.conftest import shared_path

A, B, C3 = np.eye(3)
VA_A, VA_B = np.array([-0.5, 0.2]), np.array([0.5, 0.8])


def tracked(
    ids: list[int], probs: np.ndarray | None = None, va: np.ndarray | None = None, quality: float = 1.0
) -> Detections:
    """Tracked people; with ``probs`` every row carries a fresh model result."""
    n = len(ids)
    xyxy = np.tile([10.0, 10.0, 50.0, 110.0], (n, 1))
    det = Detections(xyxy=xyxy, confidence=np.full(n, 0.9), tracker_id=np.array(ids, np.int64))
    if probs is not None:
        det.set("probs_raw", np.tile(probs, (n, 1)).astype(np.float32))
        det.set("va_raw", np.tile(VA_A if va is None else va, (n, 1)).astype(np.float32))
        det.set("quality", np.full(n, quality, np.float32))
        det.set("observed", np.ones(n, bool))
    return det


def unobserved(ids: list[int]) -> Detections:
    """Rows whose inference did not run this frame (cached result, observed False)."""
    det = tracked(ids, A)
    det.set("observed", np.zeros(len(ids), bool))
    return det


def frame_times(kind: str, seconds: float) -> np.ndarray:
    """Capture times of a stream: steady fps, random drops, or irregular intervals."""
    rng = np.random.default_rng(7)
    if kind.startswith("fps"):
        return np.arange(round(seconds * float(kind[3:]))) / float(kind[3:])
    if kind == "drops50":  # 30 fps with half of the frames dropped at random
        t = np.arange(round(seconds * 30)) / 30
        return t[np.r_[True, rng.random(len(t) - 1) > 0.5]]
    assert kind == "irregular"
    return np.cumsum(rng.uniform(0.02, 0.2, round(seconds / 0.11)))


# ----------------------------------------------------------------------------- quality
GRID = [np.nan, -5.0, 0.0, 4.0, 20.0, 40.0, 79.0, 80.0, 200.0, np.inf]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("others", [(80.0, 1.0, 1000.0), (30.0, 0.6, 60.0), (0.0, 0.0, 0.0)])
def test_observation_quality_is_bounded_and_monotonic(axis: int, others: tuple[float, float, float]) -> None:
    sweep = np.array(GRID) / (100.0 if axis == 1 else 1.0)  # scores live in [0, 1]
    args = [np.full(len(sweep), v) for v in others]
    args[axis] = sweep
    q = observation_quality(*args)
    assert q.dtype == np.float32 and q.shape == (len(sweep),)
    assert np.all((q >= 0) & (q <= 1))
    assert q[0] == 0  # NaN input: no face, no weight
    assert np.all(np.diff(q[1:]) >= 0)


@pytest.mark.parametrize(
    "face_px, score, sharpness, low, high",
    [
        (0.0, 1.0, 1e6, 0.0, 0.0),
        (80.0, 1.0, 1e6, 1.0, 1.0),
        (500.0, 1.0, 1e6, 1.0, 1.0),  # saturates at ~80 px
        (40.0, 1.0, 1e6, 0.5, 0.5),
        (80.0, 1.0, 30.0, 0.2, 0.3),  # blurred crop (Gaussian sigma 1.5 on a 64 px face)
        (80.0, 1.0, 400.0, 0.97, 1.0),  # typical sharp face crop
    ],
)
def test_observation_quality_values(
    face_px: float, score: float, sharpness: float, low: float, high: float
) -> None:
    q = float(observation_quality(np.array([face_px]), np.array([score]), np.array([sharpness]))[0])
    assert low - 1e-6 <= q <= high + 1e-6


def test_observation_quality_prefers_sharp_real_faces_over_blurred() -> None:
    files = sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[:60]
    sharp, blurred = [], []
    for f in files:
        grey = cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (64, 64))
        sharp.append(cv2.Laplacian(grey, cv2.CV_32F).var())
        blurred.append(cv2.Laplacian(cv2.GaussianBlur(grey, (0, 0), 2.0), cv2.CV_32F).var())
    ones = np.ones(len(files))
    q_sharp = observation_quality(80 * ones, ones, np.array(sharp))
    q_blur = observation_quality(80 * ones, ones, np.array(blurred))
    assert np.all(q_sharp > q_blur)
    assert np.median(q_sharp) > 0.9 and np.median(q_blur) < 0.3


# ----------------------------------------------------------------------------- edge cases
def test_no_rows_and_no_model_columns() -> None:
    smoother = Smoother(Smoothing(), 3)
    out = smoother.update(Detections.empty(), 0.0)
    assert len(out) == 0 and out.data["probs"].shape == (0, 3)
    out = smoother.update(tracked([4, 9]), 0.1)  # no inference ran: nothing observed
    np.testing.assert_allclose(out.data["probs"], 1 / 3)
    assert out.data["label"].tolist() == [-1, -1] and out.data["confidence"].tolist() == [0, 0]
    assert out.data["valence_arousal"].tolist() == [[0, 0], [0, 0]]
    assert out.data["seconds_observed"].tolist() == [0, 0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Detections(xyxy=np.array([[0.0, 0, 1, 1]]), confidence=np.ones(1)), "tracker ids"),
        (lambda: _with(tracked([1], A), probs_raw=np.ones((1, 4), np.float32) / 4), "probs_raw"),
        (lambda: _with(tracked([1], A), probs_raw=np.array([[0.5, 0.6, 0.2]], np.float32)), "distributions"),
        (lambda: _with(tracked([1], A), probs_raw=np.array([[np.nan, 0, 1]], np.float32)), "distributions"),
        (lambda: _with(tracked([1], A), quality=np.array([1.5], np.float32)), "quality"),
        (lambda: _with(tracked([1], A), va_raw=np.array([[np.inf, 0]], np.float32)), "va_raw"),
        (lambda: _without(tracked([1], A), "quality"), "quality"),
    ],
)
def test_bad_inputs_are_rejected(make: Callable[[], Detections], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Smoother(Smoothing(), 3).update(make(), 0.0)


def test_unobserved_rows_may_hold_anything() -> None:
    det = tracked([1], A)
    det.set("probs_raw", np.full((1, 3), np.nan, np.float32))
    det.set("observed", np.zeros(1, bool))
    assert Smoother(Smoothing(), 3).update(det, 0.0).data["label"].tolist() == [-1]


def _with(det: Detections, **columns: np.ndarray) -> Detections:
    for key, value in columns.items():
        det.set(key, value)
    return det


def _without(det: Detections, key: str) -> Detections:
    del det.data[key]
    return det


def test_time_must_not_go_back_and_classes_are_checked() -> None:
    smoother = Smoother(Smoothing(), 3)
    smoother.update(tracked([1], A), 2.0)
    with pytest.raises(ValueError, match="t_mono=1.0"):
        smoother.update(tracked([1], A), 1.0)
    with pytest.raises(ValueError, match="num_classes=1"):
        Smoother(Smoothing(), 1)


# ----------------------------------------------------------------------------- filter
@pytest.mark.parametrize("half_life", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("timing", ["fps10", "fps30", "drops50", "irregular", "every3"])
def test_step_response_is_half_way_after_one_half_life(timing: str, half_life: float) -> None:
    """The input holds A until its last sample at t0, then B: p_B(t) = 1 - 2^(-(t - t0)/h)."""
    smoother = Smoother(Smoothing(half_life_s=half_life, min_dwell_s=0.0), 3)
    times = frame_times("fps30" if timing == "every3" else timing, 12 * half_life)
    sampled = np.arange(len(times)) % 3 == 0 if timing == "every3" else np.ones(len(times), bool)
    step = 10 * half_life
    t0 = times[sampled & (times < step)][-1]
    crossed, last_obs = None, times[0]
    for t, obs in zip(times, sampled, strict=True):
        det = tracked([1], A if t < step else B, VA_A if t < step else VA_B) if obs else unobserved([1])
        out = smoother.update(det, float(t))
        last_obs = t if obs else last_obs
        if t > t0:
            expected = 1 - 2 ** (-(last_obs - t0) / half_life)
            assert out.data["probs"][0, 1] == pytest.approx(expected, abs=1e-3)
            np.testing.assert_allclose(
                out.data["valence_arousal"][0], VA_A + expected * (VA_B - VA_A), atol=1e-3
            )
            if crossed is None and out.data["probs"][0, 1] >= 0.5:
                crossed = t - t0
    max_gap = np.diff(times[sampled]).max()
    assert crossed is not None and half_life - 1e-6 <= crossed < half_life + max_gap


@pytest.mark.parametrize("fps", [10, 30])
def test_lower_quality_moves_the_estimate_less(fps: float) -> None:
    moved = []
    for quality in (1.0, 0.5, 0.2, 0.049):  # the last is under min_quality 0.05
        smoother = Smoother(Smoothing(half_life_s=1.0, min_quality=0.05), 3)
        for t in np.arange(10 * fps) / fps:
            smoother.update(tracked([1], A), float(t))
        for t in (10 * fps - 1 + np.arange(1, fps + 1)) / fps:  # one half-life after the last A
            out = smoother.update(tracked([1], B, quality=quality), float(t))
        moved.append(float(out.data["probs"][0, 1]))
    assert moved[0] > moved[1] > moved[2] > moved[3] == 0
    assert moved[0] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("fps", [10, 30])
@pytest.mark.parametrize("quality", [1.0, 0.5, 0.2])
def test_confidence_reflects_evidence(fps: float, quality: float) -> None:
    smoother = Smoother(Smoothing(half_life_s=1.0), 3)
    confidence = []
    for t in np.arange(8 * fps) / fps:
        confidence.append(
            float(smoother.update(tracked([1], A, quality=quality), float(t)).data["confidence"][0])
        )
    assert confidence[0] == 0  # the first frame of a camera credits no observed time
    assert np.all(np.diff(confidence) >= 0)  # grows with accumulated evidence
    assert confidence[round(fps)] < 0.6 * quality  # about half after one half-life
    assert confidence[-1] == pytest.approx(quality, abs=0.02)  # steady state: the mean quality


def test_unobserved_rows_keep_their_estimate_while_confidence_decays() -> None:
    smoother = Smoother(Smoothing(half_life_s=1.0, min_dwell_s=0.0), 3)
    for t in np.arange(100) / 10:
        before = smoother.update(tracked([1], A, VA_B), float(t))
    after = [smoother.update(unobserved([1]), 9.9 + k / 10) for k in range(1, 11)]
    np.testing.assert_array_equal(after[-1].data["probs"], before.data["probs"])
    np.testing.assert_array_equal(after[-1].data["valence_arousal"], before.data["valence_arousal"])
    assert after[-1].data["label"].tolist() == [0]
    assert after[-1].data["seconds_observed"] == pytest.approx(before.data["seconds_observed"])
    ratio = after[-1].data["confidence"][0] / before.data["confidence"][0]
    assert ratio == pytest.approx(0.5, abs=1e-3)  # one half-life unobserved


@pytest.mark.parametrize("timing", ["fps10", "fps30", "drops50"])
def test_seconds_observed_is_time_not_frames(timing: str) -> None:
    smoother = Smoother(Smoothing(half_life_s=1.0), 3)
    times = frame_times(timing, 4.0)
    late = int(np.searchsorted(times, 1.0))  # track 2 appears at about 1 s
    for k, t in enumerate(times):
        out = smoother.update(tracked([1] if k < late else [1, 2], A), float(t))
        if k == late:
            assert out.data["seconds_observed"][1] == pytest.approx(t - times[k - 1])
    assert out.data["seconds_observed"].tolist() == pytest.approx([times[-1], times[-1] - times[late - 1]])


def test_ended_tracks_are_forgotten() -> None:
    smoother = Smoother(Smoothing(half_life_s=0.5, min_dwell_s=0.2), 3)
    for t in np.arange(30) / 10:
        smoother.update(tracked([1, 2], B), float(t))
    out = smoother.update(unobserved([1, 2]), 3.0, ended=(1, 7))
    assert out.data["label"].tolist() == [-1, 1]
    assert out.data["confidence"][0] == 0 and out.data["seconds_observed"][0] == 0
    np.testing.assert_allclose(out.data["probs"][0], 1 / 3)
    np.testing.assert_allclose(out.data["probs"][1], B)


def test_output_columns_and_dtypes() -> None:
    smoother = Smoother(Smoothing(), 3)
    out = smoother.update(tracked([3, 5], A), 0.0)
    out = smoother.update(tracked([3, 5], A), 0.1)
    dtypes = {"probs": np.float32, "valence_arousal": np.float32, "label": np.int64}
    dtypes |= {"confidence": np.float32, "seconds_observed": np.float32}
    for key, dtype in dtypes.items():
        assert out.data[key].dtype == dtype and len(out.data[key]) == 2
    assert "probs_raw" in out.data and out.tracker_id is not None and out.tracker_id.tolist() == [3, 5]
    np.testing.assert_allclose(out.data["probs"].sum(axis=1), 1, atol=1e-6)


# ----------------------------------------------------------------------------- label
def run_labels(
    fps: float, segments: list[tuple[np.ndarray, float]], cfg: Smoothing
) -> tuple[np.ndarray, ...]:
    """Feed segments of (distribution, seconds); return times, reported labels and smoothed probs."""
    smoother = Smoother(cfg, 3)
    times, labels, probs, t = [], [], [], 0.0
    for dist, seconds in segments:
        for _ in range(round(seconds * fps)):
            out = smoother.update(tracked([1], dist), t)
            times.append(t)
            labels.append(int(out.data["label"][0]))
            probs.append(out.data["probs"][0])
            t += 1 / fps
    return np.array(times), np.array(labels), np.array(probs)


@pytest.mark.parametrize("fps", [10, 30])
@pytest.mark.parametrize("min_dwell_s", [0.0, 1.0])
def test_first_label_waits_for_min_dwell(fps: float, min_dwell_s: float) -> None:
    times, labels, _ = run_labels(fps, [(A, 3.0)], Smoothing(half_life_s=0.1, min_dwell_s=min_dwell_s))
    assert labels[0] == -1  # first frame of the camera: no evidence yet
    first = times[np.argmax(labels == 0)]
    assert set(labels[times < first]) == {-1} and set(labels[times >= first]) == {0}
    assert first == pytest.approx(1 / fps + min_dwell_s, abs=1e-6)


@pytest.mark.parametrize("fps", [10, 30])
@pytest.mark.parametrize("blip_s, changes", [(0.3, False), (0.9, False), (1.6, True), (3.0, True)])
def test_blip_shorter_than_dwell_does_not_change_label(fps: float, blip_s: float, changes: bool) -> None:
    cfg = Smoothing(half_life_s=0.1, min_dwell_s=1.0, hysteresis=0.1)
    times, labels, probs = run_labels(fps, [(A, 3.0), (B, blip_s), (A, 2.0)], cfg)
    after_first = labels[times >= 1.5]
    assert set(after_first) == ({0, 1} if changes else {0})
    if changes:
        lead = times[np.argmax((times >= 3.0) & (probs[:, 1] - probs[:, 0] >= 0.1))]
        switch = times[np.argmax(labels == 1)]
        assert switch == pytest.approx(lead + 1.0, abs=0.5 / fps)  # exactly min_dwell_s after it led
        # Half-life 0.1 s: B leads A by 0.1 once p_B >= 0.55, ~0.115 s after the step.
        assert lead - 3.0 == pytest.approx(0.1 * np.log2(1 / 0.45), abs=1 / fps + 1e-6)


@pytest.mark.parametrize(
    "margin, changes",
    [(0.0, False), (0.05, False), (0.099, False), (0.101, True), (0.3, True)],  # hysteresis 0.1
)
def test_hysteresis_margin(margin: float, changes: bool) -> None:
    close = np.array([0.45 - margin / 2, 0.45 + margin / 2, 0.1])
    cfg = Smoothing(half_life_s=0.2, min_dwell_s=0.5, hysteresis=0.1)
    _, labels, _ = run_labels(30, [(A, 2.0), (close, 5.0)], cfg)
    assert labels[-1] == (1 if changes else 0)
