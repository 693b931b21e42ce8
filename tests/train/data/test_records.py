"""Dataset readers on the real shared data (skipped when absent) and on bad files made in tmp_path."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_path
from train.data.dataset import ImageStore
from train.data.records import (
    CLASSES,
    DataError,
    ferplus_majority,
    ferplus_votes_to_dist,
    read_emotion6,
    read_expw,
    read_fer2013_csv,
    read_ferplus_csv,
    read_ferplus_duplicates,
    read_ferplus_folder,
    read_image_folder,
    read_manifest,
    read_unlabelled,
    read_video,
)
from train.data.sources import as_train, load_source, parse_spec


@pytest.mark.parametrize(
    "votes,dist,majority",
    [
        ([0, 0, 0, 0, 0, 0, 0, 3, 5, 2], None, -1),  # only contempt/unknown/NF votes
        ([0, 0, 0, 0, 0, 0, 0, 6, 4, 0], None, -1),
        (
            [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],
            {"neutral": 0.4, "sad": 0.1, "angry": 0.3, "disgust": 0.2},
            CLASSES.index("neutral"),
        ),
        ([0, 2, 0, 0, 0, 0, 0, 6, 0, 0], {"happy": 1.0}, -1),  # majority contempt: no hard label
        ([0, 10, 0, 0, 0, 0, 0, 0, 0, 0], {"happy": 1.0}, CLASSES.index("happy")),
    ],
)
def test_ferplus_vote_mapping(votes: list[int], dist: dict[str, float] | None, majority: int) -> None:
    got = ferplus_votes_to_dist(np.array(votes, np.float32))
    if dist is None:
        assert got is None
    else:
        expected = np.zeros(7, np.float32)
        for k, v in dist.items():
            expected[CLASSES.index(k)] = v
        assert got is not None
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert ferplus_majority(np.array(votes, np.float32)) == majority


def test_ferplus_real_counts_and_majority_matches_labels_csv() -> None:
    root = shared_path("data", "ferplus")
    dups = read_ferplus_duplicates(root / "test_val_images_duplicated_in_train.csv")
    assert len(dups) == 603
    test, report = read_ferplus_folder(root / "FER2013Test", exclude=dups)
    assert report.kept == len(test) and len(test) + sum(len(v) for v in report.skipped.values()) == 3573
    with open(root / "labels.csv", newline="") as fh:
        official = {row["relpath"]: row["ferplus_majority"] for row in csv.DictReader(fh)}
    for s in test[:300]:
        name = official[f"FER2013Test/{Path(s.image).name}"]
        assert (CLASSES[s.label] if s.label >= 0 else "other") == (name if name in CLASSES else "other")
        assert s.tight_face and s.dist is not None and abs(sum(s.dist) - 1) < 1e-5


def test_expw_and_emotion6_real() -> None:
    expw, rep = read_expw(shared_path("data", "expw"))
    assert rep.kept == len(expw) > 4000
    assert all(s.box is not None and 0 <= s.label < 7 for s in expw)
    e6, rep6 = read_emotion6(shared_path("data", "emotion6"))
    assert rep6.kept == len(e6) == 1584
    va = np.array([s.va for s in e6])
    assert va.min() >= -1 and va.max() <= 1


def test_expw_split_is_by_image_and_deterministic() -> None:
    spec = f"expw:{shared_path('data', 'expw')}"
    a, b = load_source(spec, 0.2, 0), load_source(spec, 0.2, 0)
    assert [s.image for s in a.test] == [s.image for s in b.test]
    assert not {s.image for s in a.train} & {s.image for s in a.test}
    assert 0.1 < len(a.test) / (len(a.train) + len(a.test)) < 0.3


def test_expw_val_part_comes_from_train_and_leaves_test_alone() -> None:
    spec = f"expw:{shared_path('data', 'expw')}"
    plain, with_val = load_source(spec, 0.2, 0), load_source(spec, 0.2, 0, val_fraction=0.1)
    assert [s.image for s in with_val.test] == [s.image for s in plain.test]
    train, val = {s.image for s in with_val.train}, {s.image for s in with_val.val}
    assert not train & val and not val & {s.image for s in with_val.test}
    assert train | val == {s.image for s in plain.train}
    assert 0.05 < len(with_val.val) / len(plain.train + plain.test) < 0.15


@pytest.mark.parametrize("test_fraction,val_fraction", [(0.5, 0.5), (0.2, -0.1), (1.0, 0.0), (0.2, 1.0)])
def test_bad_split_fractions(tmp_path: Path, test_fraction: float, val_fraction: float) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        load_source(f"expw:{tmp_path}", test_fraction, 0, val_fraction)


def test_video_frames_real() -> None:
    samples, rep = read_video(shared_path("videos", "single_face.mp4"), every=10)
    assert rep.kept == len(samples) > 0 and samples[0].pixels is not None and samples[0].pixels.ndim == 3


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "header lacks column"),
        ("image,x1\na.png,1\n", "lacks column"),
        ("image,label,x1,y1\na.png,happy,1,2\n", "box columns must be all"),
        ("image,label\na.png,joyful\n", r"manifest.csv:2: label 'joyful' not in"),
        ("image,label\na.png,9\n", "label '9' not in"),
        ("image,label,x1,y1,x2,y2\na.png,happy,10,10,5,20\n", r"manifest.csv:2: box .* is empty"),
        ("image,label,x1,y1,x2,y2\na.png,happy,a,b,c,d\n", "must be finite numbers"),
        ("image,label,x1,y1,x2,y2\na.png,happy,nan,10,50,60\n", r"manifest.csv:2: box .* finite numbers"),
        ("image,label,x1,y1,x2,y2\na.png,happy,10,10,inf,60\n", r"manifest.csv:2: box .* finite numbers"),
        ("image,label\n,happy\n", "empty 'image'"),
        ("image,label\na.png\n", r"manifest.csv:2: expected 2 fields \(image,label\), got 1"),
        ("image,label\na.png,happy,3\n", r"manifest.csv:2: expected 2 fields \(image,label\), got 3"),
        ("image,label\na.png,\u00b2\n", "label '\u00b2' not in"),  # a digit to isdigit(), not to int()
    ],
)
def test_manifest_bad_input_names_file_and_line(tmp_path: Path, content: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        read_manifest(_write(tmp_path / "manifest.csv", content))


def test_manifest_good(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "m.csv", "image,label,x1,y1,x2,y2\na.png,happy,1,2,30,40\nb.png,,,,,\nc.png,3,,,,\n"
    )
    samples, rep = read_manifest(path)
    assert [s.label for s in samples] == [3, -1, 3]
    assert samples[0].box == (1, 2, 30, 40) and samples[1].box is None
    assert samples[0].image == str(tmp_path / "a.png") and samples[0].origin.endswith("m.csv:2")


@pytest.mark.parametrize("spec", ["nope:/tmp", "ferplus", "ferplus:/does/not/exist", "manifest:"])
def test_bad_source_spec(spec: str) -> None:
    with pytest.raises(DataError):
        parse_spec(spec)


@pytest.mark.parametrize("reader,sub", [(read_expw, "label.lst"), (read_emotion6, "ground_truth.txt")])
def test_missing_dataset_root(tmp_path: Path, reader: Callable[[Path], object], sub: str) -> None:
    with pytest.raises(DataError, match=sub):
        reader(tmp_path / "absent")


def test_ferplus_label_csv_wrong_fields(tmp_path: Path) -> None:
    _write(tmp_path / "label.csv", 'a.png,"(0, 0, 48, 48)",1,2\n')
    with pytest.raises(DataError, match=r"label.csv:1: expected file, box and 10 votes"):
        read_ferplus_folder(tmp_path)


def test_ferplus_skips_and_counts(tmp_path: Path) -> None:
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((48, 48), np.uint8))
    _write(
        tmp_path / "label.csv",
        "a.png,b,1,0,0,0,0,0,0,0,0,0\nmissing.png,b,1,0,0,0,0,0,0,0,0,0\na.png,b,0,0,0,0,0,0,0,1,1,1\n",
    )
    samples, rep = read_ferplus_folder(tmp_path)
    assert len(samples) == 1
    assert {k: len(v) for k, v in rep.skipped.items()} == {
        "image file missing": 1,
        "no vote in the 7 classes": 1,
    }


def test_expw_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "Images").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "Images" / "x.jpg"), np.zeros((50, 50, 3), np.uint8))
    _write(
        tmp_path / "label.lst", "x.jpg 0 1 2 30 40 9.0 3\nx.jpg 0 1 2 30 40 9.0 8\nx.jpg 0 5 30 2 40 9.0 1\n"
    )
    samples, rep = read_expw(tmp_path)
    assert len(samples) == 1 and samples[0].box == (2.0, 1.0, 30.0, 40.0)
    assert sum(len(v) for v in rep.skipped.values()) == 2
    _write(tmp_path / "label.lst", "x.jpg 0 1 2\n")
    with pytest.raises(DataError, match=r"label.lst:1: expected 8 fields \(.*\), got 4"):
        read_expw(tmp_path)
    _write(
        tmp_path / "label.lst", "x y.jpg 1 2 30 40 9.0 3\n"
    )  # face_id missing: 'y.jpg' would take its place
    with pytest.raises(DataError, match=r"label.lst:1: face_id 'y.jpg' is not a number"):
        read_expw(tmp_path)


def test_fer2013_csv(tmp_path: Path) -> None:
    good = " ".join(["7"] * 2304)
    path = _write(
        tmp_path / "fer2013.csv",
        f"emotion,pixels,Usage\n3,{good},Training\n9,{good},Training\n"
        f"2,1 2 3,Training\n1,{good},PublicTest\n",
    )
    samples, rep = read_fer2013_csv(path)
    assert [(s.label, s.split) for s in samples] == [(3, "train"), (1, "val")]
    assert samples[0].pixels is not None and samples[0].pixels.shape == (48, 48)
    assert sum(len(v) for v in rep.skipped.values()) == 2
    with pytest.raises(DataError, match="header must contain"):
        read_fer2013_csv(_write(tmp_path / "bad.csv", "a,b\n1,2\n"))


def test_fer2013_csv_pixels_outside_0_255_are_skipped_not_wrapped(tmp_path: Path) -> None:
    good = " ".join(["7"] * 2304)
    path = _write(
        tmp_path / "fer2013.csv",
        f"emotion,pixels\n3,{good}\n3,256 {' '.join(['7'] * 2303)}\n3,-1 {' '.join(['7'] * 2303)}\n",
    )
    samples, rep = read_fer2013_csv(path)
    assert len(samples) == 1 and samples[0].split == ""
    assert rep.skipped == {"pixel value outside 0..255": [f"{path}:3", f"{path}:4"]}


def test_fer2013_csv_rows_follow_their_usage(tmp_path: Path) -> None:
    """PublicTest/PrivateTest are the FER+ Valid/Test images: they must never land in training."""
    good = " ".join(["7"] * 2304)
    rows = ["Training", "Training", "PublicTest", "PrivateTest", "Other"]
    body = "".join(f"{i % 7},{good},{u}\n" for i, u in enumerate(rows))
    path = _write(tmp_path / "fer2013.csv", f"emotion,pixels,Usage\n{body}")
    splits = load_source(f"fer2013csv:{path}")
    assert [len(splits.train), len(splits.val), len(splits.test)] == [2, 1, 1]
    trained = as_train(splits, f"fer2013csv:{path}")
    assert [len(trained.train), len(trained.val), len(trained.test)] == [2, 1, 1]
    assert {s.origin for s in trained.test} == {f"{path}:5"}
    assert splits.reports[0].skipped == {
        "Usage not one of ['PrivateTest', 'PublicTest', 'Training']": [f"{path}:6"]
    }


@pytest.mark.parametrize(
    "spec_kind,make,match",
    [
        ("manifest", "dir", "is a folder; manifest reads a file"),
        ("fer2013csv", "dir", "is a folder; fer2013csv reads a file"),
        ("video", "dir", "is a folder; video reads a file"),
        ("folder", "file", "is a file; folder reads a folder"),
        ("expw", "file", "is a file; expw reads a folder"),
        ("unlabelled", "file", "is a file; unlabelled reads a folder"),
        ("manifest", "device", "/dev/null is a device or special file; manifest reads a file"),
    ],
)
def test_source_path_of_the_wrong_kind_is_refused(
    tmp_path: Path, spec_kind: str, make: str, match: str
) -> None:
    target = Path("/dev/null") if make == "device" else tmp_path / "x"
    if make == "dir":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    with pytest.raises(DataError, match=match):
        load_source(f"{spec_kind}:{target}")


def test_manifest_not_utf8_names_the_source(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"image,label\n\xff\xfe.png,happy\n")
    with pytest.raises(DataError, match=r"data source 'manifest:.*m.csv': cannot read .*m.csv: 'utf-8'"):
        load_source(f"manifest:{path}")


@pytest.mark.parametrize(
    "line,reason",
    [
        ("a.jpg\t5\t5\tnan\t0\t0\t0\t1\t0\t0\n", "unparsable or non-finite number"),
        ("a.jpg\tinf\t5\t0\t0\t0\t1\t0\t0\t0\n", "unparsable or non-finite number"),
    ],
)
def test_emotion6_non_finite_numbers_are_skipped(tmp_path: Path, line: str, reason: str) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    header = "\t".join(["[image_filename]", "[valence]", "[arousal]", *"abcdefg"]) + "\n"
    _write(tmp_path / "ground_truth.txt", header + line)
    samples, rep = read_emotion6(tmp_path)
    assert samples == [] and list(rep.skipped) == [reason]


def test_expw_non_finite_box_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "Images").mkdir()
    (tmp_path / "Images" / "a.jpg").write_bytes(b"x")
    _write(tmp_path / "label.lst", "a.jpg 0 nan 2 30 40 50.0 3\n")
    samples, rep = read_expw(tmp_path)
    assert samples == [] and list(rep.skipped) == ["unparsable or non-finite box, or unparsable label"]


def test_ferplus_non_finite_votes_name_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path / "label.csv", 'a.png,"(0, 0, 48, 48)",nan,0,0,0,0,0,0,0,0,0\n')
    with pytest.raises(DataError, match=r"label.csv:1: vote counts must be finite numbers"):
        read_ferplus_folder(tmp_path)


def test_image_folder(tmp_path: Path) -> None:
    import cv2

    for c in ("happy", "sad"):
        (tmp_path / c).mkdir()
        cv2.imwrite(str(tmp_path / c / "1.png"), np.zeros((48, 48), np.uint8))
    samples, _ = read_image_folder(tmp_path)
    assert sorted(s.label for s in samples) == [CLASSES.index("happy"), CLASSES.index("sad")]
    # The generic kind frames photos as they are; fer2013folder marks tight FER2013-style crops.
    assert [s.tight_face for s in load_source(f"folder:{tmp_path}").test] == [False, False]
    assert [s.tight_face for s in load_source(f"fer2013folder:{tmp_path}").test] == [True, True]
    (tmp_path / "joy").mkdir()
    with pytest.raises(DataError, match="'joy' is not a class"):
        read_image_folder(tmp_path)
    assert read_unlabelled(tmp_path)[1].kept == 2


def test_emotion6_bad_values(tmp_path: Path) -> None:
    (tmp_path / "images" / "joy").mkdir(parents=True)
    import cv2

    cv2.imwrite(str(tmp_path / "images" / "joy" / "1.jpg"), np.zeros((40, 40, 3), np.uint8))
    header = "\t".join(["img", "v", "a"] + [f"p{i}" for i in range(7)])
    rows = [
        "joy/1.jpg\t7\t3\t0\t0\t0\t1\t0\t0\t0",
        "joy/1.jpg\t12\t3\t0\t0\t0\t1\t0\t0\t0",
        "joy/1.jpg\tx\t3\t0\t0\t0\t1\t0\t0\t0",
    ]
    samples, rep = read_emotion6(
        _write(tmp_path / "ground_truth.txt", header + "\n" + "\n".join(rows) + "\n").parent
    )
    assert len(samples) == 1 and samples[0].va == (0.5, -0.5) and samples[0].label == CLASSES.index("happy")
    assert sum(len(v) for v in rep.skipped.values()) == 2
    # A line that is not the format (a truncated file) names file and line instead.
    _write(tmp_path / "ground_truth.txt", header + "\n" + rows[0] + "\njoy/1.jpg\tx\n")
    with pytest.raises(DataError, match=r"ground_truth.txt:3: expected 10 tab-separated fields, got 2"):
        read_emotion6(tmp_path)


@pytest.mark.parametrize("bom", ["", "\ufeff"])  # Excel's "CSV UTF-8" starts the file with a BOM
def test_readers_take_a_byte_order_mark(tmp_path: Path, bom: str) -> None:
    import cv2

    (tmp_path / "Images").mkdir()
    cv2.imwrite(str(tmp_path / "Images" / "x.jpg"), np.zeros((50, 50, 3), np.uint8))
    (tmp_path / "label.lst").write_text(bom + "x.jpg 0 1 2 30 40 9.0 3\n", encoding="utf-8")
    (tmp_path / "m.csv").write_text(bom + "image,label\nImages/x.jpg,happy\n", encoding="utf-8")
    assert len(read_expw(tmp_path)[0]) == 1
    assert [s.label for s in read_manifest(tmp_path / "m.csv")[0]] == [CLASSES.index("happy")]


def test_expw_image_names_may_contain_spaces(tmp_path: Path) -> None:
    import cv2

    (tmp_path / "Images").mkdir()
    cv2.imwrite(str(tmp_path / "Images" / "a b.jpg"), np.zeros((50, 50, 3), np.uint8))
    _write(tmp_path / "label.lst", "a b.jpg 0 1 2 30 40 9.0 3\n")
    samples, _ = read_expw(tmp_path)
    assert [Path(s.image).name for s in samples] == ["a b.jpg"]


@pytest.mark.parametrize(
    ("first", "blank", "outcome"),
    [
        ("joy/1.jpg\t7\t3\t0\t0\t0\t1\t0\t0\t0", False, "expected the header line"),  # header missing
        ("[image_filename]\tv\ta\t" + "\t".join("p" * 7), True, 1),  # a blank line is skipped
    ],
)
def test_emotion6_header_and_blank_lines(tmp_path: Path, first: str, blank: bool, outcome: str | int) -> None:
    import cv2

    (tmp_path / "images" / "joy").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "joy" / "1.jpg"), np.zeros((40, 40, 3), np.uint8))
    row = "joy/1.jpg\t7\t3\t0\t0\t0\t1\t0\t0\t0"
    _write(tmp_path / "ground_truth.txt", first + "\n" + ("\n" if blank else "") + row + "\n")
    if isinstance(outcome, str):
        with pytest.raises(DataError, match=f"ground_truth.txt:1: {outcome}"):
            read_emotion6(tmp_path)
    else:
        assert len(read_emotion6(tmp_path)[0]) == outcome


def test_image_folder_ignores_hidden_folders_and_counts_other_files(tmp_path: Path) -> None:
    import cv2

    (tmp_path / "happy").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    cv2.imwrite(str(tmp_path / "happy" / "1.png"), np.zeros((48, 48), np.uint8))
    (tmp_path / "happy" / "notes.txt").write_text("x")
    samples, report = read_image_folder(tmp_path)
    assert len(samples) == 1
    assert [len(v) for v in report.skipped.values()] == [1] and "notes.txt" in report.summary()


def _ferplus_csv_pair(
    root: Path, rows: int, drop_pixel_row: int | None = None, usage_of_row: tuple[int, str] | None = None
) -> Path:
    """The first ``rows`` rows of the real ``fer2013new.csv`` and a ``fer2013.csv`` beside it built
    from the same faces' real PNGs (the layout users have: the Kaggle file plus the FER+ labels).
    ``drop_pixel_row`` deletes a pixel row; ``usage_of_row`` (row, Usage) rewrites one's Usage."""
    import cv2

    lines = shared_path("data", "ferplus", "fer2013new.csv").read_text().splitlines()[: rows + 1]
    pixel_rows = ["emotion,pixels,Usage"]
    for line in lines[1:]:
        usage, name = line.split(",")[:2]
        png = shared_path("data", "ferplus", "FER2013Train", name) if name else None
        face = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE) if png else np.zeros((48, 48), np.uint8)
        pixel_rows.append(f"0,{' '.join(map(str, face.ravel()))},{usage}")
    if drop_pixel_row is not None:
        del pixel_rows[drop_pixel_row]
    if usage_of_row is not None:
        row, usage = usage_of_row
        pixel_rows[row] = pixel_rows[row].rsplit(",", 1)[0] + f",{usage}"
    (root / "fer2013new.csv").write_text("\n".join(lines) + "\n")
    (root / "fer2013.csv").write_text("\n".join(pixel_rows) + "\n")
    return root / "fer2013new.csv"


