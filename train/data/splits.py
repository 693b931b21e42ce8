"""Deterministic held-out splits and class-balanced sampling weights."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from train.data.records import CLASSES, Sample


def split_by_image(
    samples: list[Sample], test_fraction: float, seed: int, salt: str = ""
) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, test) so that all faces of one image land on the same side.

    The side is a hash of (seed, salt, image file name), so the split does not depend on list order
    and is the same on every machine. A different ``salt`` draws an independent split (the validation
    part is carved out of the training part this way, leaving the test part untouched).

    Raises:
        ValueError: ``test_fraction`` outside [0, 1).
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} outside [0, 1)")

    def in_test(s: Sample) -> bool:
        key = f"{seed}:{salt}{Path(s.image).parent.name}/{Path(s.image).name}"
        digest = hashlib.sha256(key.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction

    train: list[Sample] = []
    test: list[Sample] = []
    for s in samples:
        (test if in_test(s) else train).append(s)
    return train, test


def balanced_weights(samples: list[Sample], power: float, source_weights: dict[str, float]) -> np.ndarray:
    """Per-sample draw weights: (class frequency within its source)^-power × source weight.

    ``power`` 0 keeps the natural distribution, 1 fully balances classes; in between trades top-1
    accuracy (dominated by frequent classes) against recall of rare ones such as disgust.
    """
    w = np.zeros(len(samples), np.float64)
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_source.setdefault(s.source, []).append(i)
    for source, idx in by_source.items():
        labels = np.array([_hard_label(samples[i]) for i in idx])
        counts = np.bincount(labels[labels >= 0], minlength=len(CLASSES)).astype(np.float64)
        freq = np.where(labels >= 0, counts[np.maximum(labels, 0)], len(idx)) / len(idx)
        per = freq ** (-power)
        # Keep each source's total share proportional to its size × weight.
        w[idx] = per / per.sum() * len(idx) * source_weights.get(source, 1.0)
    return w


def _hard_label(s: Sample) -> int:
    if s.dist is not None:
        return int(np.argmax(s.dist))
    return s.label


class WeightedDistributedSampler(Sampler[int]):
    """Weighted sampling with replacement, split across DDP ranks, resumable mid-epoch.

    Every rank draws the same global sequence from a generator seeded by (seed, epoch) and keeps
    its own stride of it, so ranks see disjoint draws and a resumed run sees the same order.

    Args:
        weights: (N,) non-negative draw weights.
        num_samples: Global draws per epoch.
        rank: This process's rank.
        world: Number of processes.
        seed: Base seed.
    """

    def __init__(
        self, weights: np.ndarray, num_samples: int, rank: int = 0, world: int = 1, seed: int = 0
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = num_samples - num_samples % world
        self.rank, self.world, self.seed = rank, world, seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's draw order; skip the first ``start`` draws of this rank (resume)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=gen)
        mine = order[self.rank :: self.world].tolist()
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return self.num_samples // self.world - self.start
