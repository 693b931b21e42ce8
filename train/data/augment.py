"""Augmentations: geometric ones act on the crop box (so both views move together and padding is
the same grey the agent uses), photometric ones act on whole batches of uint8 tensors (cheap on CPU).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from edge_agent.views import warp_square
from train.config import AugmentConfig


def jitter_box(box: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Shift and rescale an (4,) x1,y1,x2,y2 anchor box by up to ``cfg.shift``/``cfg.scale`` of its size."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx = (box[0] + box[2]) / 2 + rng.uniform(-cfg.shift, cfg.shift) * w
    cy = (box[1] + box[3]) / 2 + rng.uniform(-cfg.shift, cfg.shift) * h
    s = 1 + rng.uniform(-cfg.scale, cfg.scale)
    return np.array([cx - w * s / 2, cy - h * s / 2, cx + w * s / 2, cy + h * s / 2], np.float32)


def crop_rotated(
    image: np.ndarray, box: np.ndarray, size: int, angle_deg: float, resample: str = "bilinear"
) -> np.ndarray:
    """Like ``edge_agent.views.crop_square`` with an extra rotation about the crop centre.

    Args:
        image: (H, W, C) or (H, W) uint8.
        box: (4,) square box.
        size: Output side.
        angle_deg: Counter-clockwise rotation.
        resample: One of ``edge_agent.views.RESAMPLES``.

    Returns:
        (size, size, C) uint8, grey (114) outside the image.
    """
    x1, y1, x2, _ = (float(v) for v in box)
    s = size / max(x2 - x1, 1e-3)
    crop = np.array([[s, 0, -x1 * s], [0, s, -y1 * s], [0, 0, 1]], np.float32)
    rot = np.vstack([cv2.getRotationMatrix2D((size / 2, size / 2), angle_deg, 1.0), [0, 0, 1]]).astype(
        np.float32
    )
    return warp_square(image, (rot @ crop)[:2], size, resample)


def photometric(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-sample brightness/contrast/saturation jitter, random greyscale and random erasing.

    Args:
        x: (N, 3, S, S) float images in [0, 1].
        cfg: Strengths.
        gen: CPU random generator (seeded per step for reproducibility). The draws are made on
            the CPU and moved to ``x``'s device, so a GPU run draws the same numbers as a CPU run.

    Returns:
        (N, 3, S, S) float in [0, 1], on ``x``'s device.
    """
    n = x.shape[0]

    def factor(strength: float) -> torch.Tensor:
        # Moved: an (N, 1, 1, 1) CPU tensor cannot enter an op with a CUDA tensor (only 0-dim ones can).
        return (1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * strength).to(x.device)

    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = x * factor(cfg.brightness)
    x = (x - grey.mean(dim=(2, 3), keepdim=True)) * factor(cfg.contrast) + grey.mean(dim=(2, 3), keepdim=True)
    g = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (x - g) * factor(cfg.saturation) + g
    to_grey = (torch.rand(n, 1, 1, 1, generator=gen) < cfg.grayscale).float().to(x.device)
    x = x * (1 - to_grey) + g.expand_as(x) * to_grey
    return random_erase(x.clamp(0, 1), cfg.erase, gen)


def random_erase(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Erase one random rectangle (2–25 % of the area, aspect 0.3–3.3) per sample with probability p."""
    n, _, h, w = x.shape
    out = x.clone()
    for i in torch.nonzero(torch.rand(n, generator=gen) < p).flatten().tolist():
        area = h * w * (0.02 + 0.23 * torch.rand(1, generator=gen).item())
        ratio = math.exp(
            math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(1, generator=gen).item()
        )
        eh = min(h, max(1, int(round(math.sqrt(area * ratio)))))
        ew = min(w, max(1, int(round(math.sqrt(area / ratio)))))
        y0 = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
        out[i, :, y0 : y0 + eh, x0 : x0 + ew] = torch.rand(3, 1, 1, generator=gen)
    return out