def test_ferplus_csv_reads_as_the_ferplus_folders_do(tmp_path: Path) -> None:
    samples, reports = read_ferplus_csv(_ferplus_csv_pair(tmp_path, 60))
    folder, _ = read_ferplus_folder(shared_path("data", "ferplus", "FER2013Train"))
    by_name = {Path(s.image).name: s for s in folder}
    train = reports[0]
    assert [r.part for r in reports] == ["train", "val", "test"]  # 60 Training rows: the others empty
    assert len(samples) == train.kept > 40 and sum(len(v) for v in train.skipped.values()) > 0
    assert reports[1].kept == reports[2].kept == 0 and not reports[1].skipped
    for s in samples:
        twin = by_name[s.image.rsplit("#", 1)[1]]
        assert (s.label, s.dist, s.split, s.source, s.tight_face) == (
            twin.label,
            twin.dist,
            "train",
            "ferplus",
            True,
        )
        assert s.pixels is not None and np.array_equal(s.pixels, ImageStore().load(twin))
    assert [s.image for s in load_source(f"ferpluscsv:{tmp_path / 'fer2013new.csv'}").train] == [
        s.image for s in samples
    ]


@pytest.mark.parametrize(
    ("drop", "usage", "with_pixels", "match"),
    [
        (None, None, False, "Kaggle fer2013.csv beside fer2013new.csv"),
        (None, None, True, None),
        (5, None, True, r"fer2013new.csv:11: record 10 has no match in .*fer2013.csv"),  # a row missing
        (None, (3, "PublicTest"), True, r"fer2013new.csv:4: record 3 has no match"),  # rows out of order
    ],
)
def test_ferplus_csv_needs_its_row_aligned_pixel_file(
    tmp_path: Path, drop: int | None, usage: tuple[int, str] | None, with_pixels: bool, match: str | None
) -> None:
    path = _ferplus_csv_pair(tmp_path, 10, drop, usage)
    if match is None:
        assert read_ferplus_csv(path)[0]
        return
    if not with_pixels:
        (tmp_path / "fer2013.csv").unlink()
    with pytest.raises(DataError, match=match):
        read_ferplus_csv(path)
