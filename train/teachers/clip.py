"""CLIP teacher through ``open_clip`` from local weights (no weights can be downloaded here).

The weights are named in one of open_clip's two offline ways:

- ``model_name`` a built-in open_clip architecture (``ViT-B-32``) and ``checkpoint`` a local weights file for
  it (``.pt`` / ``.bin`` / ``.safetensors``; an open_clip or OpenAI state dict);
- ``model_name`` ``local-dir:DIR``: an open_clip model folder (``open_clip_config.json`` and a weights file,
  the layout of open_clip's model repositories on the Hugging Face Hub); ``checkpoint`` stays empty.

Input size, mean/std and interpolation come from the model's own preprocessing config, so a SigLIP-style
model is fed as it was trained. ``HF_HUB_OFFLINE=1`` is set before open_clip is imported: a config whose
tokenizer or text tower names a Hugging Face model then fails instead of fetching it.

``open_clip_torch`` and ``torchvision`` are in the ``train`` extra. PyPI's ``torchvision`` is a CUDA build
that cannot load its compiled ops beside the CPU torch wheel; ``torchvision_compat`` lets its pure-Python
part, all open_clip needs, import anyway.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from train.teachers.prior import load_prior
from train.teachers.torchvision_compat import ensure_torchvision_importable

if TYPE_CHECKING:
    from typing_extensions import Self

LOCAL_DIR = "local-dir:"
# What open_clip looks for in a model folder (a bare .pt is not among them).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


def import_open_clip() -> ModuleType:
    """``open_clip``, imported offline.

    Raises:
        ImportError: ``open_clip_torch`` is not installed.
    """
    # Read by huggingface_hub when it is imported (open_clip imports it): set first.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_torchvision_importable()
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError(
            "CLIP teacher needs open_clip_torch: `pip install -c constraints.txt -e .[train]` "
            "(or scripts/setup.sh train)"
        ) from exc
    return open_clip


def resolve_weights(model_name: str, checkpoint: Path | str | None) -> str | None:
    """The ``pretrained`` argument of ``open_clip.create_model`` for local weights.

    Args:
        model_name: A built-in architecture name, or ``local-dir:DIR``.
        checkpoint: Weights file for a built-in name; empty for ``local-dir:``.

    Returns:
        The checkpoint path, or None for ``local-dir:`` (open_clip finds the weights in the folder).

    Raises:
        ValueError: no weights are named, or both a folder and a file are.
        FileNotFoundError: the file, the folder's config or the folder's weights do not exist.
    """
    if model_name.startswith(LOCAL_DIR):
        if checkpoint:
            raise ValueError(f"CLIP weights given twice: {model_name} holds them; drop the checkpoint")
        folder = Path(model_name[len(LOCAL_DIR) :])
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"CLIP model folder {folder} has no open_clip_config.json")
        if not [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]:
            raise FileNotFoundError(f"CLIP model folder {folder} has no weights file ({WEIGHT_SUFFIXES})")
        return None
    if not checkpoint:
        # A randomly initialised teacher would silently teach noise.
        raise ValueError(
            f"CLIP teacher {model_name!r} needs local weights: --clip-checkpoint FILE, or "
            "--clip-model local-dir:DIR (open_clip_config.json + weights); nothing is downloaded"
        )
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"CLIP checkpoint {checkpoint} does not exist")
    return str(checkpoint)


class ClipTeacher(nn.Module):
    """Frozen CLIP: the image tower embeds the scene view, the text tower the emotion prior once.

    Args:
        model_name: open_clip architecture name (``ViT-B-32``) or ``local-dir:DIR``.
        checkpoint: Local weights file for a built-in architecture (see ``resolve_weights``).

    Raises:
        ImportError: ``open_clip_torch`` is not installed.
        ValueError, FileNotFoundError: the weights are not named or not there (``resolve_weights``).
    """

    texts: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model_name: str, checkpoint: Path | str | None = None) -> None:
        super().__init__()
        open_clip = import_open_clip()
        pretrained = resolve_weights(model_name, checkpoint)
        model = open_clip.create_model(model_name, pretrained=pretrained, require_pretrained=True)
        self.model = model.eval().requires_grad_(False)
        pre: dict[str, Any] = open_clip.get_model_preprocess_cfg(model)
        size = pre["size"]
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        # open_clip's 'random' (a training augmentation) falls back to its eval-time default.
        self.interpolation = "bilinear" if pre.get("interpolation") == "bilinear" else "bicubic"
        self.register_buffer("mean", torch.tensor(pre["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre["std"], dtype=torch.float32).view(1, 3, 1, 1))
        tokenizer = open_clip.get_tokenizer(model_name)
        with torch.no_grad():
            texts = self.model.encode_text(tokenizer(list(load_prior().texts)))
        self.register_buffer("texts", F.normalize(texts.float(), dim=1))

    def train(self, mode: bool = True) -> Self:
        """Stay in eval mode whatever is asked: a frozen teacher has no training behaviour."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, person: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """Teacher embedding of a pair of views.

        Args:
            person: (N, 3, Sp, Sp) RGB in [0, 1]; unused (CLIP sees the whole scene, as in UniEmoX).
            scene: (N, 3, Ss, Ss) RGB in [0, 1].

        Returns:
            (N, D) L2-normalised image embeddings.
        """
        x = F.interpolate(scene, size=self.size, mode=self.interpolation, align_corners=False, antialias=True)
        # Bicubic overshoots; open_clip's PIL resize clips to the pixel range.
        x = (x.clamp(0, 1) - self.mean) / self.std
        return F.normalize(self.model.encode_image(x).float(), dim=1)
