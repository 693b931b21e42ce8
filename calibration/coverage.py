"""What a calibration set covers: classes, lighting and where the samples came from.

INT8 scales are only as good as the activations seen during calibration: a set without dark
frames or without a class under-covers those activation ranges. The report makes gaps visible
before a user trusts an engine on their camera.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from calibration.viewset import ViewSet

# Mean luma bands of the person view (0-255): what "dark" and "bright" mean for these warnings.
BRIGHTNESS_BANDS = (
    ("dark", 0.0, 60.0),
    ("dim", 60.0, 100.0),
    ("normal", 100.0, 170.0),
    ("bright", 170.0, 256.0),
)
MIN_CLASS_SHARE = 0.03  # a labelled class below this share of labelled samples is flagged


@dataclass(frozen=True)
class Coverage:
    """Coverage of one view set.

    Attributes:
        count: Samples.
        per_class: ``{class: count}`` over labelled samples (all classes listed, zeros included).
        unlabelled: Samples without a label (camera frames).
        brightness: ``{band: count}`` over ``BRIGHTNESS_BANDS``.
        brightness_p5_p50_p95: Luma percentiles of the person view.
        origins: ``{origin kind: count}`` (text before the first ``:``, e.g. ``expw``, ``video``).
        warnings: Gaps worth a look (missing classes, no dark or bright samples).
    """

    count: int
    per_class: dict[str, int]
    unlabelled: int
    brightness: dict[str, int]
    brightness_p5_p50_p95: tuple[float, float, float]
    origins: dict[str, int]
    warnings: tuple[str, ...]

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        p5, p50, p95 = self.brightness_p5_p50_p95
        out = [
            f"samples: {self.count} ({self.unlabelled} unlabelled)",
            "origins: " + ", ".join(f"{k} {v}" for k, v in sorted(self.origins.items())),
            "per class: " + ", ".join(f"{k} {v}" for k, v in self.per_class.items()),
            "brightness: "
            + ", ".join(f"{k} {v}" for k, v in self.brightness.items())
            + f" (person-view luma p5/p50/p95 {p5:.0f}/{p50:.0f}/{p95:.0f})",
        ]
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def to_record(self) -> dict[str, object]:
        return {
            "count": self.count,
            "per_class": self.per_class,
            "unlabelled": self.unlabelled,
            "brightness": self.brightness,
            "brightness_p5_p50_p95": list(self.brightness_p5_p50_p95),
            "origins": self.origins,
            "warnings": list(self.warnings),
        }


def coverage(views: ViewSet) -> Coverage:
    """Coverage report of a view set."""
    labelled = views.labels[views.labels >= 0]
    counts = np.bincount(labelled, minlength=len(views.classes))
    per_class = {c: int(n) for c, n in zip(views.classes, counts, strict=True)}
    b = views.brightness
    bands = {name: int(((b >= lo) & (b < hi)).sum()) for name, lo, hi in BRIGHTNESS_BANDS}
    pct = tuple(float(x) for x in np.percentile(b, [5, 50, 95])) if len(b) else (0.0, 0.0, 0.0)
    origins = Counter(str(o).split(":", 1)[0] for o in views.origin)
    warnings = []
    if len(labelled):
        thin = [c for c, n in per_class.items() if n < MIN_CLASS_SHARE * len(labelled)]
        if thin:
            warnings.append(f"classes under {MIN_CLASS_SHARE:.0%} of labelled samples: {', '.join(thin)}")
    if len(b) and bands["dark"] == 0:
        warnings.append("no dark samples (person-view luma < 60): INT8 ranges may clip in low light")
    if len(b) and bands["bright"] == 0:
        warnings.append("no bright samples (person-view luma >= 170)")
    return Coverage(
        len(views),
        per_class,
        int((views.labels < 0).sum()),
        bands,
        pct,  # type: ignore[arg-type]
        dict(origins),
        tuple(warnings),
    )
