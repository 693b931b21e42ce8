"""Dual-view dataset: view geometry consistent with the agent, targets, bad images skipped and counted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE, cut_views
from tests.conftest import shared_path
from train.data.augment import AugmentConfig, jitter_box, photometric, random_erase
from train.data.dataset import DualViewDataset, ImageStore, anchor_box, whole_image_box
from train.data.records import Sample, read_expw, read_ferplus_folder
from train.teachers.prior import load_prior


def _img(path: Path, h: int = 60, w: int = 80) -> str:
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return str(path)


def test_boxed_sample_views_equal_agent_cut_views(tmp_path: Path) -> None:
    path = _img(tmp_path / "a.png")
    s = Sample(path, (20, 10, 40, 34), 3)
    pv, sv = DualViewDataset([s]).views(s, None)
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    apv, asv = cut_views(rgb, np.array([[20, 10, 40, 34]], np.float32), DEFAULT_PERSON, DEFAULT_SCENE)
    np.testing.assert_array_equal(pv, apv[0])
    np.testing.assert_array_equal(sv, asv[0])


@pytest.mark.parametrize("augmented", [False, True])
def test_area_geometry_reaches_training_crops(tmp_path: Path, augmented: bool) -> None:
    """One-pixel stripes seen through large boxes: area-averaged views are flat grey, in training
    (rotated, jittered crops) as at evaluation, and equal to the agent's crops when not augmented."""
    stripes = np.zeros((800, 800, 3), np.uint8)
    stripes[:, ::2] = 255
    path = str(tmp_path / "stripes.png")
    cv2.imwrite(path, stripes)
    s = Sample(path, (250, 250, 550, 550), 3)
    person, scene = (
        dataclasses.replace(g, size=32, resample="area") for g in (DEFAULT_PERSON, DEFAULT_SCENE)
    )
    aug = AugmentConfig(flip=0.0) if augmented else None
    ds = DualViewDataset([s], person, scene, augment=aug)
    pv, sv = ds.views(s, np.random.default_rng(0) if augmented else None)
    assert np.abs(pv.astype(float) - 127.5).mean() < 8
    assert np.abs(sv[8:24, 8:24].astype(float) - 127.5).mean() < 8  # the scene's centre is inside the image
    if not augmented:
        apv, asv = cut_views(stripes, np.array([[250, 250, 550, 550]], np.float32), person, scene)
        np.testing.assert_array_equal(pv, apv[0])
        np.testing.assert_array_equal(sv, asv[0])


def test_tight_face_person_view_is_the_whole_image() -> None:
    samples, _ = read_ferplus_folder(shared_path("data", "ferplus", "FER2013Valid"))
    s = samples[0]
    pv, sv = DualViewDataset([s]).views(s, None)
    grey = cv2.imread(s.image, cv2.IMREAD_GRAYSCALE)
    expected = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert pv.shape == (64, 64, 3) and np.array_equal(pv[:, :, 0], pv[:, :, 2])
    # Same content and framing (crop_square samples without a half-pixel offset, so compare by correlation).
    assert np.corrcoef(pv[:, :, 0].ravel(), expected.ravel())[0, 1] > 0.95
    # The scene view places the face as the agent would: a quarter of the width, grey around it.
    assert (sv[:4] == 114).all()


@pytest.mark.parametrize(
    "box,tight,expected",
    [
        (None, False, None),
        (None, True, [8.0, 6.0, 72.0, 54.0]),
        ((1.0, 2.0, 30.0, 40.0), False, [1, 2, 30, 40]),
    ],
)
def test_anchor_box(
    box: tuple[float, float, float, float] | None, tight: bool, expected: list[float] | None
) -> None:
    got = anchor_box(Sample("x", box, tight_face=tight), np.zeros((60, 80), np.uint8))
    if expected is None:
        assert got is None
    else:
        assert got is not None and np.allclose(got, expected)


def test_box_overshooting_by_rounding_is_clipped() -> None:
    got = anchor_box(Sample("x", (40.0, 30.0, 81.5, 61.0)), np.zeros((60, 80), np.uint8))
    assert got is not None and np.allclose(got, [40, 30, 80, 60])


def test_whole_image_box_is_square_and_centred() -> None:
    np.testing.assert_allclose(whole_image_box(np.zeros((60, 80, 3))), [0, -10, 80, 70])


@pytest.mark.parametrize(
    "box", [(-5.0, 0.0, 20.0, 20.0), (10.0, 10.0, 200.0, 40.0), (40.0, 30.0, 85.0, 50.0)]
)
def test_box_outside_image_is_skipped_and_counted(
    tmp_path: Path, box: tuple[float, float, float, float]
) -> None:
    s = Sample(_img(tmp_path / "a.png"), box, 1, origin="m.csv:7")
    ds = DualViewDataset([s])
    item = ds[0]
    assert item["valid"] is False and item["has_cls"] is False
    assert "m.csv:7" in ds.bad[s.image] and "outside" in ds.bad[s.image]


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"not an image at all"])
def test_unreadable_or_truncated_image_is_skipped(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    ds = DualViewDataset([Sample(str(path), None, 2)])
    assert ds[0]["valid"] is False and "bad.png" in ds.bad[str(path)]


def test_missing_image_is_skipped(tmp_path: Path) -> None:
    ds = DualViewDataset([Sample(str(tmp_path / "gone.jpg"), None, 2)])
    assert ds[0]["valid"] is False


def test_truncated_real_jpeg_is_skipped(tmp_path: Path) -> None:
    expw, _ = read_expw(shared_path("data", "expw"))
    data = Path(expw[0].image).read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 3])
    ds = DualViewDataset([Sample(str(bad), None, 0)])
    item = ds[0]
    # OpenCV would decode the first third with a grey bottom; the loader refuses it instead of
    # training on a half-grey face, and names the file.
    assert item["valid"] is False and item["person"].shape == (3, 64, 64)
    assert ds.bad == {str(bad): f"{bad}: not a decodable image (truncated or wrong format)"}


