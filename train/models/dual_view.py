"""The dual-view emotion network: one shared encoder for the person and scene views, fused.

Layout (UniEmoX's scene–person interaction, on a CNN):

    person (N,3,Sp,Sp) ─┐                       ┌─ LN_p ─┐
                        ├─ shared MobileNetV2 ──┤        + ─ Linear ─ ELU ─┬─ Linear → logits (N,7)
    scene  (N,3,Ss,Ss) ─┘  (+ view embedding)   └─ LN_s ─┘                 └─ Linear ─ tanh → VA (N,2)

The view (branch) embedding is a learned per-channel offset added after the stem, so the shared
encoder knows from its first block which view it is looking at; the per-branch LayerNorms then put
both pooled features on one scale before they are summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.models.mobilenetv2 import FEATURE_DIM, STAGE_ENDS, load_imagenet_features, mobilenet_v2_features

PERSON, SCENE = 0, 1
STEM_CHANNELS = 32


class DualViewNet(nn.Module):
    """Shared-encoder dual-view classifier with valence/arousal head.

    Args:
        num_classes: Logit count (7 for the Affectline class set).
        fusion_dim: Width of the fused feature (also the feature the semantic losses act on).
        dropout: Dropout before the heads.
        pretrained: Initialise the encoder from ImageNet MobileNetV2.
    """

    def __init__(
        self, num_classes: int = 7, fusion_dim: int = 512, dropout: float = 0.2, pretrained: bool = True
    ) -> None:
        super().__init__()
        self.features = mobilenet_v2_features()
        if pretrained:
            load_imagenet_features(self.features)
        self.view_embed = nn.Parameter(torch.zeros(2, STEM_CHANNELS))
        self.norm_person = nn.LayerNorm(FEATURE_DIM)
        self.norm_scene = nn.LayerNorm(FEATURE_DIM)
        self.fuse = nn.Linear(FEATURE_DIM, fusion_dim)
        self.dropout = nn.Dropout(dropout)
        self.cls_head = nn.Linear(fusion_dim, num_classes)
        self.va_head = nn.Linear(fusion_dim, 2)
        self.fusion_dim = fusion_dim

    def feature_maps(
        self, person: torch.Tensor, scene: torch.Tensor, scene_keep: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Encoder feature maps of both views at the end of each stride stage (strides 2 … 32).

        Views of equal size go through the encoder as one batch of 2N: BatchNorm then normalises
        with statistics of both views in training exactly as its running statistics do at
        inference (two separate passes would train each view on its own statistics but evaluate
        it on their mixture; on FER+ that cost ~15 points of validation accuracy).

        Args:
            person: (N, 3, Sp, Sp) normalised person views.
            scene: (N, 3, Ss, Ss) normalised scene views.
            scene_keep: Optional (N, 1, g, g) keep-mask (1 = visible) of the scene view on a coarse
                patch grid. It is re-applied (resized) after every block, so masked regions stay
                empty throughout the network (SparK-style sparse convolution on a dense CNN).

        Returns:
            Person maps and scene maps; the last are (N, 1280, S/32, S/32).
        """
        if person.shape[-1] != scene.shape[-1]:
            return self._maps(person, PERSON, None), self._maps(scene, SCENE, scene_keep)
        mask = None if scene_keep is None else torch.cat([torch.ones_like(scene_keep), scene_keep])
        maps = [m.reshape(2, -1, *m.shape[1:]) for m in self._maps(torch.cat([person, scene]), None, mask)]
        return [m[0] for m in maps], [m[1] for m in maps]

    def _maps(self, x: torch.Tensor, view: int | None, mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Stage outputs for one view (``view`` index) or a [person; scene] pair batch (``view`` None)."""
        outs = []
        h = x if mask is None else x * _resize_mask(mask, x.shape[-1])
        for i, block in enumerate(self.features):
            h = block(h)
            if i == 0:
                h = self._add_view_embedding(h, view)
            if mask is not None:
                h = h * _resize_mask(mask, h.shape[-1])
            if i in STAGE_ENDS:
                outs.append(h)
        return outs

    def _add_view_embedding(self, h: torch.Tensor, view: int | None) -> torch.Tensor:
        c = h.shape[1]
        if view is not None:
            return h + self.view_embed[view].view(1, c, 1, 1)
        pair = h.reshape(2, -1, *h.shape[1:]) + self.view_embed.view(2, 1, c, 1, 1)
        return pair.reshape(h.shape)

    def pooled(self, person: torch.Tensor, scene: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1280) global-average-pooled encoder features of the person and scene views."""
        p, s = self.feature_maps(person, scene)
        return p[-1].mean(dim=(2, 3)), s[-1].mean(dim=(2, 3))

    def fuse_features(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scene–person interaction ``ELU(Linear(LN_p(a) + LN_s(b)))``: (N, 1280) × 2 → (N, fusion_dim)."""
        return F.elu(self.fuse(self.norm_person(a) + self.norm_scene(b)))

    def fused(self, person: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """(N, 3, Sp, Sp), (N, 3, Ss, Ss) → (N, fusion_dim) fused feature."""
        return self.fuse_features(*self.pooled(person, scene))

    def heads(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) fused → logits (N, C), valence/arousal (N, 2) in [-1, 1]."""
        z = self.dropout(fused)
        return self.cls_head(z), torch.tanh(self.va_head(z))

    def forward(self, person: torch.Tensor, scene: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, C) and valence/arousal (N, 2) for normalised RGB views."""
        return self.heads(self.fused(person, scene))


def _resize_mask(mask: torch.Tensor, side: int) -> torch.Tensor:
    """(N, 1, g, g) keep-mask → (N, 1, side, side); a coarse cell is kept if any fine patch is."""
    g = mask.shape[-1]
    if side == g:
        return mask
    if side > g:
        return F.interpolate(mask, size=(side, side), mode="nearest")
    return F.adaptive_max_pool2d(mask, side)
