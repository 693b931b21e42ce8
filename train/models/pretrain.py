"""Masked-modelling + semantic-guidance pretraining head for the dual-view CNN (UniEmoX on a CNN).

Masked image modelling on a convolutional encoder, SparK-style (Tian et al., ICLR 2023): the scene
view is split into 16×16 patches, a random subset is masked, and the keep-mask is re-applied after
every encoder block (``DualViewNet.feature_maps``), so masked regions stay empty and their pixels
never reach a visible position. A light decoder densifies the stride-16 map (masked cells get a
learned mask token), mixes in the upsampled stride-32 map and predicts each patch's 16×16×3 pixels;
the loss counts masked patches only. ViTs drop masked tokens; a CNN cannot, hence the re-masking.

The fused person+scene feature is projected into the teacher's embedding space for the semantic
losses (L1, L2). The released UniEmoX code feeds the person branch the whole image and slices the
CLS token out of the decoder output; here the person view is the person crop and the decoder
predicts only patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.models.dual_view import DualViewNet, _resize_mask

PATCH = 16
STRIDE16_CHANNELS = 96


def random_keep_mask(n: int, grid: int, ratio: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """(N, 1, grid, grid) float keep-mask with exactly ``round(ratio·grid²)`` masked cells per sample.

    Raises:
        ValueError: ``ratio`` outside [0, 1) (at least one patch must stay visible).
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio {ratio} outside [0, 1)")
    cells = grid * grid
    n_mask = min(cells - 1, round(ratio * cells))
    order = torch.rand(n, cells, generator=gen).argsort(dim=1)
    keep = torch.ones(n, cells)
    keep.scatter_(1, order[:, :n_mask], 0.0)
    return keep.view(n, 1, grid, grid)


def patchify(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """(N, 3, S, S) → (N, (S/p)², p·p·3), patches in row-major order."""
    n, c, s, _ = x.shape
    g = s // patch
    return x.reshape(n, c, g, patch, g, patch).permute(0, 2, 4, 3, 5, 1).reshape(n, g * g, patch * patch * c)


class PretrainModel(nn.Module):
    """Wraps a ``DualViewNet`` with a masked-patch decoder and a projection into the teacher space.

    Args:
        net: The dual-view network being pretrained (its weights are what fine-tuning starts from).
        teacher_dim: Dimension of the teacher embedding (0 = no projection, no semantic losses).
        decoder_dim: Width of the light decoder.
    """

    def __init__(self, net: DualViewNet, teacher_dim: int, decoder_dim: int = 128) -> None:
        super().__init__()
        self.net = net
        self.dec_top = nn.Conv2d(1280, decoder_dim, 1)
        self.dec_skip = nn.Conv2d(STRIDE16_CHANNELS, decoder_dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(decoder_dim, decoder_dim, 3, padding=1),
            nn.BatchNorm2d(decoder_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_dim, PATCH * PATCH * 3, 1),
        )
        self.proj = nn.Linear(net.fusion_dim, teacher_dim) if teacher_dim else None

    def forward(
        self, person: torch.Tensor, scene: torch.Tensor, keep: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One pretraining pass.

        Args:
            person: (N, 3, Sp, Sp) normalised person views (not masked).
            scene: (N, 3, Ss, Ss) normalised scene views; Ss a multiple of 32.
            keep: (N, 1, Ss/16, Ss/16) keep-mask of the scene view.

        Returns:
            ``pred`` (N, P, 768) patch pixels, ``target`` (N, P, 768) true patches, ``keep`` (N, P),
            and ``student`` (N, D) projected fused feature when a projection exists.
        """
        person_maps, scene_maps = self.net.feature_maps(person, scene, keep)
        s16, s32 = scene_maps[3], scene_maps[4]
        k16 = _resize_mask(keep, s16.shape[-1])
        h = self.dec_skip(s16) + F.interpolate(self.dec_top(s32), size=s16.shape[-2:], mode="nearest")
        h = h * k16 + self.mask_token * (1 - k16)
        pred = self.decoder(h).flatten(2).transpose(1, 2)
        out = {"pred": pred, "target": patchify(scene), "keep": keep.flatten(1)}
        if self.proj is not None:
            k32 = _resize_mask(keep, s32.shape[-1])
            b = (s32 * k32).sum(dim=(2, 3)) / k32.sum(dim=(2, 3)).clamp(min=1)
            a = person_maps[-1].mean(dim=(2, 3))
            out["student"] = self.proj(self.net.fuse_features(a, b))
        return out
