"""Metrics on arrays and the predictor-agnostic evaluation (a real deterministic predictor function)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE
from train.data.degrade import parse_degradation
from train.data.records import CLASSES, Sample
from train.evaluate import confusion_png, degraded, evaluate, mirror_averaged, write_report
from train.metrics import calibration_report, classification_report, confusion, va_report


def test_confusion_ignores_unlabelled() -> None:
    cm = confusion(np.array([0, 1, 1, -1]), np.array([0, 1, 0, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "labels,preds,acc,f1",
    [
        ([], [], float("nan"), float("nan")),
        ([0, 0], [0, 0], 1.0, 1.0),
        ([0, 1, 1, 1], [0, 1, 1, 0], 0.75, (2 / 3 + 0.8) / 2),
    ],
)
def test_classification_report(labels: list[int], preds: list[int], acc: float, f1: float) -> None:
    r = classification_report(np.array(labels, int), np.array(preds, int), ("a", "b", "c"))
    assert (np.isnan(r["accuracy"]) and np.isnan(acc)) or r["accuracy"] == pytest.approx(acc)
    assert (np.isnan(r["macro_f1"]) and np.isnan(f1)) or r["macro_f1"] == pytest.approx(f1)


def _probs(top: list[float], pred: list[int], c: int = 3) -> np.ndarray:
    """Rows with probability ``top`` on class ``pred`` and the rest spread evenly."""
    p = np.tile(((1 - np.array(top)) / (c - 1))[:, None], (1, c))
    p[np.arange(len(top)), pred] = top
    return p


@pytest.mark.parametrize(
    ("labels", "top", "pred", "ece", "mce"),
    [
        ([-1], [0.9], [0], float("nan"), float("nan")),  # nothing labelled
        ([0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0], [0, 0, 1, 1], 0.5, 0.5),  # certain, right half the time
        ([0] * 10, [0.8] * 10, [0] * 8 + [1] * 2, 0.0, 0.0),  # 0.8 and right 8 in 10: calibrated
        ([0, 0, -1], [0.6, 0.6, 1.0], [0, 0, 1], 0.4, 0.4),  # under-confident; the unlabelled row ignored
        # two bins: 0.4 right 1 in 2 (gap 0.1), 0.9 right 2 in 2 (gap 0.1)
        ([0, 0, 1, 1], [0.4, 0.4, 0.9, 0.9], [0, 1, 1, 1], 0.1, 0.1),
    ],
)
def test_calibration_report(
    labels: list[int], top: list[float], pred: list[int], ece: float, mce: float
) -> None:
    r = calibration_report(np.array(labels), _probs(top, pred))
    assert (np.isnan(r["ece"]) and np.isnan(ece)) or r["ece"] == pytest.approx(ece)
    assert (np.isnan(r["mce"]) and np.isnan(mce)) or r["mce"] == pytest.approx(mce)
    assert sum(b["n"] for b in r["bins"]) == r["n"]


def test_calibration_report_nll_brier_and_bad_arguments() -> None:
    r = calibration_report(np.array([0, 1]), np.array([[0.5, 0.5], [0.0, 1.0]]))
    assert r["nll"] == pytest.approx(np.log(2) / 2) and r["brier"] == pytest.approx(0.25)
    assert [b["lo"] for b in r["bins"]] == pytest.approx([7 / 15, 14 / 15])  # upper edges inclusive
    with pytest.raises(ValueError, match="n_bins=0"):
        calibration_report(np.array([0]), np.array([[1.0]]), n_bins=0)
    with pytest.raises(ValueError, match=r"prob shape \(3,\)"):
        calibration_report(np.array([0]), np.array([1.0, 0.0, 0.0]))


def test_va_report() -> None:
    r = va_report(np.array([[0.0, 0.5], [1.0, 0.5]]), np.array([[0.0, 0.0], [0.5, 1.0]]))
    assert r["valence_mae"] == pytest.approx(0.25) and r["arousal_mae"] == pytest.approx(0.5)
    assert r["valence_pearson"] == pytest.approx(1.0) and r["arousal_pearson"] == 0.0


def _brightness_predictor(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class 3 (happy) for bright person views, 4 (sad) otherwise; valence = brightness."""
    b = person.reshape(len(person), -1).mean(1) / 255
    probs = np.zeros((len(person), 7))
    probs[np.arange(len(person)), np.where(b > 0.5, 3, 4)] = 1
    return probs, np.stack([b * 2 - 1, np.zeros_like(b)], 1)


