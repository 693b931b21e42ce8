"""View geometry: how a person's two model inputs (person view, scene view) are cut from a frame.

This module is the single source of truth for cropping. Training (`train.data`), calibration
(`calibration`) and the agent (`edge_agent.infer`) all call it, so the model sees at deployment
exactly the framing it was trained and calibrated on. The geometry itself (scales, sizes) is
stored in the model file's metadata and read back by the agent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

# How a view is resampled when its box is larger than the model input. "bilinear" is a single
# affine warp, which aliases when it shrinks (warpAffine samples, whatever its flag says); "area"
# first averages the box's pixels down to about the output scale (cv2.INTER_AREA), then warps.
# Models record the one they were trained with; models without the key were trained bilinear.
RESAMPLES = ("bilinear", "area")


@dataclass(frozen=True)
class ViewGeometry:
    """How to cut one view around an anchor box.

    Attributes:
        scale: Side of the square crop as a multiple of the anchor box's longer side.
        size: Output side in pixels (the model's input H = W).
        y_shift: Vertical shift of the crop centre, as a fraction of the anchor height
            (positive = down; the scene view leans below the face to include the body).
        resample: One of ``RESAMPLES``: how the crop is shrunk to ``size``.
    """

    scale: float
    size: int
    y_shift: float = 0.0
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if not 0.5 <= self.scale <= 16:
            raise ValueError(f"ViewGeometry.scale={self.scale} outside [0.5, 16]")
        if not 8 <= self.size <= 512:
            raise ValueError(f"ViewGeometry.size={self.size} outside [8, 512]")
        if self.resample not in RESAMPLES:
            raise ValueError(f"ViewGeometry.resample={self.resample!r} not one of {RESAMPLES}")

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


# Defaults used by training when no model metadata exists yet. FER+ crops are tight faces, so the
# person view is the face with a small margin; the scene view covers head, shoulders and context.
DEFAULT_PERSON = ViewGeometry(scale=1.25, size=64)
DEFAULT_SCENE = ViewGeometry(scale=4.0, size=64, y_shift=0.75)


def square_boxes(anchor_xyxy: np.ndarray, geometry: ViewGeometry) -> np.ndarray:
    """Square crop boxes around anchor boxes.

    Args:
        anchor_xyxy: (N, 4) anchor boxes (faces, or person boxes when no face), pixels.
        geometry: How far to expand and where to centre.

    Returns:
        (N, 4) float32 square boxes; they may extend outside the image (padded on crop).
    """
    a = np.asarray(anchor_xyxy, dtype=np.float32).reshape(-1, 4)
    w = a[:, 2] - a[:, 0]
    h = a[:, 3] - a[:, 1]
    cx = (a[:, 0] + a[:, 2]) / 2
    cy = (a[:, 1] + a[:, 3]) / 2 + geometry.y_shift * h
    half = np.maximum(w, h) * geometry.scale / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1).astype(np.float32)


def crop_square(image: np.ndarray, box: np.ndarray, size: int, resample: str = "bilinear") -> np.ndarray:
    """Cut a square box out of an image and resize it, padding outside pixels with grey.

    One affine warp does crop, resize and padding together, so it costs the same wherever the
    box lies (no special cases at image borders).

    Args:
        image: (H, W, 3) uint8 (BGR or RGB, kept as is) or (H, W) grey.
        box: (4,) square box x1, y1, x2, y2 in pixels.
        size: Output side.
        resample: One of ``RESAMPLES``.

    Returns:
        (size, size, C) uint8 crop.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    s = size / max(x2 - x1, 1e-3)
    m = np.array([[s, 0, -x1 * s], [0, s, -y1 * s]], dtype=np.float32)
    return warp_square(image, m, size, resample)


def warp_square(image: np.ndarray, m: np.ndarray, size: int, resample: str = "bilinear") -> np.ndarray:
    """Warp an image by the (2, 3) affine ``m`` (image pixel -> crop pixel) into a size x size crop.

    Pixels from outside the image are grey (114), the padding the model is trained on.

    Args:
        image: (H, W, C) or (H, W) uint8.
        m: (2, 3) float affine, pixel indices to pixel indices.
        size: Output side.
        resample: One of ``RESAMPLES``.

    Returns:
        (size, size, C) uint8.
    """
    if resample not in RESAMPLES:
        raise ValueError(f"resample={resample!r} not one of {RESAMPLES}")
    if resample == "area":
        # Pixel centres, not corners, map onto each other (the bilinear mode keeps the older
        # corner mapping its models were trained on); then an exact 4x shrink is a plain 4x4 mean.
        a = m[:, :2].astype(np.float64)
        m = np.hstack([a, (m[:, 2] + a @ np.array([0.5, 0.5]) - 0.5)[:, None]]).astype(np.float32)
        image, m = _area_shrunk(image, m, size)
    out = cv2.warpAffine(
        image,
        m,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(114, 114, 114),
    )
    return out if out.ndim == 3 else out[:, :, None]


def _area_shrunk(image: np.ndarray, m: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``image`` that a crop by ``m`` covers, area-averaged down to the crop's scale,
    and the affine that maps it into the crop (then a rotation at unit scale, or a whole-pixel
    shift for an upright crop whose box lies on whole pixels).

    Pixels outside the image are the padding grey before averaging, as the bilinear warp pads.
    Returns ``(image, m)`` unchanged when the crop does not shrink.
    """
    a = m[:, :2].astype(np.float64)
    scale = math.sqrt(abs(float(np.linalg.det(a))))
    if scale >= 1:
        return image, m
    inv = cv2.invertAffineTransform(m.astype(np.float64))
    edge = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    src = edge @ inv[:, :2].T + inv[:, 2]
    lo = src.min(axis=0) - 2 / scale  # two crop pixels of margin: the warp never reads past the region
    hi = src.max(axis=0) + 2 / scale
    # Start the region where a whole number of small pixels ends at crop pixel 0's centre.
    centre0 = inv[:, 2]
    steps = np.ceil((centre0 - lo) * scale)
    x0, y0 = (int(v) for v in np.round(centre0 - (0.5 / scale - 0.5) - steps / scale))
    x1, y1 = (int(v) for v in np.ceil(hi))
    h, w = image.shape[:2]
    if (x1 - x0) * (y1 - y0) > max(16 * h * w, 1 << 24):
        # A box far larger than the frame (a bad detection): shrink the frame itself, so memory
        # stays bounded by the frame; the warp pads around it.
        x0 = y0 = 0
        region = image
    else:
        region = _padded(image, x0, y0, x1, y1)
    small = cv2.resize(region, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # cv2.resize puts small pixel x' at source index (x' + 0.5) / scale - 0.5 + x0 (pixel centres).
    d = np.eye(2) / scale
    c = d @ np.array([0.5, 0.5]) - 0.5 + np.array([x0, y0])
    return small, np.hstack([a @ d, (a @ c + m[:, 2])[:, None]]).astype(np.float32)


def _padded(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` with the parts outside the image filled with the padding grey."""
    h, w = image.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return np.full((y1 - y0, x1 - x0, *image.shape[2:]), 114, np.uint8)
    return cv2.copyMakeBorder(
        image[cy0:cy1, cx0:cx1],
        cy0 - y0,
        y1 - cy1,
        cx0 - x0,
        x1 - cx1,
        cv2.BORDER_CONSTANT,
        value=(114, 114, 114),
    )


def cut_views(
    image: np.ndarray,
    anchor_xyxy: np.ndarray,
    person: ViewGeometry = DEFAULT_PERSON,
    scene: ViewGeometry = DEFAULT_SCENE,
) -> tuple[np.ndarray, np.ndarray]:
    """Both views for every anchor box.

    Args:
        image: (H, W, 3) uint8 frame.
        anchor_xyxy: (N, 4) anchor boxes in pixels.
        person: Person-view geometry.
        scene: Scene-view geometry.

    Returns:
        person views (N, Sp, Sp, 3) and scene views (N, Ss, Ss, 3), uint8, same channel order as
        ``image``.
    """
    pboxes = square_boxes(anchor_xyxy, person)
    sboxes = square_boxes(anchor_xyxy, scene)
    pv = (
        np.stack([crop_square(image, b, person.size, person.resample) for b in pboxes])
        if len(pboxes)
        else np.zeros((0, person.size, person.size, 3), np.uint8)
    )
    sv = (
        np.stack([crop_square(image, b, scene.size, scene.resample) for b in sboxes])
        if len(sboxes)
        else np.zeros((0, scene.size, scene.size, 3), np.uint8)
    )
    return pv, sv


def person_box_from_face(face_xyxy: np.ndarray, frame_wh: tuple[int, int]) -> np.ndarray:
    """Upper-body person box derived from a face box (used when no body detector runs).

    Shoulders are about three face widths wide and the torso starts one face height below the
    chin; we keep head and upper torso, clipped to the frame.

    Args:
        face_xyxy: (N, 4) face boxes.
        frame_wh: (width, height) of the frame.

    Returns:
        (N, 4) float32 person boxes inside the frame.
    """
    f = np.asarray(face_xyxy, dtype=np.float32).reshape(-1, 4)
    w = f[:, 2] - f[:, 0]
    h = f[:, 3] - f[:, 1]
    cx = (f[:, 0] + f[:, 2]) / 2
    box = np.stack([cx - 1.5 * w, f[:, 1] - 0.3 * h, cx + 1.5 * w, f[:, 3] + 2.0 * h], axis=1)
    width, height = frame_wh
    box[:, [0, 2]] = np.clip(box[:, [0, 2]], 0, width)
    box[:, [1, 3]] = np.clip(box[:, [1, 3]], 0, height)
    return box.astype(np.float32)
