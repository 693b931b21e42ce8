"""Build a calibration set (``.npz`` + sidecar) from a camera/clip and/or labelled datasets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from calibration.coverage import Coverage, coverage
from calibration.datasets import CalibrationDataError, dataset_views, held_out_split
from calibration.video import DEFAULT_EVERY_S, VideoCapture, video_views
from calibration.viewset import ViewSet
from edge_agent.config import Camera, Detection
from edge_agent.modelmeta import ModelMeta

DEFAULT_COUNT = 512


@dataclass(frozen=True)
class CalibrationSet:
    """A built calibration set and what it covers.

    Attributes:
        views: The samples.
        coverage: Per-class / brightness / origin coverage.
        video: What the video part saw (None without ``--from-video``).
        sources: Dataset specs and camera used, for the sidecar.
    """

    views: ViewSet
    coverage: Coverage
    video: VideoCapture | None
    sources: dict[str, object]


def build_calibration_set(
    meta: ModelMeta,
    *,
    specs: Sequence[str] = (),
    camera: Camera | None = None,
    seconds: float = 60.0,
    every_s: float = DEFAULT_EVERY_S,
    n: int = DEFAULT_COUNT,
    min_count: int | None = None,
    detection: Detection | None = None,
    seed: int = 0,
    test_fraction: float | None = None,
    split_seed: int | None = None,
) -> CalibrationSet:
    """Real person/scene view pairs for INT8 calibration.

    Camera samples come first (they are what the engine will see); datasets (training split only,
    class-balanced) fill the rest up to ``n``.

    Args:
        meta: Model metadata (views, normalisation, input names, classes).
        specs: Dataset specs ``kind:path`` (``expw:…``, ``ferplus:…``); may be empty with a camera.
        camera: Camera or clip to watch, or None.
        seconds: How long to watch the camera.
        every_s: Minimum stream seconds between camera frames used, in [0, 60].
        n: Samples wanted, in [1, 100000].
        min_count: Fail below this many samples (default ``n``).
        detection: The agent's detection config for the camera part.
        seed: Dataset draw seed.
        test_fraction: Held-out share used by training (datasets split by image); None: the
            model's recorded split (`ModelMeta.train_split`), else the default.
        split_seed: Split seed used by training; None as for ``test_fraction``.

    Raises:
        CalibrationDataError: no source given, bad counts, or too few samples found.
    """
    if not 1 <= n <= 100_000:
        raise CalibrationDataError(f"--count={n}: must be in [1, 100000]")
    need = n if min_count is None else min_count
    if not 1 <= need <= n:
        raise CalibrationDataError(f"--min-count={need}: must be in [1, --count={n}]")
    if camera is None and not specs:
        raise CalibrationDataError(
            "no calibration source: give --from-video and/or dataset specs (--data kind:path)"
        )
    parts: list[ViewSet] = []
    video = None
    if camera is not None:
        vs, video = video_views(meta, camera, seconds, n, detection, every_s)
        parts.append(vs)
    have = sum(len(p) for p in parts)
    held_out = held_out_split(meta, test_fraction=test_fraction, split_seed=split_seed)
    if specs and have < n:
        parts.append(dataset_views(meta, specs, "train", n - have, seed, held_out=held_out))
    views = ViewSet.concat(parts)
    if len(views) < need:
        raise CalibrationDataError(
            f"only {len(views)} calibration samples found, need >= {need}: watch longer (--seconds), "
            "add datasets (--data), or lower --min-count"
        )
    sources: dict[str, object] = {
        "datasets": list(specs),
        "camera": _describe(camera),
        "seconds": seconds if camera else None,
        "every_s": every_s if camera else None,
        "seed": seed,
        "test_fraction": held_out["test_fraction"],
        "split_seed": held_out["split_seed"],
        "val_fraction": held_out["val_fraction"],
    }
    return CalibrationSet(views, coverage(views), video, sources)


def _describe(camera: Camera | None) -> str | None:
    """The camera's source for the sidecar, with credentials removed."""
    if camera is None:
        return None
    from edge_agent.sources import redact

    return redact(camera.source.model_dump_json())


def save_calibration_set(result: CalibrationSet, path: str | Path, model: str) -> str:
    """Write the ``.npz`` and its sidecar JSON; return the content hash.

    Args:
        result: The built set.
        path: Target ``.npz``.
        model: The model file the set was cut for (geometry and normalisation come from it).
    """
    from engines.artifacts import write_sidecar

    digest = result.views.save(path)
    video = None if result.video is None else result.video.__dict__
    write_sidecar(
        path,
        "calibration-set",
        {
            "content_sha256": digest,
            "model": str(model),
            "inputs": {k: list(v.shape) for k, v in result.views.inputs.items()},
            "coverage": result.coverage.to_record(),
            "video": video,
            "sources": result.sources,
        },
    )
    return digest
