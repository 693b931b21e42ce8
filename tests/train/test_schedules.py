"""Schedules are pure functions of the step / budget progress."""

from __future__ import annotations

import pytest

from train.schedules import budget_cosine, ema_decay_at, warmup_cosine


@pytest.mark.parametrize(
    "step,expected",
    [(0, 0.1), (9, 1.0), (10, 1.0), (55, 0.5), (100, 0.0), (1000, 0.0)],
)
def test_warmup_cosine(step: int, expected: float) -> None:
    assert warmup_cosine(step, total=100, warmup=10, base=1.0) == pytest.approx(expected)


@pytest.mark.parametrize("total,warmup,base", [(0, 0, 1.0), (10, 11, 1.0), (10, 2, -1.0)])
def test_warmup_cosine_bad_args(total: int, warmup: int, base: float) -> None:
    with pytest.raises(ValueError, match="warmup_cosine"):
        warmup_cosine(0, total, warmup, base)


@pytest.mark.parametrize(
    "step,progress,expected",
    [(0, 0.9, 0.25), (3, 0.0, 1.0), (100, 0.0, 1.0), (100, 0.5, 0.55), (100, 1.0, 0.1), (100, 2.0, 0.1)],
)
def test_budget_cosine(step: int, progress: float, expected: float) -> None:
    assert budget_cosine(step, progress, warmup=4, base=1.0, final=0.1) == pytest.approx(expected)


@pytest.mark.parametrize(
    "warmup,base,final,named",
    [(-1, 1.0, 0.0, "warmup=-1"), (0, -1.0, 0.0, "base=-1.0"), (0, 1.0, -0.1, "final=-0.1")],
)
def test_budget_cosine_names_the_bad_argument(warmup: int, base: float, final: float, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        budget_cosine(0, 0.0, warmup, base, final)


@pytest.mark.parametrize(
    "step,decay,expected",
    [(0, 0.0, 0.0), (0, 0.999, 0.1), (10, 0.999, 0.55), (990, 0.999, 0.991), (10**6, 0.999, 0.999)],
)
def test_ema_decay_at(step: int, decay: float, expected: float) -> None:
    assert ema_decay_at(step, decay) == pytest.approx(expected)


@pytest.mark.parametrize("step,decay", [(0, 1.0), (0, -0.1), (-1, 0.9)])
def test_ema_decay_at_bad_args(step: int, decay: float) -> None:
    with pytest.raises(ValueError, match="ema_decay_at"):
        ema_decay_at(step, decay)
