"""``train.recover``: an FP32 export maps back onto a trainable checkpoint that reproduces the file in
eval mode and, with the measured BatchNorm statistics, in training mode on the same views; files that
cannot map back are refused by name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from calibration.viewset import ViewSet
from edge_agent.cli import build_parser
from edge_agent.infer import BUILTIN_MODELS
from engines.errors import EnginesInputError
from engines.verify import read_meta
from tests.calibration.conftest import SMALL_PERSON, SMALL_SCENE
from tests.conftest import shared_path
from tests.model_factory import make_tiny_model
from train.checkpoint import load_checkpoint, load_model, make_meta, save_checkpoint
from train.config import FinetuneConfig
from train.data.records import CLASSES
from train.models import build_model
from train.recover import RecoverError, conv_bn_pairs, conv_statistics, recover, recover_checkpoint

CONFIG: dict[str, Any] = {
    "model": "affectline_mnv2_32",
    "model_kwargs": {"fusion_dim": 64},
    "test_fraction": 0.2,
    "split_seed": 0,
    "val_fraction": 0.0,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recover")


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    """A checkpoint of the real network whose BatchNorms are far from identity, as after training."""
    torch.manual_seed(0)
    model = build_model(CONFIG["model"], fusion_dim=64, pretrained=True)
    with torch.no_grad():
        for _, bn in conv_bn_pairs(model):
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        model.view_embed.normal_(0, 0.1)
    meta = make_meta(CLASSES, SMALL_PERSON, SMALL_SCENE, CONFIG, "affectline_mnv2_32 test")
    return save_checkpoint(workdir / "trained.pt", model.eval(), None, 0, CONFIG, meta, {})


@pytest.fixture(scope="module")
def specs() -> list[str]:
    return [f"expw:{shared_path('data', 'expw')}", f"ferplus:{shared_path('data', 'ferplus')}"]


@pytest.fixture(scope="module")
def views(trained: Path, specs: list[str]) -> ViewSet:
    from calibration.datasets import dataset_views

    return dataset_views(read_meta(trained), specs, "train", 40)


@pytest.fixture(scope="module")
def views_npz(workdir: Path, views: ViewSet) -> Path:
    path = workdir / "views.npz"
    views.save(path)
    return path


@pytest.fixture(scope="module")
def exported(workdir: Path, trained: Path, views: ViewSet) -> Path:
    from engines.export import export_onnx

    return export_onnx(trained, workdir / "trained.onnx", views.take(slice(0, 8))).onnx


def _outputs(net: torch.nn.Module, views: ViewSet) -> np.ndarray:
    with torch.no_grad():
        logits, _ = net(torch.from_numpy(views.inputs["person"]), torch.from_numpy(views.inputs["scene"]))
    return logits.numpy()


def test_checkpoint_reproduces_the_file_and_keeps_its_identity(
    workdir: Path, trained: Path, exported: Path, views_npz: Path, views: ViewSet
) -> None:
    report = recover_checkpoint(exported, workdir / "back.pt", views_npz)
    assert report.parity.ok and report.parity.max_logit_abs < 1e-4, report.parity.line()
    blob = load_checkpoint(report.checkpoint)
    # The export folded the BatchNorms; the original network name and split come back all the same.
    assert blob["model"] == "affectline_mnv2_32"
    assert blob["config"]["recovered_bn_statistics"]["samples"] == len(views)
    assert blob["extra"]["recovered_parity"]["ok"] is True
    back, meta = load_model(report.checkpoint)
    assert meta == read_meta(exported)
    original, _ = load_model(trained)
    np.testing.assert_allclose(_outputs(back, views), _outputs(original, views), atol=1e-4)


def test_measured_statistics_make_training_mode_start_from_the_file(exported: Path, views: ViewSet) -> None:
    net, _, _ = recover(exported, views)
    reference = _outputs(net, views)
    net.dropout.p = 0.0
    # In training mode BatchNorm normalises with the batch's own statistics. On the very views the
    # statistics were measured on, in one batch, those are the running ones: the same function.
    np.testing.assert_allclose(_outputs(net.train(), views), reference, atol=1e-3)
    with torch.no_grad():  # what an identity BatchNorm (mean 0, variance 1) would be in its place
        for _, bn in conv_bn_pairs(net):
            assert bn.running_mean is not None
            bn.bias.sub_(bn.running_mean)
            bn.weight.fill_((1.0 + bn.eps) ** 0.5)
    assert np.abs(_outputs(net.train(), views) - reference).max() > 0.1


def test_conv_statistics_are_the_moments_of_each_convolution_output(exported: Path, views: ViewSet) -> None:
    net, _, _ = recover(exported, views)
    person, scene = (torch.from_numpy(views.inputs[k]) for k in ("person", "scene"))
    first_conv, _ = next(conv_bn_pairs(net))
    y = first_conv(torch.cat([person, scene])).detach().double()
    mean, var = conv_statistics(net, person, scene, batch=7)[0]  # batches of 7: sums must be exact
    np.testing.assert_allclose(mean.numpy(), y.mean(dim=(0, 2, 3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(
        var.numpy(), y.var(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("garbage", EnginesInputError, "not a readable ONNX file"),
        ("no-metadata", RecoverError, "not an Affectline export"),
        ("not-the-network", RecoverError, "'fuse.bias' is not a stored weight"),
        ("quantized", RecoverError, "a quantized file .*recover from its FP32 source"),
        ("views-of-other-size", EnginesInputError, "--calibration: samples have inputs"),
        ("out-not-pt", RecoverError, "--out=.*must end in .pt"),
    ],
)
def test_files_that_cannot_map_back_are_refused(
    workdir: Path, exported: Path, views_npz: Path, case: str, error: type[Exception], message: str
) -> None:
    model, out, npz = exported, workdir / f"{case}.pt", views_npz
    if case == "garbage":
        model = workdir / "garbage.onnx"
        model.write_bytes(b"not onnx")
    elif case == "no-metadata":
        model = make_tiny_model(workdir / "plain.onnx", props={})
    elif case == "not-the-network":
        model = make_tiny_model(workdir / "tiny.onnx")
    elif case == "quantized":
        model = BUILTIN_MODELS["default-int8"]
    elif case == "views-of-other-size":
        model = BUILTIN_MODELS["default"]
    else:
        out = workdir / "back.onnx"
    with pytest.raises(error, match=message):
        recover_checkpoint(model, out, npz)
    assert not out.exists()


def test_the_shipped_default_maps_back(workdir: Path, specs: list[str]) -> None:
    from calibration.datasets import dataset_views

    model = BUILTIN_MODELS["default"]
    meta = read_meta(model)
    views = dataset_views(meta, specs, "train", 24)
    views.save(workdir / "default-views.npz")
    report = recover_checkpoint(model, workdir / "default.pt", workdir / "default-views.npz")
    assert report.parity.ok and report.parity.max_logit_abs < 1e-4, report.parity.line()
    blob = load_checkpoint(report.checkpoint)
    # The factory of the file's own view sizes, so the test holds whichever default ships.
    person, scene = (spec.geometry.size for spec in meta.inputs)
    assert blob["model"] == f"affectline_mnv2_{person}_{scene}"
    # What a fine-tuning run of it records, or `train soup` refuses to average the two.
    assert blob["model_kwargs"] == FinetuneConfig().model_kwargs


@pytest.mark.parametrize(
    ("model", "code", "stream", "text"),
    [
        ("missing", 2, "err", "^affectline train: model: '.*missing.onnx' is not a file$"),
        ("garbage", 2, "err", "not a readable ONNX file"),
        ("exported", 0, "out", "wrote .*cli.pt: top-1 agreement 100.00% .* OK"),
    ],
)
def test_cli(
    workdir: Path,
    exported: Path,
    views_npz: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    code: int,
    stream: str,
    text: str,
) -> None:
    path = exported
    if model == "missing":
        path = workdir / "missing.onnx"
    elif model == "garbage":
        path = workdir / "garbage-cli.onnx"
        path.write_bytes(b"not onnx")
    args = build_parser().parse_args(
        ["train", "recover", str(path), "--calibration", str(views_npz), "--out", str(workdir / "cli.pt")]
    )
    assert args.func(args) == code
    captured = capsys.readouterr()
    got = captured.out if stream == "out" else captured.err
    assert len(got.strip().splitlines()) == 1
    assert re.search(text, got), got
