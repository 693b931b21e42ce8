"""Shared training wiring: view (un)normalisation, batches → inputs and the seeded runtime."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from train.config import AugmentConfig
from train.engine import Runtime, config_changes, normalise, seeded_runtime, to_inputs, unnormalise


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


@pytest.mark.parametrize(
    ("saved", "current", "changes"),
    [
        ({}, {"lr": 1e-3}, []),  # written before the setting existed
        ({"lr": 1e-3}, {"lr": 1e-3}, []),
        ({"lr": 1e-3}, {"lr": 2e-3}, ["lr: 0.001 -> 0.002"]),
        ({"threads": 1}, {"threads": 2}, []),  # where it runs, not what it trains
        # A run from before augment.degrade resumes; a changed strength does not.
        ({"augment": {"flip": 0.5}}, {"augment": {"flip": 0.5, "degrade": 0.0}}, []),
        (
            {"augment": {"flip": 0.5}},
            {"augment": {"flip": 0.0, "degrade": 0.0}},
            ["augment.flip: 0.5 -> 0.0"],
        ),
        (
            {"augment": {"flip": 0.5, "blur": 1.0}},
            {"augment": {"flip": 0.5}},
            ["augment.blur: 1.0 -> (absent)"],
        ),
        (
            {"augment": {"flip": 0.5, "degrade": 0.0}},
            {"augment": {"flip": 0.5, "degrade": 0.3}},
            ["augment.degrade: 0.0 -> 0.3"],
        ),
        # Other mappings compare whole: a source weight the saved run lacked is a change.
        (
            {"source_weights": {"ferplus": 1.0}},
            {"source_weights": {"ferplus": 1.0, "expw": 1.5}},
            ["source_weights: "],
        ),
    ],
)
def test_config_changes_name_what_a_resume_would_change(
    saved: dict[str, Any], current: dict[str, Any], changes: list[str]
) -> None:
    got = config_changes(saved, current)
    assert len(got) == len(changes) and all(g.startswith(c) for g, c in zip(got, changes, strict=True))
