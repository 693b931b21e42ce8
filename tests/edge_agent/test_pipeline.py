"""Detect -> track -> infer -> smooth on the real clips in ../shared/videos.

Tracking behaviour is checked with a tiny real ONNX model (ids do not depend on the model); the
emotion trend is checked with the shipped default model.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bench import decode
from edge_agent.config import parse_config
from edge_agent.infer import BUILTIN_MODELS, ModelLoadError
from edge_agent.pipeline import Pipeline
from edge_agent.structures import FrameResult
from tests.model_factory import make_tiny_model


def config(detector: dict | None = None, model: str = "default-int8", **sections: dict):
    data = {
        "cameras": [{"name": "c", "source": {"type": "file", "path": "unused"}}],
        "inference": {"backend": {"type": "onnxruntime", "model": model}},
        **sections,
    }
    if detector:
        data["detection"] = {"detector": detector}
    return parse_config(data)


def run_clip(pipeline: Pipeline, clip: Path, step: int = 1, realtime: bool = False) -> list[FrameResult]:
    """Process every ``step``-th frame of a clip as camera 'c' (timestamps from the clip's frame rate).

    ``realtime`` paces the frames at the clip's rate, as a camera delivers them, for stages whose
    results depend on wall-clock time (the detector thread).
    """
    results = []
    for frame, _, _ in decode(str(clip), "c", realtime=realtime):
        if frame.index % step == 0:
            results.append(pipeline.process([frame])[0])
    return results


def track_ids(results: list[FrameResult]) -> set[int]:
    return {int(t) for r in results for t in np.asarray(r.detections.tracker_id)}


@pytest.fixture
def tiny_pipeline(tmp_path: Path):
    def make(**kw) -> Pipeline:
        cfg = config(model=str(make_tiny_model(tmp_path / "tiny.onnx", size=32)), **kw)
        return Pipeline(cfg)

    return make


def test_single_face_one_stable_track(tiny_pipeline, single_face_clip: Path) -> None:
    pipe = tiny_pipeline()
    results = run_clip(pipe, single_face_clip)
    pipe.close()
    assert track_ids(results) == {1}
    tracked = sum(len(r.detections) == 1 for r in results)
    assert tracked >= 0.9 * len(results)


def test_threaded_detector_keeps_one_stable_track(tiny_pipeline, single_face_clip: Path) -> None:
    """Detections arrive a frame or more late from the detector thread; the tracker bridges the gap."""
    pipe = tiny_pipeline(detection={"threaded": True})
    results = run_clip(pipe, single_face_clip, realtime=True)
    counters = pipe.counters()
    pipe.close()
    assert track_ids(results) == {1}
    # Born a little later than inline (birth time plus the detector's lag), then never lost.
    tracked = [len(r.detections) == 1 for r in results]
    born = tracked.index(True)
    assert born <= len(results) // 2 and all(tracked[born:]), tracked
    detected = [r.stage_ms["detect_age"] for r in results if "detect_age" in r.stage_ms]
    assert len(detected) >= 0.2 * len(results), "the detector thread delivered too few results"
    assert min(detected) >= 0  # results are never from the future
    assert counters["detector_errors"] == 0


def test_face_noface_track_ends_when_face_leaves(tiny_pipeline, face_noface_clip: Path) -> None:
    pipe = tiny_pipeline()
    results = run_clip(pipe, face_noface_clip)
    pipe.close()
    ended = [i for i, r in enumerate(results) if r.ended_tracks]
    assert ended, "the face track never ended"
    assert all(len(r.detections) == 0 for r in results[ended[-1] :])
    assert track_ids(results[: ended[0]]) == {1}


def test_track_end_survives_a_failed_frame(tiny_pipeline, face_noface_clip: Path) -> None:
    """A stage failing after the tracker ran (here: the model call) must not lose the track's end:
    the next frame that gets through carries it, so `track_ended` is still published."""
    pipe = tiny_pipeline()
    clean = run_clip(pipe, face_noface_clip)
    pipe.close()
    end_index = next(r.frame.index for r in clean if r.ended_tracks)
    pipe = tiny_pipeline()
    infer = pipe.inferencer.infer

    def infer_failing_at_the_end(results: list[FrameResult]) -> None:
        if results[0].frame.index in (end_index, end_index + 1):
            raise RuntimeError("model call failed")
        infer(results)

    pipe.inferencer.infer = infer_failing_at_the_end
    ends = []
    for frame, _, _ in decode(str(face_noface_clip), "c"):
        try:
            result = pipe.process([frame])[0]
        except RuntimeError:
            continue
        ends += [(result.frame.index, t) for t in result.ended_tracks]
    pipe.close()
    assert ends == [(end_index + 2, 1)]
    assert not pipe.undelivered_ends


@pytest.mark.parametrize(("every_k", "reinfer_n"), [(1, 1), (3, 4), (2, 5)])
def test_only_detected_faces_are_inferred(
    tiny_pipeline, single_face_clip: Path, every_k: int, reinfer_n: int
) -> None:
    """Between detector frames the tracker only predicts the face: running the model on that guess
    gave a result of quality 0 that replaced the cached one and restarted the re-inference clock."""
    pipe = tiny_pipeline(detection={"every_k_frames": every_k}, inference={"reinfer_every_n": reinfer_n})
    results = run_clip(pipe, single_face_clip)
    pipe.close()
    observed = [r for r in results if len(r.detections) and r.detections.data["observed"].any()]
    assert all(r.detections.data["matched"][r.detections.data["observed"]].all() for r in observed)
    assert all((r.detections.data["quality"][r.detections.data["observed"]] > 0).all() for r in observed)
    # Due every `reinfer_n` frames, served at the next detector frame.
    gaps = np.diff([r.frame.index for r in observed])
    assert len(observed) >= len(results) // (reinfer_n + every_k) and gaps.max() < reinfer_n + every_k


def test_one_by_one_one_track_per_person(tiny_pipeline, one_by_one_clip: Path) -> None:
    """Six people walk in one after another, mostly seen from behind: the body detector keeps them."""
    pipe = tiny_pipeline(detector={"type": "ssd_mobilenet"})
    results = run_clip(pipe, one_by_one_clip, step=2)
    pipe.close()
    ids = track_ids(results)
    assert 6 <= len(ids) <= 7, f"expected one track per person (6), got {len(ids)}: {sorted(ids)}"


@pytest.mark.parametrize("model", sorted(BUILTIN_MODELS))
def test_single_face_smile_raises_happy(model: str, single_face_clip: Path) -> None:
    """Every shipped model file, as the agent runs it, sees the smile (the shipped files' sidecar
    and metadata contract is checked in test_infer.py)."""
    if not BUILTIN_MODELS[model].is_file():
        pytest.skip(f"{model}: not in this install")
    pipe = Pipeline(config(model=model))
    results = [r for r in run_clip(pipe, single_face_clip) if len(r.detections)]
    pipe.close()
    happy = pipe.classes.index("happy")
    start = float(np.mean([r.detections.data["probs"][0, happy] for r in results[5:10]]))
    end = float(np.mean([r.detections.data["probs"][0, happy] for r in results[-5:]]))
    assert end > start + 0.1, (start, end)


def test_unloadable_model_leaves_no_detector_thread(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    before = {t for t in threading.enumerate() if t.name == "detector"}
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        Pipeline(config(model=str(bad), detection={"threaded": True}))
    assert {t for t in threading.enumerate() if t.name == "detector" and t.is_alive()} <= before


@pytest.mark.parametrize(("gap_s", "applied"), [(0.5, True), (10.0, False)])
def test_threaded_detections_older_than_death_s_are_dropped(
    tiny_pipeline, single_face_clip: Path, gap_s: float, applied: bool
) -> None:
    """After a stall longer than a track's life (a reconnect), the detector thread's last boxes
    describe a scene that is gone: they are counted and dropped, not tracked."""
    pipe = tiny_pipeline(detection={"threaded": True, "every_k_frames": 2})
    first = next(iter(decode(str(single_face_clip), "c"))).frame
    try:
        pipe.process([first])  # index 0: submitted to the detector thread
        time.sleep(1.0)  # the face is found meanwhile
        later = dataclasses.replace(first, index=1, t_mono=first.t_mono + gap_s)  # index 1: not submitted
        result = pipe.process([later])[0]
        # A track needs birth_s of hits to be reported, so look at whether the boxes reached the tracker.
        assert ("detect_age" in result.stage_ms) is applied
        assert pipe.counters()["detector_stale"] == (0 if applied else 1)
    finally:
        pipe.close()
