"""View sets: validation, content hash, and the .npz round trip with tamper detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.viewset import ViewSet, ViewSetError, file_hash

CLASSES = ("a", "b", "c")


def make(n: int = 4, size: int = 4, seed: int = 0) -> ViewSet:
    rng = np.random.default_rng(seed)
    inputs = {
        "person": rng.standard_normal((n, 3, size, size)).astype(np.float32),
        "scene": rng.standard_normal((n, 3, size, size)).astype(np.float32),
    }
    return ViewSet(
        inputs,
        np.arange(n) % 3 - (np.arange(n) == 0),
        np.full(n, 100.0),
        np.array([f"x:{i}" for i in range(n)]),
        CLASSES,
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"inputs": {}}, "is empty"),
        ({"inputs": {"_person": np.zeros((4, 3, 4, 4), np.float32)}}, "reserved"),
        ({"inputs": {"person": np.zeros((4, 3, 4, 4), np.float64)}}, "need float32"),
        ({"inputs": {"person": np.zeros((3, 3, 4, 4), np.float32)}}, r"need float32 \(4, 3, S, S\)"),
        ({"inputs": {"person": np.zeros((4, 1, 4, 4), np.float32)}}, "need float32"),
        ({"brightness": np.zeros(3)}, "must be"),
        ({"labels": np.array([0, 1, 2, 3])}, r"labels must be in \[-1, 2\]"),
        ({"labels": np.array([-2, 0, 0, 0])}, "labels must be in"),
    ],
)
def test_validation(change: dict[str, object], match: str) -> None:
    base = make()
    fields = {
        "inputs": base.inputs,
        "labels": base.labels,
        "brightness": base.brightness,
        "origin": base.origin,
        "classes": CLASSES,
        **change,
    }
    with pytest.raises(ViewSetError, match=match):
        ViewSet(**fields)  # type: ignore[arg-type]


def test_hash_depends_on_inputs_only() -> None:
    a, b = make(), make()
    b.labels[:] = -1
    b.origin[:] = "other"
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != make(seed=1).content_hash()
    renamed = ViewSet(
        {"person": a.inputs["scene"], "scene": a.inputs["person"]}, a.labels, a.brightness, a.origin, CLASSES
    )
    assert renamed.content_hash() != a.content_hash()


def test_round_trip(tmp_path: Path) -> None:
    vs = make(5)
    digest = vs.save(tmp_path / "c.npz")
    back = ViewSet.load(tmp_path / "c.npz")
    assert digest == back.content_hash() == file_hash(tmp_path / "c.npz")
    assert back.classes == CLASSES and list(back.origin) == list(vs.origin)
    np.testing.assert_array_equal(back.inputs["scene"], vs.inputs["scene"])
    np.testing.assert_array_equal(back.labels, vs.labels)
    with np.load(tmp_path / "c.npz") as z:
        assert {"person", "scene", "_labels", "_brightness", "_origin", "_manifest"} == set(z.files)


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    vs = make()
    vs.save(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as z:
        data = dict(z)
    data["person"] = data["person"] + 1
    np.savez(tmp_path / "c.npz", **data)
    with pytest.raises(ViewSetError, match="do not match the recorded sha256"):
        ViewSet.load(tmp_path / "c.npz")


def test_load_rejects_other_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "plain.npz", person=np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ViewSetError, match="lacks"):
        ViewSet.load(tmp_path / "plain.npz")
    with pytest.raises(ViewSetError, match="not a readable"):
        ViewSet.load(tmp_path / "missing.npz")
    (tmp_path / "notes.npz").write_text("a text file")  # np.load would call it a pickle
    with pytest.raises(ViewSetError, match=r"notes\.npz: not a view set \.npz \(not a zip archive\)"):
        ViewSet.load(tmp_path / "notes.npz")
    with pytest.raises(ViewSetError, match="must end in .npz"):
        make().save(tmp_path / "c.npy")


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        ("{not json", "_manifest is not JSON"),
        ("[1, 2]", r"format \[1, 2\], expected 'affectline-viewset-1'"),
        ('{"format": "other"}', "format 'other', expected"),
        (
            '{"format": "affectline-viewset-1", "sha256": "ab"}',
            "_manifest classes None must be a non-empty list",
        ),
        ('{"format": "affectline-viewset-1", "classes": ["a"]}', "_manifest sha256 None must be a string"),
    ],
)
def test_malformed_manifest_names_the_file(tmp_path: Path, manifest: str, match: str) -> None:
    make().save(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as z:
        data = dict(z)
    np.savez(tmp_path / "c.npz", **{**data, "_manifest": np.array(manifest)})
    with pytest.raises(ViewSetError, match=rf"c\.npz: {match}"):
        ViewSet.load(tmp_path / "c.npz")


@pytest.mark.parametrize(("n", "size", "sizes"), [(0, 3, []), (5, 2, [2, 2, 1]), (4, 4, [4]), (3, 10, [3])])
def test_batches(n: int, size: int, sizes: list[int]) -> None:
    vs = make(n) if n else make(1).take(slice(0, 0))
    assert [b["person"].shape[0] for b in vs.batches(size)] == sizes


def test_batches_rejects_zero() -> None:
    with pytest.raises(ViewSetError, match="batch size 0"):
        next(make().batches(0))


def test_take_and_concat() -> None:
    a, b = make(4), make(3, seed=2)
    joined = ViewSet.concat([a, b])
    assert len(joined) == 7 and list(joined.origin[4:]) == list(b.origin)
    np.testing.assert_array_equal(joined.take(np.array([5])).inputs["person"], b.inputs["person"][1:2])
    with pytest.raises(ViewSetError, match="differ in classes or input shapes"):
        ViewSet.concat([a, make(2, size=8)])
    with pytest.raises(ViewSetError, match="at least one"):
        ViewSet.concat([])
