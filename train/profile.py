"""Model cost: parameters, FLOPs per person (both views) and training throughput on this machine."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from train.engine import channels_last
from train.models import build_model, view_sizes


def model_cost(name: str) -> dict[str, Any]:
    """Parameters and forward FLOPs (2 per multiply-add) for one person, both views, batch 1."""
    sp, ss = view_sizes(name)
    model = build_model(name, pretrained=False).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, sp, sp), torch.randn(1, 3, ss, ss))
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_person": counter.get_total_flops(),
    }


def train_throughput(
    name: str,
    batch: int = 64,
    steps: int = 8,
    threads: int = 2,
    warmup: int = 2,
    use_channels_last: bool = True,
) -> float:
    """Training pairs/s (forward + backward + AdamW step) on random inputs.

    Raises:
        ValueError: ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: must be >= 1")
    torch.set_num_threads(threads)
    sp, ss = view_sizes(name)
    model = build_model(name, pretrained=False).train()
    fmt = torch.channels_last if use_channels_last else torch.contiguous_format
    if use_channels_last:
        channels_last(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    person = torch.randn(batch, 3, sp, sp).contiguous(memory_format=fmt)
    scene = torch.randn(batch, 3, ss, ss).contiguous(memory_format=fmt)
    target = torch.randint(0, 7, (batch,))
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        logits, va = model(person, scene)
        loss = F.cross_entropy(logits, target) + va.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)
