"""The model exports to ONNX opset 17 with a dynamic batch and matches PyTorch in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from train.models import build_model


@pytest.mark.parametrize(
    "name,batch", [("affectline_mnv2_64", 1), ("affectline_mnv2_64", 3), ("affectline_mnv2_96_64", 2)]
)
def test_onnx_export_matches_torch(tmp_path: Path, name: str, batch: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, pretrained=False).eval()
    sp = int(name.split("_")[2])
    ss = int(name.split("_")[-1])
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 3, sp, sp), torch.randn(2, 3, ss, ss)),
        str(path),
        opset_version=17,
        input_names=["person", "scene"],
        output_names=["logits", "valence_arousal"],
        dynamic_axes={k: {0: "batch"} for k in ("person", "scene", "logits", "valence_arousal")},
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))
    person = np.random.default_rng(1).standard_normal((batch, 3, sp, sp)).astype(np.float32)
    scene = np.random.default_rng(2).standard_normal((batch, 3, ss, ss)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, va = sess.run(None, {"person": person, "scene": scene})
    with torch.no_grad():
        t_logits, t_va = model(torch.from_numpy(person), torch.from_numpy(scene))
    assert logits.shape == (batch, 7) and va.shape == (batch, 2)
    np.testing.assert_allclose(logits, t_logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(va, t_va.numpy(), atol=1e-4, rtol=1e-4)
