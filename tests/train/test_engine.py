"""Shared training wiring: view (un)normalisation, batches → inputs and the seeded runtime."""

from __future__ import annotations

import torch

from train.config import AugmentConfig
from train.engine import Runtime, normalise, seeded_runtime, to_inputs, unnormalise


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


def test_to_inputs_puts_augmented_views_on_the_runtime_device() -> None:
    # The meta device stands in for CUDA (it refuses ops mixing its tensors with non-scalar CPU
    # ones); the augmentation generator stays a CPU one, as the training loop makes it.
    batch = {k: torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8) for k in ("person", "scene")}
    rt = Runtime(torch.device("meta"))
    gen = torch.Generator().manual_seed(0)
    person, scene = to_inputs(batch, rt, AugmentConfig(grayscale=0.5, erase=1.0), gen)
    assert person.device == scene.device == rt.device
    assert person.is_contiguous(memory_format=torch.channels_last)
