"""The contract between an exported model file and the agent: metadata keys and their meaning.

`engines.export` writes these keys into the ONNX ``metadata_props`` (and into the sidecar JSON of
a TensorRT engine); `edge_agent.infer` reads them back. Nothing about the model (classes, input
names, normalisation, view geometry) is hard-coded in the agent.

Keys (all values are strings; JSON where structured):

- ``affectline.format``: contract version, currently ``"1"``.
- ``affectline.classes``: JSON list of class names, in logit order.
- ``affectline.inputs``: JSON object ``{input_name: {"view": "person"|"scene",
  "size": S, "scale": float, "y_shift": float, "resample": "bilinear"|"area", "mean": [3], "std": [3],
  "color": "RGB"}}`` (``resample`` absent = bilinear).
  Inputs are float32 NCHW; the agent feeds ``(pixel/255 - mean) / std``.
- ``affectline.outputs``: JSON object ``{"logits": name, "valence_arousal": name}``;
  valence/arousal are in [-1, 1] (Russell's circumplex, 0 = neutral).
- ``affectline.model_version``: free text (e.g. ``affectline-s-64 2026-11-26``).
- ``affectline.train_config_sha256``: hash of the resolved training config.
- ``affectline.train_split`` (optional): JSON ``{"test_fraction": f, "split_seed": n,
  "val_fraction": f}``, how training held out the test/val parts of datasets split by image, so an
  evaluation of the exported file tests on the same held-out images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edge_agent.views import ViewGeometry

FORMAT_VERSION = "1"
PREFIX = "affectline."
VIEWS = ("person", "scene")


class ModelContractError(ValueError):
    """A model file's metadata is missing or does not match the contract above."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: which view it takes and how to normalise it."""

    name: str
    view: str
    geometry: ViewGeometry
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: str = "RGB"


@dataclass(frozen=True)
class ModelMeta:
    """Everything the agent needs to know about a model, parsed and checked."""

    classes: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    logits_output: str
    va_output: str
    model_version: str
    train_config_sha256: str
    train_split: dict[str, float] = field(default_factory=dict)  # empty: not recorded

    def input_for(self, view: str) -> InputSpec:
        for spec in self.inputs:
            if spec.view == view:
                return spec
        raise ModelContractError(f"model has no input for view {view!r}")

    def to_props(self) -> dict[str, str]:
        """Serialise to ONNX ``metadata_props`` / sidecar key-value strings."""
        inputs = {
            s.name: {
                "view": s.view,
                **s.geometry.to_dict(),
                "mean": list(s.mean),
                "std": list(s.std),
                "color": s.color,
            }
            for s in self.inputs
        }
        return {
            PREFIX + "format": FORMAT_VERSION,
            PREFIX + "classes": json.dumps(list(self.classes)),
            PREFIX + "inputs": json.dumps(inputs),
            PREFIX + "outputs": json.dumps({"logits": self.logits_output, "valence_arousal": self.va_output}),
            PREFIX + "model_version": self.model_version,
            PREFIX + "train_config_sha256": self.train_config_sha256,
            **({PREFIX + "train_split": json.dumps(self.train_split)} if self.train_split else {}),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMeta:
        """Parse metadata, naming the file and the key on any problem."""

        def get(key: str) -> str:
            if PREFIX + key not in props:
                raise ModelContractError(
                    f"{source}: metadata key {PREFIX + key!r} is missing; export the model with "
                    "`affectline engines export` so it carries classes, inputs and normalisation"
                )
            return props[PREFIX + key]

        def load(key: str) -> Any:
            try:
                return json.loads(get(key))
            except json.JSONDecodeError as exc:
                raise ModelContractError(f"{source}: metadata {PREFIX + key!r} is not JSON: {exc}") from exc

        fmt = get("format")
        if fmt != FORMAT_VERSION:
            raise ModelContractError(
                f"{source}: metadata format {fmt!r}, this agent reads {FORMAT_VERSION!r}"
            )
        classes = load("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ModelContractError(f"{source}: 'classes' must be a non-empty list of strings")
        inputs, outputs = load("inputs"), load("outputs")
        if not isinstance(inputs, dict) or not isinstance(outputs, dict):
            raise ModelContractError(f"{source}: metadata 'inputs' and 'outputs' must be JSON objects")
        specs = []
        for name, d in inputs.items():
            try:
                geo = ViewGeometry(
                    scale=float(d["scale"]),
                    size=int(d["size"]),
                    y_shift=float(d.get("y_shift", 0)),
                    # Files from before the key existed were all trained on bilinear crops.
                    resample=str(d.get("resample", "bilinear")),
                )
                spec = InputSpec(
                    name, str(d["view"]), geo, tuple(d["mean"]), tuple(d["std"]), d.get("color", "RGB")
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelContractError(f"{source}: input {name!r} metadata invalid: {exc}") from exc
            if spec.view not in VIEWS or len(spec.mean) != 3 or len(spec.std) != 3:
                raise ModelContractError(
                    f"{source}: input {name!r} needs view in {VIEWS} and 3 mean/std values"
                )
            specs.append(spec)
        if sorted(s.view for s in specs) != sorted(VIEWS):
            raise ModelContractError(
                f"{source}: needs exactly one 'person' and one 'scene' input, got {specs}"
            )
        return cls(
            classes=tuple(classes),
            inputs=tuple(specs),
            logits_output=str(outputs.get("logits", "")),
            va_output=str(outputs.get("valence_arousal", "")),
            model_version=props.get(PREFIX + "model_version", "unknown"),
            train_config_sha256=props.get(PREFIX + "train_config_sha256", ""),
            train_split=_train_split(load("train_split"), source) if PREFIX + "train_split" in props else {},
        )


def train_split_of(config: dict[str, Any]) -> dict[str, float]:
    """The split settings of a resolved training config (empty when it has none)."""
    if "test_fraction" not in config:
        return {}
    # A config from before validation parts existed has no val_fraction: its val part was empty.
    return {
        "test_fraction": float(config["test_fraction"]),
        "split_seed": int(config.get("split_seed", 0)),
        "val_fraction": float(config.get("val_fraction", 0.0)),
    }


def _train_split(value: Any, source: str) -> dict[str, float]:
    """Checked ``train_split`` metadata.

    Raises:
        ModelContractError: not an object with test_fraction, val_fraction in [0, 1) (sum below 1)
            and an integer split_seed.
    """
    rule = "an object with test_fraction and val_fraction in [0, 1) summing below 1 and an integer split_seed"
    try:
        out = {
            "test_fraction": float(value["test_fraction"]),
            "split_seed": int(value["split_seed"]),
            "val_fraction": float(value.get("val_fraction", 0.0)),
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ModelContractError(f"{source}: metadata 'train_split' is {value!r}; need {rule}") from None
    t, v = out["test_fraction"], out["val_fraction"]
    if not (0 <= t < 1 and 0 <= v < 1 and t + v < 1):
        raise ModelContractError(f"{source}: metadata 'train_split' is {value!r}; need {rule}")
    return out
