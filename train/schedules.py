"""Schedules as small pure functions of the step (no optimizer state, trivially resumable)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, base: float, final: float = 0.0) -> float:
    """Linear warm-up from ~0 to ``base`` over ``warmup`` steps, then cosine decay to ``final`` at ``total``.

    Raises:
        ValueError: ``total`` < 1, ``warmup`` outside [0, total], or negative rates.
    """
    if total < 1 or not 0 <= warmup <= total or base < 0 or final < 0:
        raise ValueError(
            f"warmup_cosine: need total>=1, 0<=warmup<=total, rates>=0; got total={total}, "
            f"warmup={warmup}, base={base}, final={final}"
        )
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * progress))


def budget_cosine(step: int, progress: float, warmup: int, base: float, final: float = 0.0) -> float:
    """Warm-up by steps, then cosine decay over a time budget's elapsed fraction ``progress`` in [0, 1].

    A time-based schedule adapts to the throughput actually obtained (the CPU is shared), so the
    rate anneals exactly when the budget runs out, however fast the steps turn out to be.
    """
    if warmup < 0 or base < 0 or final < 0:
        raise ValueError(
            f"budget_cosine: need warmup>=0 and rates>=0; got warmup={warmup}, base={base}, final={final}"
        )
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, max(0.0, progress))
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * p))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay after ``step`` updates: ``(1 + step) / (10 + step)``, capped at ``decay``.

    The warm-up keeps the average from being dominated by the initial weights for the first
    ~1 / (1 − decay) steps (the schedule of TensorFlow's ``ExponentialMovingAverage(num_updates)``).

    Raises:
        ValueError: ``decay`` outside [0, 1) or a negative step.
    """
    if not 0 <= decay < 1 or step < 0:
        raise ValueError(f"ema_decay_at: need 0 <= decay < 1 and step >= 0; got decay={decay}, step={step}")
    return min(decay, (1 + step) / (10 + step))
