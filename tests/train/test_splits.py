"""Held-out splits, class-balanced weights and the resumable weighted sampler."""

from __future__ import annotations

import numpy as np
import pytest

from train.data.records import Sample
from train.data.splits import WeightedDistributedSampler, balanced_weights, split_by_image


def _samples(n: int) -> list[Sample]:
    return [Sample(f"/d/img{i // 2}.jpg", (0, 0, 1, 1), i % 7, source="expw") for i in range(n)]


def test_split_keeps_faces_of_one_image_together_and_is_order_independent() -> None:
    s = _samples(400)
    train, test = split_by_image(s, 0.25, seed=3)
    assert not {x.image for x in train} & {x.image for x in test}
    train2, test2 = split_by_image(list(reversed(s)), 0.25, seed=3)
    assert {x.image for x in test} == {x.image for x in test2}
    assert split_by_image(s, 0.25, seed=4)[1] != test


def test_salt_draws_an_independent_split() -> None:
    s = _samples(2000)
    plain, salted = split_by_image(s, 0.5, seed=0)[1], split_by_image(s, 0.5, seed=0, salt="val:")[1]
    overlap = len({x.image for x in plain} & {x.image for x in salted}) / len({x.image for x in plain})
    assert 0.4 < overlap < 0.6  # independent halves share about half their images
    assert split_by_image(s, 0.5, seed=0, salt="")[1] == plain


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_split_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_image(_samples(4), fraction, 0)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_balanced_weights(power: float) -> None:
    samples = [Sample("a", label=0, source="x")] * 90 + [Sample("b", label=1, source="x")] * 10
    w = balanced_weights(samples, power, {"x": 2.0})
    share_rare = w[90:].sum() / w.sum()
    expected = {0.0: 0.1, 0.5: 10**0.5 / (10**0.5 + 90**0.5), 1.0: 0.5}[power]
    assert share_rare == pytest.approx(expected, rel=1e-6)
    assert w.sum() == pytest.approx(200)


def test_sampler_resume_and_ranks() -> None:
    w = np.ones(50)
    full = list(WeightedDistributedSampler(w, 40, seed=1))
    s = WeightedDistributedSampler(w, 40, seed=1)
    s.set_epoch(0, start=15)
    assert list(s) == full[15:] and len(s) == 25
    r0, r1 = WeightedDistributedSampler(w, 40, 0, 2, 1), WeightedDistributedSampler(w, 40, 1, 2, 1)
    assert sorted(list(r0) + list(r1)) == sorted(full)
    s.set_epoch(1)
    assert list(s) != full
