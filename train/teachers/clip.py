"""CLIP teacher through ``open_clip`` from a local checkpoint (no weights can be downloaded here).

``open_clip_torch`` is optional: on this CPU-only machine its install pulls a CUDA torch and
torchvision (which does not import beside torch 2.13 CPU), so it is not installed; this teacher
then raises a clear error and the offline teacher (``train.teachers.offline``) is used instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from train.teachers.prior import load_prior

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipTeacher(nn.Module):
    """Frozen CLIP image tower → (N, D) embeddings; text tower encodes the emotion prior once.

    Args:
        model_name: open_clip architecture name (e.g. ``ViT-B-32``).
        checkpoint: Local weights file for that architecture, or ``None`` for random initialisation
            (tests only: the code path is real, the semantics are not).
        image_size: Side the views are resized to (the tower's input size).

    Raises:
        ImportError: ``open_clip`` is not installed (message says how and why it may not be).
        FileNotFoundError: ``checkpoint`` does not exist.
    """

    texts: torch.Tensor

    def __init__(self, model_name: str, checkpoint: Path | str | None, image_size: int = 224) -> None:
        super().__init__()
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError(
                "CLIP teacher needs `pip install open_clip_torch` (it pulls torchvision; on a CPU "
                "torch 2.13 machine use the offline teacher)"
            ) from exc
        if checkpoint is not None and not Path(checkpoint).exists():
            raise FileNotFoundError(f"CLIP checkpoint {checkpoint} does not exist")
        model = open_clip.create_model(model_name, pretrained=str(checkpoint) if checkpoint else None)
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        tokenizer = open_clip.get_tokenizer(model_name)
        with torch.no_grad():
            texts = self.model.encode_text(tokenizer(list(load_prior().texts)))
        self.register_buffer("texts", F.normalize(texts.float(), dim=1))

    @property
    def dim(self) -> int:
        return int(self.texts.shape[1])

    @torch.no_grad()
    def forward(self, person: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) RGB in [0, 1] views → (N, D) normalised embeddings of the scene view."""
        x = F.interpolate(scene, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return F.normalize(self.model.encode_image((x.clamp(0, 1) - mean) / std).float(), dim=1)
