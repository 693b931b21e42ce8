"""Evaluation of any predictor on any supported dataset: accuracy, macro-F1, per-class recall,
confusion matrix (JSON + PNG), valence/arousal error where labels exist.

The metric code only sees a ``Predictor``: a callable mapping a batch of uint8 RGB views
(person (N, Sp, Sp, 3), scene (N, Ss, Ss, 3)) to (class probabilities (N, C), valence/arousal (N, 2)).
``torch_predictor`` wraps a PyTorch checkpoint; ONNX/INT8 engines plug in the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from edge_agent.views import ViewGeometry
from train.data.dataset import DualViewDataset
from train.data.records import Sample
from train.engine import normalise
from train.metrics import classification_report, va_report

Predictor = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class EvalResult:
    """Metrics of one evaluation plus the samples that could not be used."""

    report: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)


def torch_predictor(model: nn.Module, device: str = "cpu") -> Predictor:
    """Wrap a PyTorch dual-view model as a ``Predictor`` (ImageNet normalisation, eval mode)."""
    model = model.to(device).eval()

    @torch.no_grad()
    def predict(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        def prep(x: np.ndarray) -> torch.Tensor:
            return normalise(torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float() / 255)

        logits, va = model(prep(person), prep(scene))
        return torch.softmax(logits, 1).cpu().numpy(), va.cpu().numpy()

    return predict


def fer_cnn_predictor(class_va: np.ndarray) -> Predictor:
    """The packaged FER2013 CNN of ``facial-emotion-recognition==0.3.4`` as a peer ``Predictor``.

    It sees the person view in grey at 48×48 (its training format; on FER+ the person view is the
    whole 48×48 image). Its 7 independent sigmoid scores are normalised into probabilities, and its
    valence/arousal is the prior's expectation under them (the peer has no VA output).
    """
    from train.teachers.offline import FerCnn, default_fer_weights

    net = FerCnn()
    net.load_state_dict(torch.load(default_fer_weights(), map_location="cpu", weights_only=True)["network"])
    net.eval()

    @torch.no_grad()
    def predict(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grey = np.stack(
            [
                cv2.resize(cv2.cvtColor(p, cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
                for p in person
            ]
        )
        x = torch.from_numpy(grey).float().unsqueeze(1) / 255 * 2 - 1
        scores = net(x).numpy()
        probs = scores / np.clip(scores.sum(axis=1, keepdims=True), 1e-6, None)
        return probs, probs @ class_va

    return predict


def evaluate(
    samples: list[Sample],
    predictor: Predictor,
    person: ViewGeometry,
    scene: ViewGeometry,
    classes: tuple[str, ...],
    batch_size: int = 128,
) -> EvalResult:
    """Run ``predictor`` over ``samples`` and compute every metric the labels allow.

    Unreadable images, and boxes outside their image, are skipped, counted and listed in
    ``EvalResult.skipped``; they never enter a metric.
    """
    ds = DualViewDataset(samples, person, scene)
    probs, vas, labels, va_t, has_va = [], [], [], [], []
    skipped: dict[str, str] = {}
    for start in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        for it in items:
            if not it["valid"]:
                s = samples[int(it["index"])]
                skipped[s.image] = ds.bad.get(s.image, "unusable image")
        items = [it for it in items if it["valid"]]
        if not items:
            continue
        pv = np.stack([it["person"].numpy().transpose(1, 2, 0) for it in items])
        sv = np.stack([it["scene"].numpy().transpose(1, 2, 0) for it in items])
        p, v = predictor(pv, sv)
        probs.append(p)
        vas.append(v)
        labels += [int(it["label"]) for it in items]
        va_t += [it["va"].numpy() for it in items]
        has_va += [float(it["va_weight"]) > 0 for it in items]
    if not probs:
        return EvalResult({"n_samples": 0, "n_skipped": len(skipped)}, skipped)
    prob = np.concatenate(probs)
    va = np.concatenate(vas)
    lab = np.array(labels)
    report: dict[str, Any] = {"n_samples": len(lab), "n_skipped": len(skipped)}
    if (lab >= 0).any():
        report["classification"] = classification_report(lab, prob.argmax(1), classes)
    mask = np.array(has_va)
    if mask.any():
        report["valence_arousal"] = va_report(va[mask], np.stack(va_t)[mask])
    return EvalResult(report, skipped)


def confusion_png(cm: np.ndarray, classes: tuple[str, ...], path: Path | str, cell: int = 64) -> None:
    """Write a row-normalised confusion matrix (true = rows) with counts as a PNG (OpenCV, no matplotlib)."""
    cm = np.asarray(cm)
    n = len(classes)
    margin = 90
    img = np.full((margin + n * cell + 10, margin + n * cell + 10, 3), 255, np.uint8)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(n):
        cv2.putText(img, classes[i][:8], (4, margin + i * cell + cell // 2 + 4), font, 0.4, (0, 0, 0), 1)
        cv2.putText(img, classes[i][:8], (margin + i * cell + 4, margin - 8), font, 0.4, (0, 0, 0), 1)
        for j in range(n):
            shade = int(255 * (1 - frac[i, j]))
            x0, y0 = margin + j * cell, margin + i * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (255, shade, shade), -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (180, 180, 180), 1)
            colour = (255, 255, 255) if frac[i, j] > 0.5 else (0, 0, 0)
            cv2.putText(img, str(int(cm[i, j])), (x0 + 6, y0 + cell // 2 + 4), font, 0.45, colour, 1)
    cv2.putText(img, "rows: true, cols: predicted", (4, 16), font, 0.45, (0, 0, 0), 1)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write confusion PNG to {path}")


def write_report(
    result: EvalResult, out_dir: Path | str, name: str, classes: tuple[str, ...], provenance: dict[str, Any]
) -> Path:
    """Write ``<name>.json`` (metrics, provenance, skipped samples) and ``<name>_confusion.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cls = result.report.get("classification")
    if cls:
        confusion_png(np.array(cls["confusion"]), classes, out / f"{name}_confusion.png")
    path = out / f"{name}.json"
    path.write_text(json.dumps({**provenance, **result.report, "skipped": result.skipped}, indent=2))
    return path
