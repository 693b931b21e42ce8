"""Losses: soft cross-entropy, valence/arousal, UniEmoX L1/L2/L3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.losses import (
    embedding_loss,
    masked_patch_mse,
    similarity_profile_loss,
    soft_cross_entropy,
    va_loss,
)


def test_soft_ce_equals_ce_on_one_hot_and_ignores_unmasked_rows() -> None:
    logits = torch.randn(4, 7)
    y = torch.tensor([0, 3, 6, 2])
    mask = torch.tensor([True, True, True, False])
    got = soft_cross_entropy(logits, F.one_hot(y, 7).float(), mask)
    assert torch.allclose(got, F.cross_entropy(logits[:3], y[:3]))


def test_soft_ce_no_rows_is_zero_with_grad() -> None:
    logits = torch.randn(2, 7, requires_grad=True)
    loss = soft_cross_entropy(logits, torch.zeros(2, 7), torch.zeros(2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_ce_smoothing_matches_torch(smoothing: float) -> None:
    logits, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    got = soft_cross_entropy(logits, F.one_hot(y, 7).float(), torch.ones(5, dtype=torch.bool), smoothing)
    assert torch.allclose(got, F.cross_entropy(logits, y, label_smoothing=smoothing), atol=1e-6)


@pytest.mark.parametrize("weights,expected_zero", [([0.0, 0.0], True), ([1.0, 0.0], False)])
def test_va_loss_weights(weights: list[float], expected_zero: bool) -> None:
    pred = torch.tensor([[0.5, 0.5], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    loss = va_loss(pred, target, torch.tensor(weights))
    assert (loss.item() == 0) == expected_zero


def test_embedding_and_profile_losses() -> None:
    a = torch.randn(6, 16)
    texts = torch.randn(10, 16)
    assert embedding_loss(a, 3 * a).abs().item() < 1e-6
    assert similarity_profile_loss(a, 2 * a, texts).abs().item() < 1e-6
    assert embedding_loss(a, -a).item() == pytest.approx(2.0)
    assert similarity_profile_loss(a, torch.randn(6, 16), texts).item() > 0


def test_masked_mse_counts_only_masked_patches() -> None:
    target = torch.randn(2, 4, 12)
    pred = target.clone()
    keep = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    pred[0, 0] += 100  # a visible patch: no effect
    assert masked_patch_mse(pred, target, keep, norm_pix=False).item() == 0
    pred[0, 2] += 1
    assert masked_patch_mse(pred, target, keep, norm_pix=False).item() == pytest.approx(1 / 3)
    assert masked_patch_mse(pred, target, torch.ones(2, 4)).item() == 0
