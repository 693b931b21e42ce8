"""The tracking stage: gives each person a stable id across frames (ByteTrack-style, in seconds).

Each track runs a constant-velocity Kalman filter on its box centre and size, state
``[cx, cy, w, h, vcx, vcy, vw, vh]``, whose transition uses the real time between updates (fps
varies and frames drop). Association has two stages, as in ByteTrack (arXiv 2110.06864): detections
scoring at least ``high_threshold`` are matched to all tracks by IoU with an optimal assignment,
then detections between ``low_threshold`` and ``high_threshold`` are matched to the tracks left
over, which keeps a person whose score dropped (partly occluded, blurred) on their id. Low-score
detections never start tracks.

Life cycle, all in seconds: an unmatched high detection starts a tentative track; it is confirmed
(and only then numbered 1, 2, 3, ... per tracker: a counter, never an identity) once it has been
matched continuously for ``birth_s``; a tentative track that misses a detection is dropped. A
confirmed track survives ``death_s`` without a match, predicted by its motion model, then ends.
A frame where detection did not run (``update(None, t)``) only predicts: it is not a miss.

A compact tracker rather than supervision's ByteTrack or norfair: those count birth and death in
frames, which breaks with variable fps, dropped frames and detection every k-th frame, and they
pull in dependencies far larger than these ~250 lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_agent.config import Tracking
from edge_agent.structures import Detections

# Noise of the motion model, relative to the box scale sqrt(w * h) so one setting fits near and
# far people: measurement error of a detector box, white-noise acceleration of a walking person
# (scales per s^2) and the prior on an unseen track's velocity (scales per s).
_MEASURE_STD = 0.05
_ACCEL_STD = 2.0
_VELOCITY_STD0 = 1.0
_MIN_SIDE = 1.0  # px: a predicted box never collapses (w, h > 0 keeps outputs valid)
_CLOCK_EPS = 1e-6  # s: timestamps that are sums of frame intervals carry rounding error


def linear_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of rows to columns (Hungarian method with potentials).

    Shortest augmenting paths, one row at a time, O(n^2 m); exact, for the tens of boxes per
    frame a camera sees. Every row (or every column, if there are fewer) is assigned.

    Args:
        cost: (R, K) finite costs.

    Returns:
        (rows, cols): two (min(R, K),) int64 arrays of assigned pairs, sorted by row.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or not np.all(np.isfinite(cost)):
        raise ValueError(f"linear_assignment: cost must be a finite 2-D array, got shape {cost.shape}")
    if cost.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    transposed = cost.shape[0] > cost.shape[1]
    c = cost.T if transposed else cost
    n, m = c.shape
    u = np.zeros(n + 1)  # row potentials (1-based; index 0 is the virtual start)
    v = np.zeros(m + 1)  # column potentials
    owner = np.zeros(m + 1, np.int64)  # owner[j] = row assigned to column j, 0 = free
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        way = np.zeros(m + 1, np.int64)
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while owner[j0] != 0:
            used[j0] = True
            i0 = owner[j0]
            free = ~used
            reduced = np.full(m + 1, np.inf)
            reduced[1:] = c[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv)
            minv[better] = reduced[better]
            way[better] = j0
            j1 = int(np.argmin(np.where(free, minv, np.inf)))
            delta = minv[j1]
            u[owner[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
        while j0:  # flip the augmenting path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    cols = np.flatnonzero(owner[1:])
    rows = owner[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (A, 4) and (B, 4) xyxy boxes -> (A, B)."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _to_z(xyxy: np.ndarray) -> np.ndarray:
    """xyxy -> [cx, cy, w, h] (float64)."""
    x1, y1, x2, y2 = np.asarray(xyxy, np.float64)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


@dataclass
class _Track:
    """One tracked person: Kalman state, timers and the last observation.

    The state is ``[cx, cy, w, h, vcx, vcy, vw, vh]``. Transition, process noise, measurement
    noise and initial covariance are all per-coordinate, so the 8 x 8 covariance is exactly four
    independent 2 x 2 (position, velocity) blocks; each is kept as its three distinct entries and
    the filter reduces to scalar formulas (no matrix inverse).
    """

    pos: np.ndarray  # (4,) [cx, cy, w, h], px
    vel: np.ndarray  # (4,) their rates, px/s
    var: np.ndarray  # (3, 4) covariance blocks: var(pos), cov(pos, vel), var(vel)
    born: float  # t of the first match
    last_hit: float  # t of the latest match
    confidence: float  # latest matched detector score
    face_rel: np.ndarray  # (4,) face box in units of the person box, about its centre; NaN = no face
    track_id: int = -1  # -1 while tentative
    det_index: int = -1  # row of the detection matched in this update, -1 = none

    @classmethod
    def start(cls, xyxy: np.ndarray, face: np.ndarray, score: float, t: float) -> _Track:
        z = _to_z(xyxy)
        s = math.sqrt(z[2] * z[3])
        var = np.array([(2 * _MEASURE_STD * s) ** 2, 0.0, (_VELOCITY_STD0 * s) ** 2])[:, None].repeat(4, 1)
        track = cls(z, np.zeros(4), var, t, t, score, np.full(4, np.nan))
        track.remember_face(face)
        return track

    @property
    def xyxy(self) -> np.ndarray:
        cx, cy, w, h = self.pos
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    def predict(self, dt: float) -> None:
        """Advance the state by ``dt`` seconds (constant velocity, white-noise acceleration)."""
        if dt <= 0:
            return
        q = (_ACCEL_STD * math.sqrt(self.pos[2] * self.pos[3])) ** 2
        pp, pv, vv = self.var
        self.var = np.stack(
            [pp + 2 * dt * pv + dt**2 * vv + q * dt**3 / 3, pv + dt * vv + q * dt**2 / 2, vv + q * dt]
        )
        self.pos = self.pos + dt * self.vel
        self.pos[2:] = np.maximum(self.pos[2:], _MIN_SIDE)

    def correct(self, xyxy: np.ndarray) -> None:
        """Kalman update with a measured box."""
        z = _to_z(xyxy)
        r = (_MEASURE_STD * math.sqrt(z[2] * z[3])) ** 2
        pp, pv, vv = self.var
        gain_p, gain_v = pp / (pp + r), pv / (pp + r)
        innovation = z - self.pos
        self.pos = self.pos + gain_p * innovation
        self.vel = self.vel + gain_v * innovation
        self.var = np.stack([pp - gain_p * pp, pv - gain_p * pv, vv - gain_v * pv])
        self.pos[2:] = np.maximum(self.pos[2:], _MIN_SIDE)

    def remember_face(self, face: np.ndarray) -> None:
        """Store the face box relative to the (filtered) person box, so it moves with it."""
        cx, cy, w, h = self.pos
        self.face_rel = (np.asarray(face, np.float64) - [cx, cy, cx, cy]) / [w, h, w, h]

    def face_xyxy(self) -> np.ndarray:
        cx, cy, w, h = self.pos
        return self.face_rel * [w, h, w, h] + [cx, cy, cx, cy]


class Tracker:
    """Tracks the people of one camera (one instance per camera).

    Args:
        cfg: Thresholds and life-cycle times.
    """

    def __init__(self, cfg: Tracking):
        self.cfg = cfg
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._t: float | None = None
        self._ended: tuple[int, ...] = ()

    @property
    def ended(self) -> tuple[int, ...]:
        """Ids of confirmed tracks that ended during the last `update`."""
        return self._ended

    def update(self, detections: Detections | None, t_mono: float) -> Detections:
        """Advance all tracks to ``t_mono`` and match this frame's detections to them.

        Args:
            detections: People detected in this frame, or None when detection did not run on it
                (tracks are then only predicted; nothing is a miss).
            t_mono: Capture time in seconds, non-decreasing across calls.

        Returns:
            Confirmed tracks alive now, sorted by id: ``xyxy`` filtered (matched) or predicted
            (unmatched), ``confidence`` the latest matched score, ``face_xyxy`` the matched face
            or the last face moved with the predicted box (NaN when the face was not visible),
            ``tracker_id``, ``data['matched']`` (N,) bool, ``data['age_s']`` (N,) float32 seconds
            since birth, and every ``data`` column of the input: the matched detection's value,
            NaN (float) or 0 / False (other dtypes) for unmatched rows.
        """
        self._advance(t_mono)
        self._ended = ()
        if detections is None:
            return self._output(Detections.empty(), t_mono)
        assert detections.face_xyxy is not None
        score = detections.confidence
        high = np.flatnonzero(score >= self.cfg.high_threshold)
        low = np.flatnonzero((score >= self.cfg.low_threshold) & (score < self.cfg.high_threshold))
        left, new = self._associate(list(range(len(self._tracks))), high, detections, t_mono)
        left, _ = self._associate(left, low, detections, t_mono)
        self._reap(left, t_mono)
        for d in new:
            track = _Track.start(detections.xyxy[d], detections.face_xyxy[d], float(score[d]), t_mono)
            track.det_index = int(d)
            self._tracks.append(track)
            self._maybe_confirm(track, t_mono)
        return self._output(detections, t_mono)

    def close(self) -> None:
        """Forget all tracks (ids restart at 1)."""
        self._tracks.clear()
        self._next_id = 1
        self._t = None
        self._ended = ()

    def _advance(self, t: float) -> None:
        if not math.isfinite(t) or (self._t is not None and t < self._t):
            raise ValueError(f"Tracker.update: t_mono={t} must be finite and >= the previous {self._t}")
        dt = 0.0 if self._t is None else t - self._t
        for track in self._tracks:
            track.predict(dt)
            track.det_index = -1
        self._t = t

    def _associate(
        self, tracks: list[int], dets: np.ndarray, detections: Detections, t: float
    ) -> tuple[list[int], list[int]]:
        """Match detection rows ``dets`` to track indices ``tracks`` by IoU; update the matched.

        Returns:
            (unmatched track indices, unmatched detection rows).
        """
        if not tracks or not len(dets):
            return tracks, [int(d) for d in dets]
        assert detections.face_xyxy is not None
        boxes = np.stack([self._tracks[k].xyxy for k in tracks])
        iou = box_iou(boxes, detections.xyxy[dets].astype(np.float64))
        # Pairs under match_iou cost more than any full set of allowed pairs together, so the
        # assignment first maximises the number of allowed matches, then their total IoU.
        cost = np.where(iou >= self.cfg.match_iou, 1 - iou, len(tracks) + len(dets) + 1.0)
        matched_t, matched_d = set(), set()
        for r, c in zip(*linear_assignment(cost), strict=True):
            if iou[r, c] < self.cfg.match_iou:
                continue
            track, d = self._tracks[tracks[r]], int(dets[c])
            track.correct(detections.xyxy[d])
            track.remember_face(detections.face_xyxy[d])
            track.confidence, track.last_hit, track.det_index = float(detections.confidence[d]), t, d
            self._maybe_confirm(track, t)
            matched_t.add(int(r))
            matched_d.add(int(c))
        return (
            [k for r, k in enumerate(tracks) if r not in matched_t],
            [int(d) for c, d in enumerate(dets) if c not in matched_d],
        )

    def _maybe_confirm(self, track: _Track, t: float) -> None:
        if track.track_id < 0 and t - track.born >= self.cfg.birth_s - _CLOCK_EPS:
            track.track_id = self._next_id
            self._next_id += 1

    def _reap(self, unmatched: list[int], t: float) -> None:
        """Drop tentative tracks that missed and confirmed tracks unmatched for ``death_s``."""
        dead = set()
        for k in unmatched:
            track = self._tracks[k]
            if track.track_id < 0:
                dead.add(k)
            elif t - track.last_hit >= self.cfg.death_s - _CLOCK_EPS:
                dead.add(k)
                self._ended += (track.track_id,)
        self._tracks = [tr for k, tr in enumerate(self._tracks) if k not in dead]

    def _output(self, detections: Detections, t: float) -> Detections:
        alive = sorted((tr for tr in self._tracks if tr.track_id >= 0), key=lambda tr: tr.track_id)
        assert detections.face_xyxy is not None
        rows = np.array([tr.det_index for tr in alive], np.int64)
        matched = rows >= 0
        face = np.array([tr.face_xyxy() for tr in alive]).reshape(-1, 4)
        face[matched] = detections.face_xyxy[rows[matched]]
        data = {key: _carry(col, rows, matched) for key, col in detections.data.items()}
        data["matched"] = matched
        data["age_s"] = np.array([t - tr.born for tr in alive], np.float32)
        return Detections(
            xyxy=np.array([tr.xyxy for tr in alive]).reshape(-1, 4),
            confidence=np.array([tr.confidence for tr in alive], np.float32),
            face_xyxy=face,
            tracker_id=np.array([tr.track_id for tr in alive], np.int64),
            data=data,
        )


def _carry(column: np.ndarray, rows: np.ndarray, matched: np.ndarray) -> np.ndarray:
    """Rows of a detection column for the tracks (NaN / zero where a track was not matched)."""
    fill = np.nan if np.issubdtype(column.dtype, np.inexact) else 0
    out = np.full((len(rows), *column.shape[1:]), fill, dtype=column.dtype)
    out[matched] = column[rows[matched]]
    return out
