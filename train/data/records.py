"""Dataset readers: every supported format becomes a list of ``Sample`` records.

A record says where the image is, which box anchors its views (a face, or ``None`` = the whole
image) and whatever labels exist. Readers check every line at the boundary and tell two kinds of
fault apart:

- A file that is not the format it claims (a missing file or header, a line with the wrong number
  of fields, FER+ vote counts that are not finite non-negative numbers) raises ``DataError`` naming
  file and line: training on a misread file would give silently wrong numbers.
- In the published datasets, a well-formed line whose sample is unusable (a missing image, an empty
  box, a label or rating out of range) is skipped and counted in the returned ``ReadReport``, never
  silently dropped.
- A manifest is the user's own file, so any bad field in it (label, box) raises: it is fixed, not
  trained around. Its images are checked when they are read (``train.data.dataset``).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# FER+ vote columns, in the order of label.csv / fer2013new.csv.
FERPLUS_VOTES = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
_FERPLUS_TO_OURS = {
    "neutral": "neutral",
    "happiness": "happy",
    "surprise": "surprise",
    "sadness": "sad",
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
}
# FER2013 integer labels 0..6 are already in CLASSES order (the Kaggle challenge order).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""


@dataclass(frozen=True)
class Sample:
    """One training/evaluation sample.

    Attributes:
        image: Image file path, or ``fer2013.csv#<row>`` for pixels stored inline (``pixels`` set).
        box: Anchor box (x1, y1, x2, y2) in pixels — the face when known; ``None`` = whole image.
        label: Hard class index into ``CLASSES`` (majority), or -1 when unknown.
        dist: (7,) class distribution (soft target) or ``None``.
        va: (valence, arousal) in [-1, 1], or ``None``.
        source: Dataset name, for per-source weights and reports.
        pixels: (H, W) uint8 image when the format stores pixels inline (FER2013 CSV).
        tight_face: The image is itself a tight face crop with no context (FER2013/FER+).
        origin: ``file:line`` of the record that produced the sample, for error messages.
        split: The official split the record belongs to (``train``/``val``/``test``) when the format
            names one (FER2013 ``Usage``); empty when it does not.
    """

    image: str
    box: tuple[float, float, float, float] | None = None
    label: int = -1
    dist: tuple[float, ...] | None = None
    va: tuple[float, float] | None = None
    source: str = ""
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)
    tight_face: bool = False
    origin: str = ""
    split: str = ""


@dataclass
class ReadReport:
    """What a reader kept and skipped (reason → list of "file:line" places).

    ``part`` names the split the file holds when it holds one (a FER+ split folder), else is empty.
    """

    source: str
    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    part: str = ""

    def skip(self, reason: str, where: str) -> None:
        self.skipped.setdefault(reason, []).append(where)

    def summary(self) -> str:
        parts = [f"{self.source}: kept {self.kept}"]
        for reason, places in self.skipped.items():
            parts.append(f"skipped {len(places)} ({reason}; first: {places[0]})")
        return ", ".join(parts)


def _require(path: Path, what: str, kind: str = "") -> Path:
    """``path`` if it exists (and is a ``kind`` of ``file``/``dir`` when given).

    Raises:
        DataError: it does not exist, or is a folder where a file is needed or the reverse.
    """
    if not path.exists():
        raise DataError(f"{what}: {path} does not exist")
    if kind == "file" and not path.is_file():
        raise DataError(f"{what}: {path} is a folder; expected a file")
    if kind == "dir" and not path.is_dir():
        raise DataError(f"{what}: {path} is a file; expected a folder")
    return path


def finite_floats(values: Iterable[str]) -> list[float]:
    """Parse numbers, refusing NaN and infinities (they pass every range check unnoticed).

    Raises:
        ValueError: a value is not a number or not finite.
    """
    out = [float(v) for v in values]
    if not all(math.isfinite(x) for x in out):
        raise ValueError(f"not finite: {out}")
    return out


def ferplus_votes_to_dist(votes: np.ndarray) -> np.ndarray | None:
    """10 FER+ vote counts → 7-class distribution in ``CLASSES`` order (contempt/unknown/NF dropped).

    Returns ``None`` when no vote falls in the 7 classes.
    """
    out = np.zeros(len(CLASSES), np.float32)
    for name, count in zip(FERPLUS_VOTES, votes, strict=True):
        if name in _FERPLUS_TO_OURS:
            out[CLASSES.index(_FERPLUS_TO_OURS[name])] += count
    total = out.sum()
    return out / total if total > 0 else None


def ferplus_majority(votes: np.ndarray) -> int:
    """Hard FER+ label: the most-voted of the 10 columns; -1 if that is contempt/unknown/NF."""
    name = FERPLUS_VOTES[int(np.argmax(votes))]
    return CLASSES.index(_FERPLUS_TO_OURS[name]) if name in _FERPLUS_TO_OURS else -1


def read_ferplus_folder(
    folder: Path | str, exclude: set[str] | None = None
) -> tuple[list[Sample], ReadReport]:
    """FER+ split folder (``FER2013Train`` etc.) with its header-less ``label.csv``.

    Args:
        folder: The split folder holding ``label.csv`` and the PNGs.
        exclude: Relative names ``<folder name>/<file>`` to leave out (e.g. train duplicates).
    """
    folder = Path(folder)
    label_csv = _require(Path(folder) / "label.csv", "FER+ folder", "file")
    report = ReadReport(f"ferplus:{folder.name}")
    samples = []
    with open(label_csv, newline="", encoding="utf-8-sig") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            where = f"{label_csv}:{lineno}"
            if len(row) != 12:
                raise DataError(f"{where}: expected file, box and 10 votes (12 fields), got {len(row)}")
            if exclude and f"{folder.name}/{row[0]}" in exclude:
                report.skip("duplicate of a train image", where)
                continue
            votes = _ferplus_votes(row[2:], where)
            dist = ferplus_votes_to_dist(votes)
            if dist is None:
                report.skip("no vote in the 7 classes", where)
                continue
            path = folder / row[0]
            if not path.exists():
                report.skip("image file missing", where)
                continue
            samples.append(
                Sample(
                    image=str(path),
                    label=ferplus_majority(votes),
                    dist=tuple(dist.tolist()),
                    source="ferplus",
                    tight_face=True,
                    origin=where,
                )
            )
    report.kept = len(samples)
    return samples, report


def _ferplus_votes(fields: list[str], where: str) -> np.ndarray:
    """The 10 vote counts of a FER+ row.

    Raises:
        DataError: a count is not a finite non-negative number (names ``where``).
    """
    try:
        votes = np.array(finite_floats(fields), np.float32)
    except (TypeError, ValueError):
        raise DataError(f"{where}: vote counts must be finite numbers, got {fields}") from None
    if votes.min() < 0:
        raise DataError(f"{where}: vote counts must not be negative, got {fields}")
    return votes


def read_ferplus_duplicates(csv_path: Path | str) -> set[str]:
    """Valid/Test images with a copy in Train (``test_val_images_duplicated_in_train.csv``)."""
    path = _require(Path(csv_path), "FER+ duplicates file")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "eval_image" not in reader.fieldnames:
            raise DataError(f"{path}:1: header must contain 'eval_image'")
        return {row["eval_image"] for row in reader}


# FER2013's Usage column: Training, PublicTest (the FER+ Valid images), PrivateTest (FER+ Test).
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def read_fer2013_csv(csv_path: Path | str) -> tuple[list[Sample], ReadReport]:
    """Kaggle ``fer2013.csv`` (emotion, pixels[, Usage]); pixels are kept inline.

    Each sample's ``split`` follows its ``Usage`` (``FER2013_USAGE``), so a training run never
    trains on the PublicTest/PrivateTest rows; without a ``Usage`` column it stays empty.
    """
    path = _require(Path(csv_path), "FER2013 CSV", "file")
    report = ReadReport("fer2013")
    samples = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        _require_columns(path, reader.fieldnames, ["emotion", "pixels"])
        has_usage = "Usage" in (reader.fieldnames or [])
        for row in reader:
            lineno = reader.line_num  # of the row's last line: csv skips blank lines
            where = f"{path}:{lineno}"
            if has_usage and row.get("Usage") not in FER2013_USAGE:
                report.skip(f"Usage not one of {sorted(FER2013_USAGE)}", where)
                continue
            try:
                label = int(row["emotion"])
            except (ValueError, TypeError):
                report.skip("unparsable emotion", where)
                continue
            if not 0 <= label < len(CLASSES):
                report.skip(f"label outside 0..{len(CLASSES) - 1}", where)
                continue
            face, why = _fer2013_pixels(row["pixels"])
            if face is None:
                report.skip(why, where)
                continue
            samples.append(
                Sample(
                    image=f"{path}#{lineno}",
                    label=label,
                    source="fer2013",
                    pixels=face,
                    tight_face=True,
                    origin=where,
                    split=FER2013_USAGE[row["Usage"]] if has_usage else "",
                )
            )
    report.kept = len(samples)
    return samples, report


# FER+ split folders by FER2013 Usage (the duplicates file names images as <folder>/<file>).
_FERPLUS_FOLDER = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}


def read_ferplus_csv(new_csv: Path | str) -> tuple[list[Sample], list[ReadReport]]:
    """FER+ as its authors distribute it: ``fer2013new.csv`` (Usage, Image name, 10 votes per row)
    beside the Kaggle ``fer2013.csv``, whose row *i* holds the pixels of its row *i*.

    Rows without an image name (FER+ removed them: no face) are skipped and counted, as are rows
    without a vote in the 7 classes, rows with unusable pixels and Valid/Test images listed in a
    ``test_val_images_duplicated_in_train.csv`` beside the file. Each sample's ``split`` follows
    ``Usage``; so does the report its row is counted in (one per split, as for the FER+ folders).

    Raises:
        DataError: ``fer2013.csv`` is missing, a header lacks a column, a vote is not a finite
            non-negative number, or the two files are not row-aligned (row counts or Usage differ).
    """
    new_csv = _require(Path(new_csv), "FER+ label file", "file")
    pixels_csv = _require(new_csv.parent / "fer2013.csv", f"Kaggle fer2013.csv beside {new_csv.name}", "file")
    dup_file = new_csv.parent / "test_val_images_duplicated_in_train.csv"
    dups = read_ferplus_duplicates(dup_file) if dup_file.exists() else set()
    reports = {
        part: ReadReport(f"ferplus:{new_csv.name}:{part}", part=part) for part in ("train", "val", "test")
    }
    samples = []
    with (
        open(new_csv, newline="", encoding="utf-8-sig") as fh,
        open(pixels_csv, newline="", encoding="utf-8-sig") as ph,
    ):
        labels, pixels = csv.DictReader(fh), csv.DictReader(ph)
        _require_columns(new_csv, labels.fieldnames, ["Usage", "Image name", *FERPLUS_VOTES])
        _require_columns(pixels_csv, pixels.fieldnames, ["pixels", "Usage"])
        for record, (row, pix) in enumerate(itertools.zip_longest(labels, pixels), 1):
            where = f"{new_csv}:{labels.line_num}"
            if row is None or pix is None or row["Usage"] != pix["Usage"]:
                raise DataError(
                    f"{where}: record {record} has no match in {pixels_csv} (Usage or record count "
                    "differs); the two files must be complete and in the same order"
                )
            part = FER2013_USAGE.get(row["Usage"], "")
            report = reports.setdefault(part, ReadReport(f"ferplus:{new_csv.name}", part=part))
            sample = _ferplus_csv_row(row, pix["pixels"], where, dups, report)
            if sample is not None:
                samples.append(sample)
                report.kept += 1
    return samples, list(reports.values())


def _require_columns(path: Path, header: Sequence[str] | None, need: list[str]) -> None:
    """Raises ``DataError`` (naming the file's line 1) if ``header`` lacks a column of ``need``."""
    if header is None or not set(need) <= set(header):
        raise DataError(f"{path}:1: header must contain {need}, got {header}")


def _ferplus_csv_row(
    row: dict[str, str], pixels: str, where: str, dups: set[str], report: ReadReport
) -> Sample | None:
    """One ``fer2013new.csv`` row with its pixels, or ``None`` (counted in ``report``) when unusable."""
    if row["Usage"] not in FER2013_USAGE:
        report.skip(f"Usage not one of {sorted(FER2013_USAGE)}", where)
        return None
    if not row["Image name"]:
        report.skip("no image name (FER+ found no face)", where)
        return None
    if f"{_FERPLUS_FOLDER[row['Usage']]}/{row['Image name']}" in dups:
        report.skip("duplicate of a train image", where)
        return None
    votes = _ferplus_votes([row[v] for v in FERPLUS_VOTES], where)
    dist = ferplus_votes_to_dist(votes)
    if dist is None:
        report.skip("no vote in the 7 classes", where)
        return None
    face, why = _fer2013_pixels(pixels)
    if face is None:
        report.skip(why, where)
        return None
    return Sample(
        image=f"{where}#{row['Image name']}",
        label=ferplus_majority(votes),
        dist=tuple(dist.tolist()),
        source="ferplus",
        pixels=face,
        tight_face=True,
        origin=where,
        split=FER2013_USAGE[row["Usage"]],
    )


def _fer2013_pixels(text: str | None) -> tuple[np.ndarray | None, str]:
    """A FER2013 ``pixels`` field as ((48, 48) uint8 face, ""), or (None, why it is not one)."""
    try:
        pix = np.array([int(v) for v in (text or "").split()], np.int64)
    except ValueError:
        return None, "unparsable pixels"
    if pix.size != 48 * 48:
        return None, "pixels are not 48x48"
    if pix.min() < 0 or pix.max() > 255:
        return None, "pixel value outside 0..255"
    return pix.astype(np.uint8).reshape(48, 48), ""


def read_image_folder(root: Path | str, tight_face: bool = False) -> tuple[list[Sample], ReadReport]:
    """Class-per-folder layout ``root/<class>/*.png``.

    Folder names must be in ``CLASSES``; other folders raise so a typo cannot silently drop a class.

    Args:
        root: The folder holding one sub-folder per class.
        tight_face: Every image is a tight face crop without context, as in the FER2013 image-folder
            release (source kind ``fer2013folder``); views are then framed as for FER+.
    """
    root = _require(Path(root), "image folder root", "dir")
    report = ReadReport(f"folder:{root.name}")
    samples = []
    # Hidden folders (.ipynb_checkpoints, .git) are tool litter, not a misspelt class.
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in CLASSES:
            raise DataError(f"{sub}: folder name {sub.name!r} is not a class; allowed {CLASSES}")
        label = CLASSES.index(sub.name)
        for img in sorted(sub.iterdir()):
            if img.suffix.lower() in IMAGE_SUFFIXES and img.is_file():
                samples.append(Sample(str(img), None, label, None, None, "folder", tight_face=tight_face))
            elif not img.name.startswith("."):
                report.skip(f"not an image file ({', '.join(IMAGE_SUFFIXES)})", str(img))
    report.kept = len(samples)
    return samples, report


def read_expw(root: Path | str) -> tuple[list[Sample], ReadReport]:
    """ExpW ``label.lst``: ``image face_id top left right bottom confidence label`` per face."""
    root = Path(root)
    lst = _require(root / "label.lst", "ExpW root", "file")
    report = ReadReport("expw")
    samples = []
    with open(lst, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            where = f"{lst}:{lineno}"
            # The name may contain spaces: the 7 numbers are the last fields.
            parts = line.strip().rsplit(maxsplit=7)
            if not parts:
                continue
            if len(parts) != 8:
                raise DataError(
                    f"{where}: expected 8 fields (image face_id top left right bottom conf label), "
                    f"got {len(parts)}"
                )
            if not parts[1].isdigit():  # a field missing: the name would have absorbed the face id
                raise DataError(f"{where}: face_id {parts[1]!r} is not a number; expected 8 fields")
            try:
                top, left, right, bottom = finite_floats(parts[2:6])
                label = int(parts[7])
            except ValueError:
                report.skip("unparsable or non-finite box, or unparsable label", where)
                continue
            if not 0 <= label < len(CLASSES):
                report.skip(f"label outside 0..{len(CLASSES) - 1}", where)
                continue
            if right <= left or bottom <= top or left < 0 or top < 0:
                report.skip("empty or negative box", where)
                continue
            path = root / "Images" / parts[0]
            if not path.exists():
                report.skip("image file missing", where)
                continue
            samples.append(
                Sample(str(path), (left, top, right, bottom), label, None, None, "expw", origin=where)
            )
    report.kept = len(samples)
    return samples, report


# Emotion6 rater columns are anger, disgust, fear, joy, sadness, surprise, neutral = CLASSES order.
def read_emotion6(root: Path | str) -> tuple[list[Sample], ReadReport]:
    """Emotion6 ``ground_truth.txt``: image, valence 1–9, arousal 1–9, 7-way rater distribution."""
    root = Path(root)
    gt = _require(root / "ground_truth.txt", "Emotion6 root", "file")
    report = ReadReport("emotion6")
    samples = []
    with open(gt, encoding="utf-8-sig") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        if len(header) != 10:
            raise DataError(f"{gt}:1: expected 10 tab-separated columns, got {len(header)}")
        if _is_number(header[1]):
            raise DataError(f"{gt}:1: expected the header line ([image_filename] [valence] ...); got data")
        for lineno, line in enumerate(fh, 2):
            where = f"{gt}:{lineno}"
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 10:
                raise DataError(f"{where}: expected 10 tab-separated fields, got {len(parts)}")
            try:
                v, a, *dist = finite_floats(parts[1:])
            except ValueError:
                report.skip("unparsable or non-finite number", where)
                continue
            if not (1 <= v <= 9 and 1 <= a <= 9) or min(dist) < 0 or sum(dist) <= 0:
                report.skip("valence/arousal outside 1..9 or invalid distribution", where)
                continue
            path = root / "images" / parts[0]
            if not path.exists():
                report.skip("image file missing", where)
                continue
            d = np.array(dist, np.float32) / sum(dist)
            samples.append(
                Sample(
                    image=str(path),
                    label=int(np.argmax(d)),
                    dist=tuple(d.tolist()),
                    va=((v - 5) / 4, (a - 5) / 4),
                    source="emotion6",
                    origin=where,
                )
            )
    report.kept = len(samples)
    return samples, report


def _is_number(text: str) -> bool:
    """Whether ``text`` parses as a float (a data row where a header belongs)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_manifest(csv_path: Path | str) -> tuple[list[Sample], ReadReport]:
    """Generic manifest CSV with header ``image,label[,x1,y1,x2,y2]``.

    ``image`` is relative to the manifest's folder (or absolute); ``label`` is a class name or
    index, empty for unlabelled; the box (all four or none) anchors the views, none = whole image.
    Box validity against the image size is checked when the image is loaded.
    """
    path = _require(Path(csv_path), "manifest", "file")
    report = ReadReport(f"manifest:{path.name}")
    samples = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in ("image", "label") if c not in cols]
        if missing:
            raise DataError(
                f"{path}:1: manifest header lacks column(s) {missing}; need image,label[,x1,y1,x2,y2]"
            )
        box_cols = [c for c in ("x1", "y1", "x2", "y2") if c in cols]
        if box_cols and len(box_cols) != 4:
            raise DataError(f"{path}:1: box columns must be all of x1,y1,x2,y2, got {box_cols}")
        for row in reader:
            lineno = reader.line_num  # of the row's last line: csv skips blank lines
            extra, short = row.get(None) or [], sum(v is None for v in row.values())
            if extra or short:  # csv files extra fields under the key None and fills short rows with None
                raise DataError(
                    f"{path}:{lineno}: expected {len(cols)} fields ({','.join(cols)}), "
                    f"got {len(cols) + len(extra) - short}"
                )
            samples.append(_manifest_row(row, lineno, path, bool(box_cols)))
    report.kept = len(samples)
    return samples, report


def _manifest_row(row: dict[str, str], lineno: int, path: Path, has_box: bool) -> Sample:
    where = f"{path}:{lineno}"
    if not row.get("image"):
        raise DataError(f"{where}: empty 'image'")
    img = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
    label = _parse_label(row.get("label") or "", where)
    box = None
    if has_box and any(row.get(c) for c in ("x1", "y1", "x2", "y2")):
        try:
            x1, y1, x2, y2 = finite_floats(row[c] for c in ("x1", "y1", "x2", "y2"))
        except (TypeError, ValueError):
            raise DataError(
                f"{where}: box x1,y1,x2,y2 must be finite numbers, got "
                f"{[row.get(c) for c in ('x1', 'y1', 'x2', 'y2')]}"
            ) from None
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"{where}: box ({x1}, {y1}, {x2}, {y2}) is empty (need x2 > x1 and y2 > y1)")
        box = (x1, y1, x2, y2)
    return Sample(str(img), box, label, None, None, f"manifest:{path.name}", origin=where)


def _parse_label(text: str, where: str) -> int:
    text = text.strip()
    if not text:
        return -1
    if text in CLASSES:
        return CLASSES.index(text)
    if text.isascii() and text.isdigit() and int(text) < len(CLASSES):
        return int(text)
    raise DataError(f"{where}: label {text!r} not in {CLASSES} (or 0..{len(CLASSES) - 1})")


def read_unlabelled(root: Path | str) -> tuple[list[Sample], ReadReport]:
    """All images under a folder (recursively), unlabelled, for pretraining."""
    root = _require(Path(root), "unlabelled image folder", "dir")
    report = ReadReport(f"unlabelled:{root.name}")
    samples = [
        Sample(str(p), None, -1, None, None, "unlabelled")
        for p in sorted(root.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    report.kept = len(samples)
    return samples, report


def read_video(path: Path | str, every: int = 10, max_frames: int = 500) -> tuple[list[Sample], ReadReport]:
    """Every ``every``-th frame of a video as an unlabelled sample (RGB pixels kept inline).

    Raises:
        DataError: the file is missing or OpenCV cannot decode a single frame.
    """
    import cv2

    path = _require(Path(path), "video", "file")
    cap = cv2.VideoCapture(str(path))
    report = ReadReport(f"video:{path.name}")
    samples: list[Sample] = []
    index = 0
    try:
        while len(samples) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if index % every == 0:
                samples.append(
                    Sample(
                        f"{path}#frame{index}",
                        None,
                        -1,
                        None,
                        None,
                        "video",
                        pixels=cv2.cvtColor(frame, cv2.COLOR_BGR2RGB),
                    )
                )
            index += 1
    finally:
        cap.release()
    if not samples:
        raise DataError(f"{path}: no decodable video frame")
    report.kept = len(samples)
    return samples, report
