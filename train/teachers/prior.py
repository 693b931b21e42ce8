"""The psychological emotion prior (``emotion_prior.yaml``): circumplex coordinates and descriptions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from train.data.records import CLASSES

PRIOR_PATH = Path(__file__).with_name("emotion_prior.yaml")
TEXT_FIELDS = ("action_units", "appraisal", "posture", "scene")


@dataclass(frozen=True)
class EmotionPrior:
    """Per-class prior in ``CLASSES`` order.

    Attributes:
        classes: Class names.
        va: (7, 2) valence, arousal in [-1, 1].
        texts: One description per class (name + every text field), for the text encoder.
    """

    classes: tuple[str, ...]
    va: np.ndarray
    texts: tuple[str, ...]


def load_prior(path: Path | str = PRIOR_PATH) -> EmotionPrior:
    """Read and check the prior file.

    Raises:
        ValueError: a class is missing, a coordinate is outside [-1, 1], or a text field is absent.
    """
    with open(path) as fh:
        data = yaml.safe_load(fh)["classes"]
    va, texts = [], []
    for name in CLASSES:
        if name not in data:
            raise ValueError(f"{path}: class {name!r} missing; need all of {CLASSES}")
        entry = data[name]
        v, a = float(entry["valence"]), float(entry["arousal"])
        if not (-1 <= v <= 1 and -1 <= a <= 1):
            raise ValueError(f"{path}: {name} valence/arousal ({v}, {a}) outside [-1, 1]")
        missing = [f for f in TEXT_FIELDS if not entry.get(f)]
        if missing:
            raise ValueError(f"{path}: {name} lacks text field(s) {missing}")
        va.append((v, a))
        texts.append(
            f"A {name} facial expression and mood. Face: {entry['action_units']}. "
            f"Cause: {entry['appraisal']}. Body: {entry['posture']}. Typical scene: {entry['scene']}."
        )
    return EmotionPrior(CLASSES, np.array(va, np.float32), tuple(texts))
