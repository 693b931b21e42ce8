"""The metadata contract between exported models and the agent."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edge_agent.modelmeta import PREFIX, ModelContractError, ModelMeta
from tests.model_factory import tiny_meta


def test_round_trip() -> None:
    meta = tiny_meta(48)
    back = ModelMeta.from_props(meta.to_props())
    assert back == meta
    assert back.input_for("scene").geometry.size == 48


def test_train_split_round_trips_and_is_optional() -> None:
    meta = dataclasses.replace(
        tiny_meta(), train_split={"test_fraction": 0.3, "split_seed": 2, "val_fraction": 0.1}
    )
    props = meta.to_props()
    assert json.loads(props[PREFIX + "train_split"])["split_seed"] == 2
    assert ModelMeta.from_props(props) == meta
    assert PREFIX + "train_split" not in tiny_meta().to_props()  # not recorded: no key
    assert ModelMeta.from_props(tiny_meta().to_props()).train_split == {}


def test_resample_round_trips_and_defaults_to_bilinear() -> None:
    meta = tiny_meta()
    area = dataclasses.replace(
        meta,
        inputs=tuple(
            dataclasses.replace(s, geometry=dataclasses.replace(s.geometry, resample="area"))
            for s in meta.inputs
        ),
    )
    props = area.to_props()
    assert all(d["resample"] == "area" for d in json.loads(props[PREFIX + "inputs"]).values())
    assert ModelMeta.from_props(props) == area
    older = json.loads(props[PREFIX + "inputs"])
    for d in older.values():
        del d["resample"]  # files exported before the key existed
    props[PREFIX + "inputs"] = json.dumps(older)
    assert {s.geometry.resample for s in ModelMeta.from_props(props).inputs} == {"bilinear"}


def _props_with(key: str, value: str | None) -> dict[str, str]:
    props = tiny_meta().to_props()
    if value is None:
        del props[PREFIX + key]
    else:
        props[PREFIX + key] = value
    return props


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("format", None, "'affectline.format' is missing"),
        ("format", "99", "format '99'"),
        ("classes", "not json", "not JSON"),
        ("classes", "[]", "non-empty list"),
        (
            "inputs",
            json.dumps(
                {"x": {"view": "person", "size": 32, "scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]}}
            ),
            "exactly one 'person' and one 'scene'",
        ),
        (
            "inputs",
            json.dumps({"x": {"view": "face", "size": 32, "scale": 1.0, "mean": [0], "std": [1]}}),
            "view in",
        ),
        ("inputs", json.dumps({"x": {"view": "person"}}), "input 'x' metadata invalid"),
        (
            "inputs",
            json.dumps(
                {
                    "x": {"view": "person", "size": 32, "scale": 1.0, "resample": "lanczos"},
                }
            ),
            "input 'x' metadata invalid: ViewGeometry.resample='lanczos'",
        ),
        ("train_split", "[]", "'train_split' is \\[\\]; need an object"),
        ("train_split", json.dumps({"test_fraction": 0.2}), "'train_split' is .*integer split_seed"),
        ("train_split", json.dumps({"test_fraction": 1.0, "split_seed": 0}), "in \\[0, 1\\)"),
        (
            "train_split",
            json.dumps({"test_fraction": 0.6, "split_seed": 0, "val_fraction": 0.5}),
            "summing below 1",
        ),
        ("train_split", json.dumps({"test_fraction": "x", "split_seed": 0}), "need an object"),
    ],
)
def test_contract_violations_are_named(key: str, value: str | None, match: str) -> None:
    with pytest.raises(ModelContractError, match=match):
        ModelMeta.from_props(_props_with(key, value), source="m.onnx")