def test_evaluate_with_any_predictor(tmp_path: Path) -> None:
    samples = []
    for i, (value, label) in enumerate([(230, 3), (20, 4), (240, 4), (10, 4)]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((40, 40, 3), value, np.uint8))
        samples.append(Sample(str(tmp_path / f"{i}.png"), None, label, va=(value / 255 * 2 - 1, 0.0)))
    samples.append(Sample(str(tmp_path / "missing.png"), None, 3))
    result = evaluate(samples, _brightness_predictor, DEFAULT_PERSON, DEFAULT_SCENE, CLASSES, batch_size=2)
    cls = result.report["classification"]
    assert result.report["n_samples"] == 4 and len(result.skipped) == 1
    assert cls["accuracy"] == 0.75 and cls["per_class_recall"]["sad"] == pytest.approx(2 / 3)
    assert result.report["valence_arousal"]["valence_mae"] < 0.05
    assert result.report["calibration"]["ece"] == pytest.approx(0.25)  # certain, right 3 in 4
    path = write_report(result, tmp_path / "out", "t", CLASSES, {"data": "x"})
    assert path.exists() and (tmp_path / "out" / "t_confusion.png").exists()


def _left_half_predictor(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Happy with probability = the brightness of the person view's left half; valence the same."""
    b = person[:, :, : person.shape[2] // 2].reshape(len(person), -1).mean(1) / 255
    probs = np.zeros((len(person), 7))
    probs[:, 3], probs[:, 4] = b, 1 - b
    return probs, np.stack([b, np.zeros_like(b)], 1)


@pytest.mark.parametrize(
    ("left", "right", "happy"),
    [(0, 0, 0.0), (255, 255, 1.0), (255, 0, 0.5), (0, 255, 0.5)],
)
def test_mirror_averaged_sees_both_halves(left: int, right: int, happy: float) -> None:
    person = np.zeros((1, 8, 8, 3), np.uint8)
    person[:, :, :4], person[:, :, 4:] = left, right
    scene = np.zeros((1, 8, 8, 3), np.uint8)
    probs, va = mirror_averaged(_left_half_predictor)(person, scene)
    assert probs[0, 3] == pytest.approx(happy) and va[0, 0] == pytest.approx(happy)
    assert probs.sum() == pytest.approx(1.0)
    assert _left_half_predictor(person, scene)[0][0, 3] == pytest.approx(left / 255)


def test_confusion_png_size(tmp_path: Path) -> None:
    confusion_png(np.eye(7, dtype=int) * 5, CLASSES, tmp_path / "c.png", cell=40)
    img = cv2.imread(str(tmp_path / "c.png"))
    assert img.shape[0] == 90 + 7 * 40 + 10


@pytest.mark.parametrize(("spec", "happy"), [("dark:1", 1.0), ("dark:0.3", 0.0), ("noise:5", 1.0)])
def test_degraded_predictor_sees_the_degraded_views(spec: str, happy: float) -> None:
    """A bright face read as happy reads as sad once under-exposed; the views reach the model degraded."""
    person = np.full((2, 16, 16, 3), 230, np.uint8)
    probs, _ = degraded(_brightness_predictor, parse_degradation(spec))(person, person.copy())
    assert probs[:, 3].tolist() == [happy, happy]


def test_degraded_noise_follows_the_samples_not_the_batches() -> None:
    """The same views get the same noise in one batch of 6 or in batches of 4 and 2: reports do not
    depend on --batch-size; a new wrapper starts the draws again."""
    views = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    seen: list[np.ndarray] = []

    def spy(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(person.copy())
        return np.zeros((len(person), 7)), np.zeros((len(person), 2))

    noise = parse_degradation("noise:5")
    degraded(spy, noise)(views, views)
    whole = seen.pop()
    in_parts = degraded(spy, noise)
    in_parts(views[:4], views[:4])
    in_parts(views[4:], views[4:])
    np.testing.assert_array_equal(np.concatenate(seen), whole)
    assert np.abs(whole.astype(int) - views).mean() > 2  # the model saw noisy views
