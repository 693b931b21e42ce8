"""`ViewSet`: real person/scene model inputs with labels, saved as ``.npz`` with a content hash.

The ``.npz`` holds one float32 array per model input, keyed by the input's name and already
normalised as the model's metadata says (so a calibrator or ONNX Runtime feeds it as is), plus
per-sample columns under reserved ``_``-prefixed keys: ``_labels`` (class index, -1 unknown),
``_brightness`` (mean luma 0–255 of the person view before normalisation), ``_origin`` (where the
sample came from) and ``_manifest`` (JSON: classes, content hash).

The content hash covers the input arrays only (names, dtypes, shapes, bytes): two sets that feed
a calibrator identically have the same hash, whatever their labels or origins.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESERVED = ("_labels", "_brightness", "_origin", "_manifest")
FORMAT = "affectline-viewset-1"


class ViewSetError(ValueError):
    """A view set is malformed, or its file is unreadable or altered (message names the file)."""


@dataclass
class ViewSet:
    """N samples of model inputs.

    Attributes:
        inputs: ``{input_name: float32 (N, 3, S, S)}`` normalised model inputs.
        labels: (N,) int64 class index into ``classes``, -1 when unknown (camera frames).
        brightness: (N,) float32 mean luma of the person view, 0–255.
        origin: (N,) str, e.g. ``expw:Images/x.jpg`` or ``video:rtsp://cam@12.4s``.
        classes: Class names in logit order.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    brightness: np.ndarray
    origin: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ViewSetError("ViewSet.inputs is empty; need one array per model input")
        n = len(self.labels)
        for name, arr in self.inputs.items():
            if name.startswith("_"):
                raise ViewSetError(f"input name {name!r} starts with '_', reserved for {RESERVED}")
            if arr.ndim != 4 or arr.shape[0] != n or arr.shape[1] != 3 or arr.dtype != np.float32:
                raise ViewSetError(
                    f"input {name!r}: need float32 ({n}, 3, S, S), got {arr.dtype} {arr.shape}"
                )
        self.labels = np.asarray(self.labels, np.int64)
        self.brightness = np.asarray(self.brightness, np.float32)
        self.origin = np.asarray(self.origin, dtype=str)
        if self.brightness.shape != (n,) or self.origin.shape != (n,):
            raise ViewSetError(
                f"brightness {self.brightness.shape} and origin {self.origin.shape} must be ({n},)"
            )
        if n and (self.labels.min() < -1 or self.labels.max() >= len(self.classes)):
            raise ViewSetError(
                f"labels must be in [-1, {len(self.classes) - 1}], got "
                f"[{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def content_hash(self) -> str:
        """sha256 over input names, dtypes, shapes and bytes, in name order."""
        h = hashlib.sha256(FORMAT.encode())
        for name in sorted(self.inputs):
            arr = np.ascontiguousarray(self.inputs[name])
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def take(self, index: np.ndarray | slice) -> ViewSet:
        """The samples at ``index`` (array of indices, mask or slice)."""
        return ViewSet(
            {k: np.ascontiguousarray(v[index]) for k, v in self.inputs.items()},
            self.labels[index],
            self.brightness[index],
            self.origin[index],
            self.classes,
        )

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive ``{input_name: (B, 3, S, S)}`` batches; the last may be short."""
        if size < 1:
            raise ViewSetError(f"batch size {size} must be >= 1")
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}

    @classmethod
    def concat(cls, parts: list[ViewSet]) -> ViewSet:
        """Join sets with the same inputs and classes."""
        if not parts:
            raise ViewSetError("ViewSet.concat needs at least one set")
        first = parts[0]
        for p in parts[1:]:
            if p.classes != first.classes or {k: v.shape[1:] for k, v in p.inputs.items()} != {
                k: v.shape[1:] for k, v in first.inputs.items()
            }:
                raise ViewSetError("ViewSet.concat: sets differ in classes or input shapes")
        return cls(
            {k: np.concatenate([p.inputs[k] for p in parts]) for k in first.inputs},
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.brightness for p in parts]),
            np.concatenate([p.origin for p in parts]),
            first.classes,
        )

    def save(self, path: str | Path) -> str:
        """Write the ``.npz`` (uncompressed: it is float data) and return the content hash."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ViewSetError(f"{path}: a view set file must end in .npz")
        digest = self.content_hash()
        manifest = {"format": FORMAT, "classes": list(self.classes), "sha256": digest, "count": len(self)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(
            tmp,
            **self.inputs,
            _labels=self.labels,
            _brightness=self.brightness,
            _origin=self.origin,
            _manifest=np.array(json.dumps(manifest)),
        )
        tmp.replace(path)
        return digest

    @classmethod
    def load(cls, path: str | Path) -> ViewSet:
        """Read a ``.npz`` written by `save`, checking its content hash.

        Raises:
            ViewSetError: missing/unreadable file, missing keys, or contents that do not match the
                recorded hash (the file was altered).
        """
        path = Path(path)
        if path.is_file() and not zipfile.is_zipfile(path):
            # np.load would try it as a pickle and say so, which misleads: name what it should be.
            raise ViewSetError(
                f"{path}: not a view set .npz (not a zip archive); "
                "write one with `affectline engines calibrate`"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ViewSetError(f"{path}: not a readable view set .npz ({exc})") from None
        missing = [k for k in RESERVED if k not in data]
        if missing:
            raise ViewSetError(f"{path}: lacks {missing}; write it with `affectline engines calibrate`")
        manifest = _manifest(path, data["_manifest"])
        inputs = {k: v for k, v in data.items() if not k.startswith("_")}
        vs = cls(inputs, data["_labels"], data["_brightness"], data["_origin"], tuple(manifest["classes"]))
        if vs.content_hash() != manifest["sha256"]:
            raise ViewSetError(
                f"{path}: contents do not match the recorded sha256 (file altered or truncated)"
            )
        return vs


def _manifest(path: Path, raw: np.ndarray) -> dict[str, Any]:
    """The ``_manifest`` entry of a view set file, checked for what ``load`` reads from it.

    Raises:
        ViewSetError: not a JSON object of this format with a class list and a sha256.
    """
    try:
        manifest = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ViewSetError(f"{path}: _manifest is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise ViewSetError(f"{path}: format {found!r}, expected {FORMAT!r}")
    classes, digest = manifest.get("classes"), manifest.get("sha256")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ViewSetError(f"{path}: _manifest classes {classes!r} must be a non-empty list of names")
    if not isinstance(digest, str):
        raise ViewSetError(f"{path}: _manifest sha256 {digest!r} must be a string")
    return manifest


def file_hash(path: str | Path) -> str:
    """The recorded content hash of a view set file (read from its manifest, no full check)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(json.loads(str(z["_manifest"]))["sha256"])
    except (OSError, ValueError, KeyError) as exc:
        raise ViewSetError(f"{path}: no view set manifest ({exc})") from None
