"""The CLIP teacher on a real (tiny, randomly initialised) open_clip model saved as local weights.

The model is built and saved here, then loaded back only through the paths users take
(``local-dir:DIR`` and built-in name + checkpoint file), with every socket connection refused.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import shared_path
from train.teachers.clip import ClipTeacher, import_open_clip, resolve_weights
from train.teachers.prior import load_prior
from train.teachers.torchvision_compat import compiled_ops_load, ensure_torchvision_importable

TINY_NAME = "Affectline-Tiny-CLIP"
# A 2-layer ViT on 32 px and a 2-layer text tower; CLIP's BPE vocabulary, so the real tokenizer applies.
TINY_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
# Not CLIP's constants: shows the teacher normalises as the model's own config says.
TINY_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}


def _open_clip() -> ModuleType:
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip_torch not installed (it is in the `train` extra: scripts/setup.sh train)")
    return import_open_clip()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A seeded tiny CLIP saved both ways: an open_clip folder and a named config + weights file."""
    open_clip = _open_clip()
    root = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    source = open_clip.CLIP(**TINY_CFG).eval()
    folder = root / "folder"
    folder.mkdir()
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": TINY_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(folder / "open_clip_model.safetensors"))
    # A built-in name is a config in open_clip's registry; this one is registered the way users add theirs.
    (root / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root / f"{TINY_NAME}.json")
    torch.save(source.state_dict(), root / "tiny.pt")
    return {"source": source, "folder": folder, "file": root / "tiny.pt", "open_clip": open_clip}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse every socket connection: loading must not touch the network."""

    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield


def _teacher(tiny: dict[str, Any], way: str) -> ClipTeacher:
    if way == "local-dir":
        return ClipTeacher(f"local-dir:{tiny['folder']}")
    return ClipTeacher(TINY_NAME, tiny["file"])


@pytest.mark.parametrize("way", ["local-dir", "name+file"])
def test_clip_teacher_loads_local_weights(tiny_clip: dict[str, Any], offline: None, way: str) -> None:
    teacher = _teacher(tiny_clip, way)
    source = tiny_clip["source"]
    loaded = teacher.model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in source.state_dict().items())
    tokens = tiny_clip["open_clip"].get_tokenizer("ViT-B-32")(list(load_prior().texts))
    with torch.no_grad():
        expected_texts = F.normalize(source.encode_text(tokens), dim=1)
    assert teacher.texts.shape == (7, 32)
    torch.testing.assert_close(teacher.texts, expected_texts)


@pytest.mark.parametrize("way,mean", [("local-dir", 0.5), ("name+file", 0.48145466)])
def test_clip_teacher_embeds_scene_as_the_model_expects(
    tiny_clip: dict[str, Any], offline: None, way: str, mean: float
) -> None:
    teacher = _teacher(tiny_clip, way)
    assert teacher.size == (32, 32) and teacher.mean[0, 0, 0, 0].item() == pytest.approx(mean)
    gen = torch.Generator().manual_seed(1)
    person, scene = torch.rand(3, 3, 64, 64, generator=gen), torch.rand(3, 3, 32, 32, generator=gen)
    e = teacher(person, scene)
    assert e.shape == (3, 32) and not e.requires_grad
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    # At the model's own size the resize is the identity, so this is exactly open_clip's forward.
    with torch.no_grad():
        expected = F.normalize(tiny_clip["source"].encode_image((scene - teacher.mean) / teacher.std), dim=1)
    torch.testing.assert_close(e, expected)
    # Only the scene view counts; a larger scene is resized to the model's size.
    assert torch.equal(teacher(torch.zeros_like(person), scene), e)
    assert teacher(person, torch.rand(3, 3, 64, 64, generator=gen)).shape == (3, 32)


def test_clip_teacher_is_frozen_and_deterministic(tiny_clip: dict[str, Any], offline: None) -> None:
    teacher = _teacher(tiny_clip, "local-dir")
    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    scene = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    first = teacher(scene, scene)
    assert torch.equal(first, teacher(scene, scene))
    assert torch.equal(first, _teacher(tiny_clip, "local-dir")(scene, scene))


@pytest.mark.parametrize(
    "name,checkpoint,error,match",
    [
        ("", None, ValueError, "needs local weights"),
        (TINY_NAME, None, ValueError, "needs local weights"),
        (TINY_NAME, "missing.pt", FileNotFoundError, "does not exist"),
        ("local-dir:nowhere", None, FileNotFoundError, "open_clip_config.json"),
        ("local-dir:empty", None, FileNotFoundError, "no weights file"),
        ("local-dir:empty", "tiny.pt", ValueError, "given twice"),
    ],
)
def test_resolve_weights_refuses_missing_weights(
    tmp_path: Path, name: str, checkpoint: str | None, error: type[Exception], match: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "open_clip_config.json").write_text("{}")
    name = name.replace("local-dir:", f"local-dir:{tmp_path}/")
    with pytest.raises(error, match=match):
        resolve_weights(name, tmp_path / checkpoint if checkpoint else None)


def test_resolve_weights_passes_local_paths(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "open_clip_config.json").write_text("{}")
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    assert resolve_weights("ViT-B-32", tmp_path / "w.pt") == str(tmp_path / "w.pt")
    assert resolve_weights(f"local-dir:{tmp_path}", None) is None


def test_torchvision_imports_beside_this_torch() -> None:
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision not installed (it comes with open_clip_torch in the `train` extra)")
    ensure_torchvision_importable()
    import torchvision.transforms  # noqa: F401  (the part open_clip and transformers need)

    ops = compiled_ops_load()
    assert torchvision.extension._has_ops() is ops
    if not ops:
        with pytest.raises(RuntimeError, match="Couldn't load custom C\\+\\+ ops"):
            torchvision.ops.nms(torch.rand(2, 4), torch.rand(2), 0.5)


def test_pretrain_with_clip_teacher(tiny_clip: dict[str, Any], offline: None, tmp_path: Path) -> None:
    from train.checkpoint import load_checkpoint
    from train.main_pretrain import PretrainConfig
    from train.main_pretrain import run as pretrain

    cfg = PretrainConfig(
        data=[f"expw:{shared_path('data', 'expw')}"],
        out=str(tmp_path),
        teacher="clip",
        clip_model=f"local-dir:{tiny_clip['folder']}",
        max_samples=8,
        max_steps=2,
        batch_size=4,
        threads=1,
        warmup_steps=1,
    )
    pretrain(cfg)
    with open(tmp_path / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["global_step"] == "2"
    # Semantic guidance ran against the CLIP teacher (both losses are 0 without a teacher).
    assert all(0 < float(rows[-1][k]) < 2 for k in ("l1_profile", "l2_embed"))
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["config"]["teacher"] == "clip"
    assert state["extra"]["heads"]["pretrain_model"]["proj.weight"].shape[0] == 32