def test_targets_use_prior_va_for_faces_and_measured_va_when_present() -> None:
    prior = load_prior()
    ds = DualViewDataset([], class_va=prior.va, prior_va_weight=0.3)
    dist, has, va, w = ds.targets(Sample("x", label=3))
    assert has and w == 0.3 and np.allclose(va, prior.va[3])
    dist, has, va, w = ds.targets(Sample("x", label=-1, va=(0.5, -0.5)))
    assert not has and w == 1.0 and np.allclose(va, [0.5, -0.5])
    _, has, _, w = ds.targets(Sample("x"))
    assert not has and w == 0.0


def test_augmentation_is_deterministic_per_epoch_and_index(tmp_path: Path) -> None:
    s = Sample(_img(tmp_path / "a.png"), (20, 10, 40, 34), 3)
    ds = DualViewDataset([s], augment=AugmentConfig())
    a, b = ds[0], ds[0]
    assert torch.equal(a["person"], b["person"])
    ds.set_epoch(1)
    assert not torch.equal(a["scene"], ds[0]["scene"])


def test_jitter_box_bounds() -> None:
    rng = np.random.default_rng(0)
    box = np.array([10, 10, 30, 30], np.float32)
    for _ in range(50):
        j = jitter_box(box, AugmentConfig(shift=0.1, scale=0.1), rng)
        assert 18 <= j[2] - j[0] <= 22 and abs((j[0] + j[2]) / 2 - 20) <= 2 + 1e-4


def test_photometric_keeps_range_and_shape() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=gen)
    y = photometric(x, AugmentConfig(erase=1.0), gen)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert torch.equal(random_erase(x, 0.0, gen), x)


def test_photometric_stays_on_the_device_of_its_input() -> None:
    # The meta device stands in for CUDA: it too refuses an op that mixes its tensors with
    # non-scalar CPU ones, as the per-sample factors drawn from the CPU generator are.
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16).to("meta")
    y = photometric(x, AugmentConfig(grayscale=0.5, erase=1.0), gen)
    assert y.device == x.device and y.shape == x.shape


def test_image_store_caches_small_images(tmp_path: Path) -> None:
    store = ImageStore()
    s = Sample(_img(tmp_path / "s.png", 20, 20))
    first = store.load(s)
    (tmp_path / "s.png").unlink()
    assert store.load(s) is first


@pytest.mark.parametrize(
    ("stored", "dtype", "expected"),
    [
        (np.full((8, 8), 25700, np.uint16), np.uint16, 100),  # a dark 16-bit image stays dark: 25700/257
        (np.full((8, 8), 65535, np.uint16), np.uint16, 255),
        (np.full((8, 8), 100, np.uint8), np.uint8, 100),
    ],
)
def test_image_depths_convert_at_a_fixed_scale(
    tmp_path: Path, stored: np.ndarray, dtype: type, expected: int
) -> None:
    cv2.imwrite(str(tmp_path / "d.png"), stored)
    assert cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED).dtype == dtype  # really 16-bit on disk
    img = ImageStore().load(Sample(str(tmp_path / "d.png")))
    assert img.dtype == np.uint8 and int(img.max()) == int(img.min()) == expected


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 Exif segment holding one tag: Orientation (0x0112) = ``orientation``."""
    tiff = b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little")
    tiff += (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little")
    tiff += orientation.to_bytes(2, "little") + b"\x00\x00" + (0).to_bytes(4, "little")
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


@pytest.mark.parametrize(("orientation", "shape"), [(1, (100, 200)), (6, (200, 100))])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, shape: tuple[int, int]) -> None:
    """Boxes in a manifest are drawn on the photo as shown, so a rotated phone photo loads rotated."""
    stored = np.zeros((100, 200, 3), np.uint8)
    stored[:, :50] = 255  # white on the left as stored; on top once turned 90 degrees clockwise
    ok, jpeg = cv2.imencode(".jpg", stored)
    (tmp_path / "p.jpg").write_bytes(_with_exif_orientation(jpeg.tobytes(), orientation))
    img = ImageStore().load(Sample(str(tmp_path / "p.jpg")))
    assert img.shape[:2] == shape
    if orientation == 6:
        assert img[:40].mean() > 200 and img[60:].mean() < 50


def test_degrade_augmentation_changes_both_views_and_replays_from_the_seed(tmp_path: Path) -> None:
    """degrade=1: every draw degrades both views (by one kind), the same way again from the same seed."""
    path = _img(tmp_path / "a.png", 200, 200)
    s = Sample(path, (60, 60, 140, 140), 3)
    plain = DualViewDataset([s], augment=AugmentConfig(flip=0.0))
    hit = DualViewDataset([s], augment=AugmentConfig(flip=0.0, degrade=1.0))
    changed = 0
    for seed in range(20):
        clean = plain.views(s, np.random.default_rng(seed))
        again = hit.views(s, np.random.default_rng(seed))
        for a, b in zip(again, hit.views(s, np.random.default_rng(seed)), strict=True):
            np.testing.assert_array_equal(a, b)
        changed += all(not np.array_equal(a, b) for a, b in zip(clean, again, strict=True))
    assert changed >= 18  # a mild JPEG or dark draw can leave a view unchanged only by chance
