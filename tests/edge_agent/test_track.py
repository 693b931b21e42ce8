"""Tracker on synthetic trajectories: ids, occlusion, crossing, life cycle in seconds, outputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_agent.config import Tracking
from edge_agent.structures import Detections
from edge_agent.track import Tracker, box_iou, linear_assignment

W, H = 60.0, 160.0  # person box size, px


def box(cx: float, cy: float, w: float = W, h: float = H) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def dets(boxes: list[list[float]], scores: list[float] | None = None, **data: np.ndarray) -> Detections:
    """Detections with a face box in the top part of each person box."""
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    faces = np.stack([xyxy[:, 0] + 15, xyxy[:, 1] + 5, xyxy[:, 2] - 15, xyxy[:, 1] + 35], axis=1)
    score = np.full(len(xyxy), 0.9) if scores is None else np.array(scores)
    return Detections(xyxy=xyxy, confidence=score, face_xyxy=faces, data=dict(data))


def ids_of(out: Detections) -> list[int]:
    assert out.tracker_id is not None
    return out.tracker_id.tolist()


def walk(
    fps: float, seconds: float, x0: float, vx: float, y: float = 300.0, noise: float = 2.0, seed: int = 0
):
    """Times and noisy boxes of a person walking at vx px/s."""
    rng = np.random.default_rng(seed)
    times = np.arange(round(seconds * fps)) / fps
    boxes = [(np.array(box(x0 + vx * t, y)) + rng.normal(0, noise, 4)).tolist() for t in times]
    return times, boxes


# ----------------------------------------------------------------------------- assignment
def brute_force(cost: np.ndarray) -> float:
    r, k = cost.shape
    if r <= k:
        return min(sum(cost[i, p[i]] for i in range(r)) for p in itertools.permutations(range(k), r))
    return brute_force(cost.T)


@pytest.mark.parametrize(
    "shape, seed",
    [((0, 0), 0), ((0, 3), 0), ((3, 0), 0), ((1, 1), 0), ((1, 4), 1), ((4, 1), 2)]
    + [((r, k), s) for r, k in [(2, 2), (3, 3), (3, 5), (5, 3), (6, 6)] for s in range(4)],
)
def test_linear_assignment_is_optimal(shape: tuple[int, int], seed: int) -> None:
    cost = np.random.default_rng(seed).random(shape)
    rows, cols = linear_assignment(cost)
    assert len(rows) == min(shape) and len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
    if min(shape):
        assert cost[rows, cols].sum() == pytest.approx(brute_force(cost))


def test_linear_assignment_beats_greedy() -> None:
    # Greedy takes the cheapest pair (0, 0) first and is forced into (1, 1): total 1.0 vs 0.35.
    rows, cols = linear_assignment(np.array([[0.1, 0.2], [0.15, 0.9]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


@pytest.mark.parametrize("cost", [np.ones(3), np.array([[0.0, np.nan]]), np.array([[np.inf, 1.0]])])
def test_linear_assignment_rejects_bad_cost(cost: np.ndarray) -> None:
    with pytest.raises(ValueError, match="cost"):
        linear_assignment(cost)


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float64)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float64)
    np.testing.assert_allclose(box_iou(a, b), [[1, 1 / 3, 0], [1, 1 / 3, 0]])


# ----------------------------------------------------------------------------- edge cases
def test_empty_input_gives_empty_output() -> None:
    tracker = Tracker(Tracking())
    for t in np.arange(50) / 10:
        out = tracker.update(Detections.empty(), float(t))
        assert len(out) == 0 and tracker.ended == ()
        assert set(out.data) == {"matched", "age_s"}
    assert len(tracker.update(None, 5.0)) == 0


def test_time_must_not_go_back() -> None:
    tracker = Tracker(Tracking())
    tracker.update(Detections.empty(), 1.0)
    tracker.update(Detections.empty(), 1.0)  # same timestamp is fine
    with pytest.raises(ValueError, match="t_mono=0.5"):
        tracker.update(Detections.empty(), 0.5)
    with pytest.raises(ValueError, match="t_mono=nan"):
        tracker.update(None, float("nan"))


@pytest.mark.parametrize(
    "boxes",
    [
        [box(0, 0, 1e5, 1e5)],  # huge box around the origin
        [box(5e4, 5e4, 2e4, 9e4), box(5e4, 5e4, 2e4, 9e4)],  # two identical huge boxes
        [box(-300, -200, 2, 2)],  # tiny box outside the image
        [box(10, 10, 0.5, 0.5)],  # sub-pixel box
    ],
)
def test_extreme_boxes_give_finite_valid_outputs(boxes: list[list[float]]) -> None:
    tracker = Tracker(Tracking(birth_s=0.0, death_s=1.0))
    for k in range(40):
        frame = dets(boxes) if k < 20 else None if k % 2 else Detections.empty()
        out = tracker.update(frame, k / 10)
        assert np.all(np.isfinite(out.xyxy)) and np.all(np.isfinite(out.data["age_s"]))
        assert np.all(out.xyxy[:, 2] > out.xyxy[:, 0]) and np.all(out.xyxy[:, 3] > out.xyxy[:, 1])
        if k < 20:
            assert len(out) == len(boxes)


def test_zero_detections_for_many_frames_ends_once_and_stays_empty() -> None:
    tracker = Tracker(Tracking(birth_s=0.0, death_s=1.5))
    tracker.update(dets([box(300, 300)]), 0.0)
    ended: list[int] = []
    for k in range(1, 300):
        out = tracker.update(Detections.empty(), k / 30)
        ended += tracker.ended
        assert len(out) == (1 if k / 30 < 1.5 - 1e-6 else 0)
    assert ended == [1]


# ----------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("fps", [5, 10, 30])
def test_steady_walker_keeps_one_id_and_is_filtered(fps: float) -> None:
    tracker = Tracker(Tracking(birth_s=0.2))
    times, boxes = walk(fps, 4.0, 100, 150)
    seen = set()
    for t, b in zip(times, boxes, strict=True):
        out = tracker.update(dets([b]), float(t))
        seen.update(ids_of(out))
        if t >= 0.2:
            assert ids_of(out) == [1] and out.data["matched"].tolist() == [True]
    assert seen == {1}
    truth = np.array(box(100 + 150 * times[-1], 300))
    assert np.abs(out.xyxy[0] - truth).max() < 6  # filtered box follows the truth within noise


@pytest.mark.parametrize(
    "gap_s, survives",
    [(0.0, True), (0.5, True), (1.4, True), (1.6, False), (3.0, False)],
)
def test_occlusion_keeps_id_shorter_than_death(gap_s: float, survives: bool) -> None:
    fps = 10
    tracker = Tracker(Tracking(birth_s=0.2, death_s=1.5))
    times, boxes = walk(fps, 5.0, 100, 80)
    hidden = (times >= 1.0) & (times < 1.0 + gap_s - 1e-9)
    ended: list[int] = []
    ids_after: set[int] = set()
    for t, b, h in zip(times, boxes, hidden, strict=True):
        out = tracker.update(Detections.empty() if h else dets([b]), float(t))
        ended += tracker.ended
        if h and 1 in ids_of(out):
            row = ids_of(out).index(1)
            assert not out.data["matched"][row]
            # The predicted box keeps walking with the person.
            assert abs((out.xyxy[row, 0] + out.xyxy[row, 2]) / 2 - (100 + 80 * t)) < 20
        if t >= 1.0 + gap_s + 0.3:
            ids_after.update(ids_of(out))
    assert ended == ([] if survives else [1])
    assert ids_after == ({1} if survives else {2})


@pytest.mark.parametrize("fps", [10, 30])
@pytest.mark.parametrize("dy", [0.0, 30.0])
@pytest.mark.parametrize("occlude", [False, True])
def test_crossing_paths_keep_their_ids(fps: float, dy: float, occlude: bool) -> None:
    """Two people walk towards each other and cross; with occlude the one behind is not detected."""
    tracker = Tracker(Tracking(birth_s=0.2, death_s=1.5))
    times, left = walk(fps, 4.0, 100, 200, seed=1)
    _, right = walk(fps, 4.0, 700, -200, y=300 + dy, seed=2)
    owner: dict[str, int] = {}
    for t, a, b in zip(times, left, right, strict=True):
        behind = occlude and box_iou(np.array([a]), np.array([b]))[0, 0] > 0.3
        out = tracker.update(dets([a] if behind else [a, b]), float(t))
        if t < 0.2 or abs((100 + 200 * t) - (700 - 200 * t)) < W:
            continue  # before birth, or so close that "nearest box" would not tell them apart
        cx = (out.xyxy[:, 0] + out.xyxy[:, 2]) / 2
        for name, x in [("left", 100 + 200 * t), ("right", 700 - 200 * t)]:
            tid = ids_of(out)[int(np.argmin(abs(cx - x)))]
            assert owner.setdefault(name, tid) == tid, f"{name} switched id at t={t:.2f}"
    assert owner["left"] != owner["right"]


@pytest.mark.parametrize("birth_s", [0.0, 0.3, 0.5, 1.0])
def test_birth_time_is_in_seconds_not_frames(birth_s: float) -> None:
    confirmed_at = []
    for fps in (10, 30):
        tracker = Tracker(Tracking(birth_s=birth_s))
        times, boxes = walk(fps, 2.0, 200, 50)
        first = next(t for t, b in zip(times, boxes, strict=True) if len(tracker.update(dets([b]), float(t))))
        confirmed_at.append(first)
    assert confirmed_at == pytest.approx([birth_s, birth_s], abs=1e-9)


def test_tentative_track_that_misses_is_dropped_without_an_id() -> None:
    tracker = Tracker(Tracking(birth_s=0.5))
    tracker.update(dets([box(300, 300)]), 0.0)
    tracker.update(dets([box(302, 300)]), 0.1)
    tracker.update(Detections.empty(), 0.2)  # a flicker: gone before birth
    outs = [tracker.update(dets([box(300, 300)]), 0.3 + k / 10) for k in range(6)]  # born again at 0.3
    assert [ids_of(o) for o in outs] == [[], [], [], [], [], [1]]
    assert tracker.ended == ()


@pytest.mark.parametrize(
    "score, matched",
    [(0.1, False), (0.2, True), (0.3, True), (0.59, True)],  # low_threshold 0.2, high 0.6
)
def test_low_confidence_stage_rescues_a_track(score: float, matched: bool) -> None:
    tracker = Tracker(Tracking(high_threshold=0.6, low_threshold=0.2, birth_s=0.2, death_s=0.5))
    times, boxes = walk(10, 3.0, 100, 100)
    ended: list[int] = []
    for t, b in zip(times, boxes, strict=True):
        out = tracker.update(dets([b], [0.9 if t < 1.0 else score]), float(t))
        ended += tracker.ended
        if 1.0 <= t < 1.35:  # last high hit at 0.9, death at 1.4
            assert out.data["matched"].tolist() == [matched]
    assert ended == ([] if matched else [1])
    assert ids_of(out) == ([1] if matched else [])  # a low score never starts a track


def test_low_confidence_detections_alone_start_nothing() -> None:
    tracker = Tracker(Tracking(birth_s=0.0))
    for k in range(20):
        assert len(tracker.update(dets([box(300, 300)], [0.4]), k / 10)) == 0


@pytest.mark.parametrize("k", [1, 3, 10])
def test_none_frames_predict_without_killing(k: int) -> None:
    """Detection every k-th frame at 30 fps, death_s shorter than the gaps: the walker lives on."""
    tracker = Tracker(Tracking(birth_s=0.0, death_s=0.2))
    times, boxes = walk(30, 3.0, 100, 120)
    for i, (t, b) in enumerate(zip(times, boxes, strict=True)):
        out = tracker.update(dets([b]) if i % k == 0 else None, float(t))
        assert ids_of(out) == [1] and tracker.ended == ()
        assert out.data["matched"][0] == (i % k == 0)
        if i >= k:  # once two detections have shown the velocity
            assert abs((out.xyxy[0, 0] + out.xyxy[0, 2]) / 2 - (100 + 120 * t)) < 10


def test_none_frames_keep_tentative_tracks_and_do_not_confirm_them() -> None:
    tracker = Tracker(Tracking(birth_s=0.3))
    tracker.update(dets([box(300, 300)]), 0.0)
    assert len(tracker.update(None, 1.0)) == 0  # predicted only: neither a hit nor a miss
    assert ids_of(tracker.update(dets([box(300, 300)]), 1.1)) == [1]


def faces(det: Detections) -> np.ndarray:
    assert det.face_xyxy is not None
    return det.face_xyxy


def test_face_box_moves_with_prediction_and_is_nan_without_face() -> None:
    tracker = Tracker(Tracking(birth_s=0.0, death_s=2.0))
    times, boxes = walk(10, 2.0, 100, 100, noise=0.0)
    for t, b in zip(times[:10], boxes[:10], strict=True):
        out = tracker.update(dets([b]), float(t))
    np.testing.assert_allclose(faces(out)[0], faces(dets([boxes[9]]))[0])  # matched: the detected face
    out = tracker.update(Detections.empty(), float(times[12]))
    np.testing.assert_allclose(faces(out)[0], faces(dets([boxes[12]]))[0], atol=2)  # moved with the person
    no_face = dets([boxes[13]])
    faces(no_face)[:] = np.nan
    tracker.update(no_face, float(times[13]))
    out = tracker.update(Detections.empty(), float(times[14]))
    assert np.all(np.isnan(faces(out)))


def test_data_columns_are_carried_for_matched_rows_only() -> None:
    tracker = Tracker(Tracking(birth_s=0.0, death_s=2.0))
    tracker.update(dets([box(100, 300), box(400, 300)], face_score=np.array([0.7, 0.8], np.float32)), 0.0)
    out = tracker.update(
        dets([box(402, 300)], face_score=np.array([0.9], np.float32), flag=np.array([3])), 0.1
    )
    assert ids_of(out) == [1, 2]
    assert out.data["matched"].tolist() == [False, True]
    np.testing.assert_array_equal(out.data["face_score"], np.array([np.nan, 0.9], np.float32))
    assert out.data["flag"].tolist() == [0, 3]
    np.testing.assert_allclose(out.data["age_s"], [0.1, 0.1])
    assert out.confidence.tolist() == pytest.approx([0.9, 0.9])  # unmatched: last matched score


def test_ids_are_small_consecutive_counters_per_tracker() -> None:
    trackers = [Tracker(Tracking(birth_s=0.0)) for _ in range(2)]
    for tracker in trackers:
        out = tracker.update(dets([box(100 + 200 * i, 300) for i in range(3)]), 0.0)
        assert ids_of(out) == [1, 2, 3]
    trackers[0].close()
    assert ids_of(trackers[0].update(dets([box(100, 300)]), 0.0)) == [1]
