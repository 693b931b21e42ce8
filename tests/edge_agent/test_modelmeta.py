"""The metadata contract between exported models and the agent."""

from __future__ import annotations

import json

import pytest

from edge_agent.modelmeta import PREFIX, ModelContractError, ModelMeta
from tests.model_factory import tiny_meta


def test_round_trip() -> None:
    meta = tiny_meta(48)
    back = ModelMeta.from_props(meta.to_props())
    assert back == meta
    assert back.input_for("scene").geometry.size == 48


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
    ],
)
def test_contract_violations_are_named(key: str, value: str | None, match: str) -> None:
    with pytest.raises(ModelContractError, match=match):
        ModelMeta.from_props(_props_with(key, value), source="m.onnx")
