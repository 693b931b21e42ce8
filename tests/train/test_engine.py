"""Shared training wiring: view (un)normalisation and the seeded runtime."""

from __future__ import annotations

import torch

from train.engine import normalise, seeded_runtime, unnormalise


def test_unnormalise_inverts_normalise() -> None:
    x = torch.rand(2, 3, 8, 8)
    back = unnormalise(normalise(x))
    assert torch.allclose(back, x, atol=1e-6) and back.is_contiguous()


def test_seeded_runtime_seeds_torch() -> None:
    with seeded_runtime(threads=1, seed=5) as rt:
        first = torch.rand(3)
    assert rt.main and rt.world == 1
    with seeded_runtime(threads=1, seed=5):
        assert torch.equal(torch.rand(3), first)
