"""Small but real ONNX models with Affectline metadata, built with onnx.helper (no torch needed).

The graph is deterministic and input-dependent, so tests can check that the agent feeds the right
view to the right input: logits = W_p · mean(person) + W_s · mean(scene) per channel, and
valence/arousal = tanh of a fixed projection of the same features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_agent.modelmeta import InputSpec, ModelMeta
from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE, ViewGeometry

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def tiny_meta(size: int = 32, person_name: str = "person", scene_name: str = "scene") -> ModelMeta:
    return ModelMeta(
        classes=CLASSES,
        inputs=(
            InputSpec(person_name, "person", ViewGeometry(DEFAULT_PERSON.scale, size), MEAN, STD),
            InputSpec(
                scene_name, "scene", ViewGeometry(DEFAULT_SCENE.scale, size, DEFAULT_SCENE.y_shift), MEAN, STD
            ),
        ),
        logits_output="logits",
        va_output="valence_arousal",
        model_version="tiny-test",
        train_config_sha256="0" * 64,
    )


def make_tiny_model(
    path: Path,
    size: int = 32,
    meta: ModelMeta | None = None,
    props: dict[str, str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny dual-input ONNX model to ``path`` and return it.

    Args:
        path: Output file.
        size: Input side S of both views: inputs are float32 (N, 3, S, S).
        meta: Metadata to embed (default: `tiny_meta(size)`).
        props: Raw metadata props to embed instead of ``meta`` (for contract-violation tests).
        seed: Weight seed.
    """
    meta = meta or tiny_meta(size)
    rng = np.random.default_rng(seed)
    c = len(CLASSES)
    w = rng.normal(size=(6, c)).astype(np.float32)
    wva = rng.normal(size=(6, 2)).astype(np.float32) * 0.5
    p_name = meta.input_for("person").name
    s_name = meta.input_for("scene").name
    nodes = [
        helper.make_node("GlobalAveragePool", [p_name], ["gp"]),
        helper.make_node("GlobalAveragePool", [s_name], ["gs"]),
        helper.make_node("Flatten", ["gp"], ["fp"]),
        helper.make_node("Flatten", ["gs"], ["fs"]),
        helper.make_node("Concat", ["fp", "fs"], ["feat"], axis=1),
        helper.make_node("MatMul", ["feat", "W"], ["logits"]),
        helper.make_node("MatMul", ["feat", "Wva"], ["va_lin"]),
        helper.make_node("Tanh", ["va_lin"], ["valence_arousal"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_dual_view",
        [
            helper.make_tensor_value_info(p_name, TensorProto.FLOAT, ["N", 3, size, size]),
            helper.make_tensor_value_info(s_name, TensorProto.FLOAT, ["N", 3, size, size]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", c]),
            helper.make_tensor_value_info("valence_arousal", TensorProto.FLOAT, ["N", 2]),
        ],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(wva, "Wva")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (props if props is not None else meta.to_props()).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
