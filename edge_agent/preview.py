"""Human-facing outputs: an annotated preview video per camera and a live per-person table.

Neither ever leaves the device: the preview is a local file, the table goes to the terminal.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from edge_agent.config import Preview
from edge_agent.structures import FrameResult

_GREEN, _GREY, _WHITE = (80, 200, 60), (160, 160, 160), (255, 255, 255)


def _label_text(result: FrameResult, i: int) -> str:
    det = result.detections
    assert det.tracker_id is not None
    label_idx = int(det.data["label"][i]) if "label" in det.data else -1
    label = result.labels[label_idx] if 0 <= label_idx < len(result.labels) else "..."
    conf = float(det.data["confidence"][i]) if "confidence" in det.data else 0.0
    return f"#{int(det.tracker_id[i])} {label} {conf:.2f}"


def annotate(result: FrameResult, blur_faces: bool = False) -> np.ndarray:
    """Draw boxes, track ids, labels and a valence/arousal bar on a copy of the frame."""
    img = result.frame.image.copy()
    det = result.detections
    assert det.face_xyxy is not None
    for i in range(len(det)):
        if blur_faces and det.has_face[i]:
            x1, y1, x2, y2 = np.clip(det.face_xyxy[i], 0, [img.shape[1], img.shape[0]] * 2).astype(int)
            if x2 > x1 and y2 > y1:
                img[y1:y2, x1:x2] = cv2.GaussianBlur(img[y1:y2, x1:x2], (0, 0), max(3, (x2 - x1) // 6))
        x1, y1, x2, y2 = det.xyxy[i].astype(int)
        observed = "label" in det.data and int(det.data["label"][i]) >= 0
        color = _GREEN if observed else _GREY
        cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
        if det.has_face[i]:
            fx1, fy1, fx2, fy2 = det.face_xyxy[i].astype(int)
            cv2.rectangle(img, (fx1, fy1), (fx2, fy2), color, 1)
        text = _label_text(result, i)
        cv2.putText(
            img, text, (x1 + 3, max(y1 - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA
        )
        if "valence_arousal" in det.data:
            _va_bars(img, (x1, y2 + 4), det.data["valence_arousal"][i])
    return img


def _va_bars(img: np.ndarray, origin: tuple[int, int], va: np.ndarray) -> None:
    """Two centred bars: valence (green right = pleasant) and arousal (orange right = activated)."""
    x, y = origin
    width = 60
    for row, (value, color) in enumerate(zip(va, ((60, 200, 60), (0, 140, 255)), strict=True)):
        yy = y + row * 7
        cv2.rectangle(img, (x, yy), (x + width, yy + 4), _GREY, 1)
        mid = x + width // 2
        end = int(mid + float(np.clip(value, -1, 1)) * width / 2)
        cv2.rectangle(img, (min(mid, end), yy), (max(mid, end), yy + 4), color, -1)


class PreviewWriter:
    """Writes an annotated .mp4 per camera (``{camera}`` in the path is replaced).

    With ``segment_s`` the video is cut into files of that many seconds of video, named
    ``<stem>-<UTC start>-<n><suffix>``; each is finalised (playable) when the next starts, and with
    ``keep`` only the newest ``keep`` segments of the camera stay on disk (older runs' included),
    so a long-running agent's preview uses bounded disk and memory (the mp4 index of an open file
    grows with every frame).
    """

    def __init__(self, cfg: Preview, source_fps: dict[str, float]):
        if cfg.path is None:
            raise ValueError("PreviewWriter needs output.preview.path")
        self.cfg = cfg
        self.source_fps = source_fps
        self._writers: dict[str, cv2.VideoWriter] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        self._frames: dict[str, int] = {}
        self._segments = 0
        self.paths: dict[str, Path] = {}

    def write(self, result: FrameResult) -> None:
        cam = result.frame.camera
        img = annotate(result, self.cfg.blur_faces)
        if cam in self._writers and self._frames[cam] >= self._segment_frames(cam):
            self._writers.pop(cam).release()
        writer = self._writers.get(cam)
        if writer is None:
            writer = self._open(cam, *self._sizes.get(cam, (img.shape[1], img.shape[0])))
        if (img.shape[1], img.shape[0]) != self._sizes[cam]:
            img = cv2.resize(img, self._sizes[cam])  # resolution changed mid-stream
        writer.write(img)
        self._frames[cam] += 1

    def _fps(self, cam: str) -> float:
        return float(self.cfg.fps or self.source_fps.get(cam) or 25.0)

    def _segment_frames(self, cam: str) -> float:
        return self.cfg.segment_s * self._fps(cam) if self.cfg.segment_s else float("inf")

    def _open(self, cam: str, width: int, height: int) -> cv2.VideoWriter:
        assert self.cfg.path is not None
        path = Path(self.cfg.path.replace("{camera}", cam))
        if self.cfg.segment_s:
            self._segments += 1
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            path = path.with_name(f"{path.stem}-{stamp}-{self._segments:04d}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), self._fps(cam), (width, height))
        if not writer.isOpened():
            raise OSError(f"output.preview.path: cannot write video {str(path)!r}")
        self._writers[cam] = writer
        self._sizes[cam] = (width, height)
        self._frames[cam] = 0
        self.paths[cam] = path
        if self.cfg.keep:
            self._prune(cam)
        return writer

    def _prune(self, cam: str) -> None:
        """Delete all but the newest ``keep`` segments of ``cam`` (names sort by start time)."""
        assert self.cfg.path is not None
        base = Path(self.cfg.path.replace("{camera}", cam))
        # The counter grows past 4 digits after 9,999 segments: match and order it as a number.
        name = re.compile(rf"{re.escape(base.stem)}-(\d{{8}}T\d{{6}}Z)-(\d{{4,}}){re.escape(base.suffix)}")
        found = [
            (m[1], int(m[2]), path)
            for path in base.parent.glob(f"{base.stem}-*{base.suffix}")
            if (m := name.fullmatch(path.name))
        ]
        for *_, old in sorted(found)[: -self.cfg.keep]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        """Finalise every file (writes the mp4 index, so the files are playable)."""
        for writer in self._writers.values():
            writer.release()
        self._writers.clear()


def person_rows(results: dict[str, FrameResult]) -> list[list[str]]:
    """Table rows (camera, id, label, conf, valence, arousal, seconds, top-3) for the console."""
    rows = []
    for cam, result in sorted(results.items()):
        det = result.detections
        assert det.tracker_id is not None
        for i in range(len(det)):
            d = det.data
            label_idx = int(d["label"][i]) if "label" in d else -1
            label = result.labels[label_idx] if 0 <= label_idx < len(result.labels) else "..."
            probs = d.get("probs")
            top = ""
            if probs is not None and label_idx >= 0:
                order = np.argsort(probs[i])[::-1][:3]
                top = " ".join(f"{result.labels[k]}:{probs[i][k]:.2f}" for k in order)
            va = d.get("valence_arousal", np.zeros((len(det), 2)))
            rows.append(
                [
                    cam,
                    str(int(det.tracker_id[i])),
                    label,
                    f"{float(d['confidence'][i]) if 'confidence' in d else 0:.2f}",
                    f"{float(va[i][0]):+.2f}",
                    f"{float(va[i][1]):+.2f}",
                    f"{float(d['seconds_observed'][i]) if 'seconds_observed' in d else 0:.1f}",
                    top,
                ]
            )
    return rows


HEADER = ["camera", "id", "label", "conf", "valence", "arousal", "seen_s", "top-3"]


def format_table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))

    body = [line(r) for r in rows] or ["(no persons)"]
    return "\n".join([line(header), line(["-" * w for w in widths]), *body])


class ConsoleTable:
    """Live per-person table: redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, stream: TextIO = sys.stdout, refresh_s: float = 0.5):
        self.stream = stream
        self.tty = stream.isatty()
        self.refresh_s = refresh_s if self.tty else 2.0
        self._latest: dict[str, FrameResult] = {}
        self._last = 0.0

    def show(self, result: FrameResult) -> None:
        self._latest[result.frame.camera] = result
        now = time.monotonic()
        if now - self._last < self.refresh_s:
            return
        self._last = now
        table = format_table(person_rows(self._latest))
        prefix = "\x1b[H\x1b[J" if self.tty else ""
        self.stream.write(prefix + table + "\n\n")
        self.stream.flush()

    def close(self) -> None:
        self._latest.clear()
