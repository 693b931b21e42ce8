"""Model factory, shapes, parameter and FLOP budgets, ImageNet initialisation, masking invariants."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from train.models import build_model, view_sizes
from train.models.mobilenetv2 import load_imagenet_features, mobilenet_v2_features
from train.models.pretrain import PretrainModel, patchify, random_keep_mask

PARAM_BUDGET = 10_000_000
FLOP_BUDGET = 1_000_000_000


@pytest.mark.parametrize(
    "name,expected",
    [("affectline_mnv2_64", (64, 64)), ("affectline_mnv2_96_64", (96, 64)), ("affectline_mnv2_32", (32, 32))],
)
def test_view_sizes(name: str, expected: tuple[int, int]) -> None:
    assert view_sizes(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "resnet50",
        "affectline_mnv2_",
        "affectline_mnv2_50",
        "affectline_mnv2_288",
        "affectline_mnv2_64_16",
    ],
)
def test_bad_model_names(name: str) -> None:
    with pytest.raises(ValueError, match="model name"):
        build_model(name, pretrained=False)


@pytest.mark.parametrize("name", ["affectline_mnv2_64", "affectline_mnv2_96_64"])
def test_shapes_params_and_flops_within_budget(name: str) -> None:
    sp, ss = view_sizes(name)
    model = build_model(name, pretrained=False).eval()
    assert sum(p.numel() for p in model.parameters()) <= PARAM_BUDGET
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits, va = model(torch.randn(1, 3, sp, sp), torch.randn(1, 3, ss, ss))
    assert counter.get_total_flops() <= FLOP_BUDGET
    assert logits.shape == (1, 7) and va.shape == (1, 2) and va.abs().max() <= 1


def test_imagenet_weights_load_into_plain_torch_copy() -> None:
    features = mobilenet_v2_features()
    load_imagenet_features(features)
    bn = list(features[0].children())[1]
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.running_var is not None
    assert bn.running_var.mean() != 1.0  # BN statistics came from the file


def test_views_use_different_embeddings() -> None:
    model = build_model("affectline_mnv2_64", pretrained=False).eval()
    with torch.no_grad():
        model.view_embed[1].fill_(0.5)
        x = torch.randn(2, 3, 64, 64)
        a, b = model.pooled(x, x)
        assert not torch.allclose(a, b)


def test_pair_batch_equals_separate_passes_in_eval() -> None:
    model = build_model("affectline_mnv2_64", pretrained=False).eval()
    p, s = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        model.view_embed.normal_()
        a, b = model.pooled(p, s)
        assert torch.allclose(a, model._maps(p, 0, None)[-1].mean(dim=(2, 3)), atol=1e-5)
        assert torch.allclose(b, model._maps(s, 1, None)[-1].mean(dim=(2, 3)), atol=1e-5)


@pytest.mark.parametrize("ratio,grid,masked", [(0.0, 4, 0), (0.6, 4, 10), (0.99, 2, 3), (0.5, 6, 18)])
def test_random_keep_mask_counts(ratio: float, grid: int, masked: int) -> None:
    keep = random_keep_mask(5, grid, ratio, torch.Generator().manual_seed(0))
    assert keep.shape == (5, 1, grid, grid)
    assert ((1 - keep).flatten(1).sum(1) == masked).all()


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_random_keep_mask_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="mask ratio"):
        random_keep_mask(1, 4, ratio)


def test_patchify_roundtrip_order() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    p = patchify(x, 16)
    assert p.shape == (2, 4, 768)
    assert torch.equal(p[1, 1].view(16, 16, 3)[..., 2], x[1, 2, :16, 16:])


@pytest.mark.parametrize("mode,size", [("train", 64), ("eval", 64), ("eval", 96)])
def test_masked_region_does_not_leak(mode: str, size: int) -> None:
    torch.manual_seed(0)
    net = build_model(f"affectline_mnv2_{size}", pretrained=False)
    model = getattr(PretrainModel(net, 32), mode)()
    keep = random_keep_mask(2, size // 16, 0.6, torch.Generator().manual_seed(1))
    person, scene = torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)
    pixel_keep = torch.nn.functional.interpolate(keep, size=(size, size), mode="nearest")
    scene2 = scene * pixel_keep + 50 * torch.randn_like(scene) * (1 - pixel_keep)
    a, b = model(person, scene, keep), model(person, scene2, keep)
    assert torch.equal(a["pred"], b["pred"]) and torch.equal(a["student"], b["student"])
    # ...while a change in a visible patch does reach the output.
    scene3 = scene + 5 * pixel_keep
    assert not torch.equal(a["pred"], model(person, scene3, keep)["pred"])
