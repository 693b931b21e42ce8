"""The dual-view dataset: ``Sample`` records → (person view, scene view, targets) tensors.

Views are cut with ``edge_agent.views`` geometry, so training sees the framing the agent produces:

- samples with a face box (ExpW, manifests): person and scene views around the face exactly as the
  agent cuts them around a detected face (``DEFAULT_PERSON`` / ``DEFAULT_SCENE`` by default);
- tight face crops without context (FER2013/FER+): the face box is taken as the inner 80 % of the
  image (what a face detector finds on such crops), so the person view (scale 1.25) is the whole
  image; the scene view uses the same scene geometry, so the face has the size and place it will
  have at deployment and the missing context is the agent's grey padding;
- images without a box (Emotion6, unlabelled frames): both views are the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE, ViewGeometry, crop_square, square_boxes
from train.data.augment import AugmentConfig, crop_rotated, jitter_box
from train.data.degrade import apply as apply_degradation
from train.data.degrade import random_degradation
from train.data.records import CLASSES, DataError, Sample

TIGHT_FACE_MARGIN = 0.1
BOX_TOLERANCE = 0.05


class BadImageError(DataError):
    """An image cannot be decoded or its box lies outside it."""


@dataclass
class ImageStore:
    """Loads images as RGB (or grey) uint8 arrays, caching decoded small images and encoded large ones.

    Small images (≤ ``decode_cache_max_px`` pixels, e.g. 48×48 FER faces) are kept decoded; larger
    ones are kept as their encoded bytes and decoded on use, which costs ~1 ms per 320-px JPEG but
    keeps memory an order of magnitude lower.
    """

    decode_cache_max_px: int = 96 * 96
    _decoded: dict[str, np.ndarray] = field(default_factory=dict)
    _encoded: dict[str, np.ndarray] = field(default_factory=dict)

    def load(self, sample: Sample) -> np.ndarray:
        """(H, W, 3) RGB or (H, W) grey uint8 for a sample.

        Raises:
            BadImageError: unreadable or truncated file (names the file).
        """
        if sample.pixels is not None:
            return sample.pixels
        if sample.image in self._decoded:
            return self._decoded[sample.image]
        data = self._encoded.get(sample.image)
        if data is None:
            try:
                data = np.fromfile(sample.image, np.uint8)
            except OSError as exc:
                raise BadImageError(f"{sample.image}: cannot read ({exc})") from None
        # Not IMREAD_UNCHANGED: that ignores EXIF orientation, and a phone photo's box is drawn on
        # the image as shown. ANYCOLOR|ANYDEPTH keeps grey and 16-bit images as they are.
        img = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH) if data.size else None
        if img is None:
            raise BadImageError(f"{sample.image}: not a decodable image (truncated or wrong format)")
        img = _to_rgb_or_grey(img)
        if img.shape[0] * img.shape[1] <= self.decode_cache_max_px:
            self._decoded[sample.image] = img
        else:
            self._encoded[sample.image] = data
        return img


def _to_rgb_or_grey(img: np.ndarray) -> np.ndarray:
    """A decoded image as uint8 RGB, or grey when it has one channel or three equal ones."""
    if img.dtype == np.uint16:  # 16-bit PNG: a fixed scale, so a dark image stays dark
        img = cv2.convertScaleAbs(img, alpha=1.0 / 257.0)
    elif img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(float(img.max()), 1.0))
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[:, :, 0]
    grey_like = np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 1], img[:, :, 2])
    return img[:, :, 0] if grey_like else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def anchor_box(sample: Sample, image: np.ndarray) -> np.ndarray | None:
    """(4,) face box for a sample, or ``None`` when both views are the whole image.

    A box overshooting the image by at most ``BOX_TOLERANCE`` of its side (rounding in datasets that
    were downscaled after labelling, e.g. ExpW) is clipped to the image.

    Raises:
        BadImageError: the sample's box lies further outside the image.
    """
    h, w = image.shape[:2]
    if sample.box is not None:
        x1, y1, x2, y2 = sample.box
        tol = max(1.0, BOX_TOLERANCE * max(x2 - x1, y2 - y1))
        if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
            raise BadImageError(
                f"{sample.origin or sample.image}: box {sample.box} outside the {w}x{h} image {sample.image}"
            )
        return np.array([max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)], np.float32)
    if sample.tight_face:
        m = TIGHT_FACE_MARGIN
        return np.array([m * w, m * h, (1 - m) * w, (1 - m) * h], np.float32)
    return None


def whole_image_box(image: np.ndarray) -> np.ndarray:
    """Square box centred on the image, side = the longer image side (grey pads the short side)."""
    h, w = image.shape[:2]
    side = max(h, w)
    return np.array([(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2], np.float32)


class DualViewDataset(Dataset):
    """Map-style dataset of dual-view samples.

    Items are dicts: ``person`` (3, Sp, Sp) uint8, ``scene`` (3, Ss, Ss) uint8, ``dist`` (7,) float
    soft target (zeros when unlabelled), ``has_cls`` bool, ``va`` (2,) float, ``va_weight`` float
    (0 = no valence/arousal target), ``label`` int (-1 unknown), ``index`` int. A sample whose image
    cannot be used is returned with ``valid`` False (blank views, no targets) and noted in ``bad`` (in
    this process only; the training loop counts the drops itself, see `BudgetedLoop.usable`).

    Args:
        samples: Records from the readers.
        person: Person-view geometry.
        scene: Scene-view geometry.
        augment: Augmentation settings, or ``None`` for evaluation.
        class_va: (7, 2) circumplex coordinates per class; gives faces a valence/arousal target.
        prior_va_weight: Weight of those derived targets relative to measured ones (Emotion6).
        seed: Base seed for per-item augmentation randomness.
    """

    def __init__(
        self,
        samples: list[Sample],
        person: ViewGeometry = DEFAULT_PERSON,
        scene: ViewGeometry = DEFAULT_SCENE,
        augment: AugmentConfig | None = None,
        class_va: np.ndarray | None = None,
        prior_va_weight: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.person, self.scene = person, scene
        self.augment = augment
        self.class_va = class_va
        self.prior_va_weight = prior_va_weight
        self.seed = seed
        self.epoch = 0
        self.store = ImageStore()
        self.bad: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def views(self, sample: Sample, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Person (Sp, Sp, 3) and scene (Ss, Ss, 3) uint8 RGB views of one sample."""
        image = self.store.load(sample)
        anchor = anchor_box(sample, image)
        if anchor is None:
            boxes = [whole_image_box(image)] * 2
        else:
            if rng is not None and self.augment is not None:
                anchor = jitter_box(anchor, self.augment, rng)
            boxes = [square_boxes(anchor[None], g)[0] for g in (self.person, self.scene)]
        # One angle for both views: they show the same moment, so they move together.
        angle = rng.uniform(-1, 1) * self.augment.rotate_deg if rng is not None and self.augment else 0.0
        out = []
        for box, geo in zip(boxes, (self.person, self.scene), strict=True):
            if rng is None or self.augment is None:
                v = crop_square(image, box, geo.size, geo.resample)
            else:
                v = crop_rotated(image, box, geo.size, angle, geo.resample)
            out.append(np.repeat(v, 3, axis=2) if v.shape[2] == 1 else v)
        # Drawn only when on: a draw would shift every later one, and old recipes must replay as they ran.
        aug = self.augment
        if rng is not None and aug is not None and aug.degrade > 0 and rng.random() < aug.degrade:
            d = random_degradation(rng)  # one for both views: one camera made them
            out = [apply_degradation(v, d, rng) for v in out]
        if rng is not None and aug is not None and rng.random() < aug.flip:
            out = [v[:, ::-1] for v in out]
        return out[0], out[1]

    def any_usable(self) -> bool:
        """Whether some sample's views can be cut; stops at the first. Unusable ones go to ``bad``."""
        for sample in self.samples:
            try:
                self.views(sample, None)
            except BadImageError as exc:
                self.bad[sample.image] = str(exc)
                continue
            return True
        return False

    def targets(self, sample: Sample) -> tuple[np.ndarray, bool, np.ndarray, float]:
        """Soft class target (7,), whether it exists, valence/arousal (2,), and its weight."""
        if sample.dist is not None:
            dist = np.asarray(sample.dist, np.float32)
        elif sample.label >= 0:
            dist = np.eye(len(CLASSES), dtype=np.float32)[sample.label]
        else:
            dist = np.zeros(len(CLASSES), np.float32)
        has_cls = bool(dist.sum() > 0)
        if sample.va is not None:
            return dist, has_cls, np.asarray(sample.va, np.float32), 1.0
        if has_cls and self.class_va is not None and self.prior_va_weight > 0:
            return dist, has_cls, (dist @ self.class_va).astype(np.float32), self.prior_va_weight
        return dist, has_cls, np.zeros(2, np.float32), 0.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.augment is not None else None
        try:
            pv, sv = self.views(sample, rng)
            valid = True
        except BadImageError as exc:
            self.bad[sample.image] = str(exc)
            pv = np.zeros((self.person.size, self.person.size, 3), np.uint8)
            sv = np.zeros((self.scene.size, self.scene.size, 3), np.uint8)
            valid = False
        dist, has_cls, va, va_w = self.targets(sample)
        return {
            "person": torch.from_numpy(np.ascontiguousarray(pv.transpose(2, 0, 1))),
            "scene": torch.from_numpy(np.ascontiguousarray(sv.transpose(2, 0, 1))),
            "dist": torch.from_numpy(dist),
            "has_cls": has_cls and valid,
            "va": torch.from_numpy(va),
            "va_weight": va_w if valid else 0.0,
            "label": sample.label,
            "index": index,
            "valid": valid,
        }
