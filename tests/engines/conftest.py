"""Real models for engine tests: a ``build_model`` network (ImageNet-initialised encoder) saved as a
checkpoint, exported and quantized once per session, with real samples from ../shared/data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from calibration.viewset import ViewSet
from edge_agent.modelmeta import ModelMeta
from tests.calibration.conftest import SMALL_PERSON, SMALL_SCENE
from tests.conftest import shared_path


@pytest.fixture(scope="session")
def tensorrt() -> object:
    """TensorRT, or skip: list it first so a GPU test skips before building its models."""
    return pytest.importorskip("tensorrt", reason="TensorRT is not installed (only on NVIDIA devices)")


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def checkpoint(engines_dir: Path) -> Path:
    """A real checkpoint of the real network at 32 px views (random heads, ImageNet encoder)."""
    import torch

    from train.checkpoint import make_meta, save_checkpoint
    from train.data.records import CLASSES
    from train.models import build_model

    torch.manual_seed(0)
    config: dict[str, Any] = {"model": "affectline_mnv2_32", "model_kwargs": {"fusion_dim": 64}}
    model = build_model(config["model"], fusion_dim=64, pretrained=True).eval()
    meta = make_meta(CLASSES, SMALL_PERSON, SMALL_SCENE, config, "affectline-test")
    return save_checkpoint(engines_dir / "model.pt", model, None, 0, config, meta, {})


@pytest.fixture(scope="session")
def meta(checkpoint: Path) -> ModelMeta:
    from engines.verify import read_meta

    return read_meta(checkpoint)


@pytest.fixture(scope="session")
def specs() -> list[str]:
    return [f"expw:{shared_path('data', 'expw')}", f"ferplus:{shared_path('data', 'ferplus')}"]


@pytest.fixture(scope="session")
def calib_views(meta: ModelMeta, specs: list[str]) -> ViewSet:
    from calibration.datasets import dataset_views

    return dataset_views(meta, specs, "train", 96)


@pytest.fixture(scope="session")
def eval_views(meta: ModelMeta, specs: list[str]) -> ViewSet:
    from calibration.datasets import dataset_views

    return dataset_views(meta, specs, "test", 128, seed=1, balanced=False)


@pytest.fixture(scope="session")
def eval_npz(engines_dir: Path, eval_views: ViewSet) -> Path:
    path = engines_dir / "eval.npz"
    eval_views.save(path)
    return path


@pytest.fixture(scope="session")
def calib_npz(engines_dir: Path, calib_views: ViewSet) -> Path:
    path = engines_dir / "calib.npz"
    calib_views.save(path)
    return path


@pytest.fixture(scope="session")
def fp32_onnx(engines_dir: Path, checkpoint: Path, eval_views: ViewSet) -> Path:
    from engines.export import export_onnx

    return export_onnx(checkpoint, engines_dir / "model.onnx", eval_views.take(slice(0, 40))).onnx


@pytest.fixture(scope="session")
def int8_onnx(engines_dir: Path, fp32_onnx: Path, calib_npz: Path, eval_views: ViewSet) -> Path:
    from engines.quantize import quantize_int8

    report = quantize_int8(
        fp32_onnx,
        calib_npz,
        engines_dir / "model-int8.onnx",
        eval_views,
        method="minmax",
        keep_fp32="none",
        max_top1_drop=100,
        latency_batches=(),
    )
    return report.onnx
