"""The per-frame pipeline: detect -> track -> infer -> smooth, for frames of any number of cameras.

`Pipeline.process` takes the newest frame of each camera that has one and returns one
`FrameResult` per frame. All persons of all those frames that need a fresh estimate go into one
model call. Sources, publishing and outputs live in `edge_agent.app`; the benchmark drives this
class directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from edge_agent.config import AgentConfig
from edge_agent.detect import Detector, ThreadedDetector, build_detector
from edge_agent.infer import Backend, EmotionInferencer, build_backend
from edge_agent.smooth import Smoother
from edge_agent.structures import Detections, Frame, FrameResult
from edge_agent.track import Tracker


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class Pipeline:
    """Stages shared by all cameras (detector, model) and per-camera state (tracker, smoother)."""

    def __init__(self, cfg: AgentConfig, backend: Backend | None = None, detector: Detector | None = None):
        self.cfg = cfg
        # The model first: when it cannot load, no detector or detector thread is left behind.
        self.inferencer = EmotionInferencer(backend or build_backend(cfg.inference), cfg.inference)
        try:
            self.detector = detector or build_detector(cfg.detection)
        except BaseException:
            self.inferencer.close()
            raise
        self.detector_thread = ThreadedDetector(self.detector) if cfg.detection.threaded else None
        self.detector_stale = 0
        self.trackers: dict[str, Tracker] = {}
        self.smoothers: dict[str, Smoother] = {}
        # Track ids ended but not yet delivered in a result: a stage that fails after the tracker
        # ran must not lose the end (no `track_ended`, smoother and publisher state kept for ever).
        self.undelivered_ends: dict[str, tuple[int, ...]] = {}

    @property
    def classes(self) -> tuple[str, ...]:
        return self.inferencer.classes

    def counters(self) -> dict[str, int]:
        """Things the pipeline skipped and kept going: model results with NaN, detector failures,
        frames the detector thread never saw because a newer one replaced them, and its results
        dropped as too old to match (`_detect`)."""
        out = {"model_nonfinite": self.inferencer.nonfinite}
        if self.detector_thread is not None:
            out["detector_errors"] = self.detector_thread.errors
            out["detector_replaced"] = self.detector_thread.replaced
            out["detector_stale"] = self.detector_stale
        return out

    def process(self, frames: Sequence[Frame]) -> list[FrameResult]:
        """Run every stage on the given frames (at most one per camera)."""
        results = [self._detect_and_track(f) for f in frames]
        t0 = time.perf_counter()
        self.inferencer.infer(results)
        infer_ms = _ms(t0)
        smoothed = [self._smooth(r, infer_ms) for r in results]
        for frame in frames:
            self.undelivered_ends.pop(frame.camera, None)
        return smoothed

    def _detect_and_track(self, frame: Frame) -> FrameResult:
        stage_ms: dict[str, float] = {}
        detections = self._detect(frame, stage_ms)
        tracker = self.trackers.setdefault(frame.camera, Tracker(self.cfg.tracking))
        t0 = time.perf_counter()
        tracked = tracker.update(detections, frame.t_mono)
        stage_ms["track"] = _ms(t0)
        self.inferencer.forget(frame.camera, tracker.ended)
        ended = self.undelivered_ends.get(frame.camera, ()) + tuple(tracker.ended)
        self.undelivered_ends[frame.camera] = ended
        return FrameResult(frame, tracked, self.classes, ended, stage_ms)

    def _detect(self, frame: Frame, stage_ms: dict[str, float]) -> Detections | None:
        """Detections to give the tracker with ``frame``, or None (it predicts); records the time taken."""
        due = frame.index % self.cfg.detection.every_k_frames == 0
        if self.detector_thread is None:
            if not due:
                return None
            t0 = time.perf_counter()
            detections = self.detector.detect(frame)
            stage_ms["detect"] = _ms(t0)
            return detections
        if due:
            self.detector_thread.submit(frame)
        done = self.detector_thread.collect(frame.camera)
        if done is None:
            return None
        if frame.t_mono - done.t_mono > self.cfg.tracking.death_s:
            # Boxes from before a stall or reconnect: every track they could match has ended, so
            # they would only start ghost tracks where people were.
            self.detector_stale += 1
            return None
        # The detector's own time, off the frame path (not "detect", so stage sums stay the frame's
        # latency); the age says how stale the boxes are.
        stage_ms["detect_thread"] = done.ms
        stage_ms["detect_age"] = (frame.t_mono - done.t_mono) * 1000.0
        return done.detections

    def _smooth(self, result: FrameResult, infer_ms: float) -> FrameResult:
        smoother = self.smoothers.setdefault(
            result.frame.camera, Smoother(self.cfg.smoothing, len(self.classes))
        )
        t0 = time.perf_counter()
        smoothed = smoother.update(result.detections, result.frame.t_mono, result.ended_tracks)
        stage_ms = {**result.stage_ms, "infer": infer_ms, "smooth": _ms(t0)}
        return FrameResult(result.frame, smoothed, self.classes, result.ended_tracks, stage_ms)

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()
        for smoother in self.smoothers.values():
            smoother.close()
        self.inferencer.close()
        if self.detector_thread is not None:
            self.detector_thread.close()  # closes the detector too
        else:
            self.detector.close()
