"""Named data sources (``kind:path``) → train / validation / test sample lists.

Kinds: ``ferplus`` (root with FER2013Train/Valid/Test), ``ferpluscsv`` (``fer2013new.csv`` with the
Kaggle ``fer2013.csv`` beside it), ``expw`` (root with label.lst),
``emotion6`` (root with ground_truth.txt), ``fer2013csv`` (Kaggle CSV), ``fer2013folder`` (the
FER2013 image-folder release: class folders of tight 48-px face crops), ``folder`` (class folders of
photos framed as they are), ``manifest`` (CSV image,label[,x1,y1,x2,y2]), ``unlabelled`` (image
folder), ``video`` (every 10th frame of a video file, unlabelled).
ExpW and Emotion6 have no official split here, so a fixed-seed split by image holds out a test part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from train.data import KINDS
from train.data.records import (
    DataError,
    ReadReport,
    Sample,
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
from train.data.splits import split_by_image


@dataclass
class Splits:
    """Samples of one or more sources, by split, plus what each reader skipped."""

    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    reports: list[ReadReport] = field(default_factory=list)

    def readers(self) -> str:
        """What every reader kept and skipped, on one line (for messages about missing samples)."""
        return "; ".join(r.summary() for r in self.reports)

    def extend(self, other: Splits) -> None:
        self.train += other.train
        self.val += other.val
        self.test += other.test
        self.reports += other.reports


# Kinds whose path is one file; the others name a folder.
FILE_KINDS = ("ferpluscsv", "fer2013csv", "manifest", "video")


def parse_spec(spec: str) -> tuple[str, Path]:
    """``kind:path`` → (kind, path).

    Raises:
        DataError: unknown kind, missing path, or a folder where the kind reads a file (or the reverse).
    """
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS or not path:
        raise DataError(f"data source {spec!r}: expected <kind>:<path> with kind in {KINDS}")
    if not Path(path).exists():
        raise DataError(f"data source {spec!r}: path {path} does not exist")
    p = Path(path)
    what = "file" if p.is_file() else "folder" if p.is_dir() else "device or special file"
    wanted = "file" if kind in FILE_KINDS else "folder"
    if what != wanted:
        raise DataError(f"data source {spec!r}: {path} is a {what}; {kind} reads a {wanted}")
    return kind, Path(path)


def load_source(
    spec: str, test_fraction: float = 0.2, split_seed: int = 0, val_fraction: float = 0.0
) -> Splits:
    """Read one source and split it.

    FER+ uses its official Train/Valid/Test (Valid/Test images duplicated in Train removed);
    ExpW and Emotion6 are split by image: ``test_fraction`` of the images to test, then
    ``val_fraction`` (of all images) from the rest to val, so the test part does not depend on
    ``val_fraction``. FER2013 and FER+ CSV rows follow their ``Usage`` column. The other kinds go entirely
    to ``test`` when used for evaluation and to ``train`` otherwise (see ``as_train``).

    Raises:
        DataError: fractions outside [0, 1) or summing to 1 or more; the path does not exist or
            cannot be read (permissions, not UTF-8 text).
    """
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise DataError(
            f"data source {spec!r}: test_fraction={test_fraction}, val_fraction={val_fraction}; "
            "each must be in [0, 1) and their sum below 1"
        )
    kind, path = parse_spec(spec)
    out = Splits()
    if kind == "ferplus":
        dup_file = path / "test_val_images_duplicated_in_train.csv"
        dups = read_ferplus_duplicates(dup_file) if dup_file.exists() else set()
        for split, folder in (("train", "FER2013Train"), ("val", "FER2013Valid"), ("test", "FER2013Test")):
            samples, report = read_ferplus_folder(path / folder, exclude=dups)
            report.part = split
            getattr(out, split).extend(samples)
            out.reports.append(report)
        return out
    readers: dict[str, Callable[[Path], tuple[list[Sample], ReadReport]]] = {
        "expw": read_expw,
        "emotion6": read_emotion6,
        "fer2013csv": read_fer2013_csv,
        "fer2013folder": partial(read_image_folder, tight_face=True),
        "folder": read_image_folder,
        "manifest": read_manifest,
        "unlabelled": read_unlabelled,
        "video": read_video,
    }
    try:
        if kind == "ferpluscsv":  # one report per split, as for the FER+ folders
            samples, reports = read_ferplus_csv(path)
        else:
            samples, report = readers[kind](path)
            reports = [report]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"data source {spec!r}: cannot read {path}: {exc}") from None
    out.reports += reports
    if kind in ("expw", "emotion6"):
        out.train, out.test = split_by_image(samples, test_fraction, split_seed)
        if val_fraction:
            share = val_fraction / (1 - test_fraction)
            out.train, out.val = split_by_image(out.train, share, split_seed, salt="val:")
    else:
        # Records that name their official split (FER2013 Usage) keep it; the rest count as test.
        for s in samples:
            getattr(out, s.split or "test").append(s)
    return out


def as_train(splits: Splits, spec: str) -> Splits:
    """For generic sources used in training, move their samples without an official split to
    ``train``; samples that name one (FER2013 PublicTest/PrivateTest rows) stay where they are."""
    kind, _ = parse_spec(spec)
    if kind in ("ferplus", "expw", "emotion6"):
        return splits
    return Splits(
        train=splits.train + [s for s in splits.test if not s.split],
        val=splits.val,
        test=[s for s in splits.test if s.split],
        reports=splits.reports,
    )
