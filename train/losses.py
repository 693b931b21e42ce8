"""Losses of fine-tuning (soft-target classification, valence/arousal) and pretraining (UniEmoX L1–L3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy against soft targets, averaged over rows where ``mask`` is set.

    Args:
        logits: (N, C).
        target: (N, C) distributions (rows sum to 1 where mask is set).
        mask: (N,) bool, rows that have a class target.
        smoothing: Mix the target with the uniform distribution by this amount.

    Returns:
        Scalar loss (0 when no row is masked in).
    """
    if not bool(mask.any()):
        return logits.sum() * 0
    t = target[mask]
    t = t * (1 - smoothing) + smoothing / t.shape[1]
    logp = F.log_softmax(logits[mask], dim=1)
    return -(t * logp).sum(dim=1).mean()


def va_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted smooth-L1 between (N, 2) predicted and target valence/arousal; (N,) weights (0 = none)."""
    if not bool((weight > 0).any()):
        return pred.sum() * 0
    per = F.smooth_l1_loss(pred, target, reduction="none", beta=0.25).sum(dim=1)
    return (per * weight).sum() / weight.sum()


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """UniEmoX L2: mean ``1 - cos(student, teacher)`` over (N, D) feature pairs."""
    return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


def similarity_profile_loss(
    student: torch.Tensor, teacher: torch.Tensor, texts: torch.Tensor
) -> torch.Tensor:
    """UniEmoX L1: match the student's similarity profile over text embeddings to the teacher's.

    Args:
        student: (N, D) student image embeddings (projected into the text space).
        teacher: (N, D) teacher image embeddings.
        texts: (T, D) text embeddings: the offline teacher's bank (the 7 emotion descriptions and
            the 1,000 ImageNet class names) or, with CLIP, the 7 emotion descriptions of the prior.

    Returns:
        Mean ``1 - cos(student·Tᵀ, teacher·Tᵀ)``.
    """
    t = F.normalize(texts, dim=1)
    return embedding_loss(F.normalize(student, dim=1) @ t.T, F.normalize(teacher, dim=1) @ t.T)


def masked_patch_mse(
    pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """UniEmoX L3 (MAE/SparK): MSE on masked patches only.

    Args:
        pred: (N, P, K) predicted pixels per patch (K = patch² × 3).
        target: (N, P, K) true pixels per patch.
        keep: (N, P) 1 = visible, 0 = masked.
        norm_pix: Normalise each target patch to zero mean / unit variance (MAE's choice; sharper
            features than raw-pixel targets).

    Returns:
        Scalar loss over the masked patches (0 when nothing is masked).
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)
    masked = 1 - keep
    return (per_patch * masked).sum() / masked.sum().clamp(min=1)
