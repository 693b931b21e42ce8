"""Export of a real network: metadata, dynamic batch, checker, parity with PyTorch, failure handling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibration.viewset import ViewSet
from edge_agent.modelmeta import ModelMeta
from engines.artifacts import read_sidecar
from engines.errors import EnginesInputError, VerificationError
from engines.export import export_onnx
from engines.verify import Tolerance


def test_exported_model_carries_the_contract(fp32_onnx: Path, meta: ModelMeta) -> None:
    model = onnx.load(str(fp32_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert ModelMeta.from_props({p.key: p.value for p in model.metadata_props}) == meta
    assert [i.name for i in model.graph.input] == ["person", "scene"]
    assert [o.name for o in model.graph.output] == ["logits", "valence_arousal"]
    for v in (*model.graph.input, *model.graph.output):
        assert v.type.tensor_type.shape.dim[0].dim_param == "batch"
    # Shared-encoder weights are read straight from initializers (no Identity aliases left).
    assert not [n for n in model.graph.node if n.op_type == "Identity"]


def test_dynamic_batch_runs(fp32_onnx: Path, eval_views: ViewSet) -> None:
    sess = ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        logits, va = sess.run(None, {k: v[:n] for k, v in eval_views.inputs.items()})
        assert logits.shape == (n, 7) and va.shape == (n, 2) and np.all(np.abs(va) <= 1)


def test_sidecar_records_provenance_and_parity(fp32_onnx: Path, checkpoint: Path) -> None:
    side = read_sidecar(fp32_onnx)
    assert side["kind"] == "onnx-fp32" and side["checkpoint"] == str(checkpoint)
    parity = side["verification"]["parity_vs_pytorch"]
    assert parity["ok"] and parity["max_logit_abs"] <= 1e-3 and parity["samples"] == 40
    assert side["inputs"]["person"] == ["batch", 3, 32, 32]
    assert side["verification"]["batch_sizes"] == [1, 3, 32]


def test_two_samples_check_the_batch_sizes_they_have(
    tmp_path: Path, checkpoint: Path, eval_views: ViewSet
) -> None:
    report = export_onnx(checkpoint, tmp_path / "m.onnx", eval_views.take(slice(0, 2)))
    assert report.batch_sizes == (1, 2) and read_sidecar(report.onnx)["verification"]["batch_sizes"] == [1, 2]


@pytest.mark.parametrize(("kwargs", "match"), [({"opset": 16}, "--opset=16"), ({"opset": 21}, "--opset=21")])
def test_rejects_bad_opset(
    tmp_path: Path, checkpoint: Path, eval_views: ViewSet, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(EnginesInputError, match=match):
        export_onnx(checkpoint, tmp_path / "m.onnx", eval_views, **kwargs)


def test_rejects_bad_output_and_too_few_samples(
    tmp_path: Path, checkpoint: Path, eval_views: ViewSet
) -> None:
    with pytest.raises(EnginesInputError, match="must end in .onnx"):
        export_onnx(checkpoint, tmp_path / "m.pt", eval_views)
    with pytest.raises(EnginesInputError, match="need >= 2 real samples"):
        export_onnx(checkpoint, tmp_path / "m.onnx", eval_views.take(slice(0, 1)))


def test_parity_failure_removes_the_file(tmp_path: Path, checkpoint: Path, eval_views: ViewSet) -> None:
    # Zero tolerance: float kernels in ONNX Runtime and PyTorch never agree to the last bit.
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match="failed its check and was removed"):
        export_onnx(checkpoint, out, eval_views.take(slice(0, 8)), tolerance=Tolerance(1.0, 0.0, 0.0))
    assert not out.exists()
