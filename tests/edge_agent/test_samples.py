"""Sample clips: the cache, and a download that a stop request ends at once (real child processes)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent.samples import (
    SampleError,
    SampleInterrupted,
    _write_atomically,
    run_interruptible,
    sample_clip,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AFFECTLINE_CACHE", str(tmp_path))
    return tmp_path / "samples"


def test_unknown_sample_is_refused_with_the_names_there_are(cache: Path) -> None:
    with pytest.raises(SampleError, match=r"sample 'nope.mp4' unknown; available: \['WolfgangLanger"):
        sample_clip("nope.mp4")


def test_a_cached_clip_is_returned_without_any_download(cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / "single_face.mp4").write_bytes(b"clip")
    stop = threading.Event()
    stop.set()  # a download would raise SampleInterrupted: the cache is read first
    assert sample_clip("single_face.mp4", stop) == cache / "single_face.mp4"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import sys; sys.exit(0)", (0, "")),
        ("import sys; sys.stderr.write('boom'); sys.exit(3)", (3, "boom")),
    ],
    ids=["ok", "fails"],
)
def test_run_interruptible_returns_exit_code_and_stderr(code: str, expected: tuple[int, str]) -> None:
    assert run_interruptible([sys.executable, "-c", code], threading.Event()) == expected
    assert run_interruptible([sys.executable, "-c", code], None) == expected


def test_a_stop_ends_the_child_and_raises(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    stop = threading.Event()

    def stop_once_the_child_runs() -> None:
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.01)
        stop.set()

    stopper = threading.Thread(target=stop_once_the_child_runs, daemon=True)
    stopper.start()
    with pytest.raises(SampleInterrupted, match="nothing was cached"):
        run_interruptible([sys.executable, "-c", child], stop)
    stopper.join()
    with pytest.raises(ProcessLookupError):  # terminated and reaped, not left running
        os.kill(int(pid_file.read_text()), 0)


def test_a_cut_off_clip_write_leaves_no_clip_behind(tmp_path: Path) -> None:
    """A write that fails half way (here the file-size limit, as a full disk would) leaves neither
    a truncated clip, which every later run would take as cached, nor its partial file."""
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from edge_agent.samples import _write_atomically\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        "    _write_atomically(Path(sys.argv[1]), b'x' * 5000)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    target = tmp_path / "clip.mp4"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(target)], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == str(errno.EFBIG), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_clip_write_is_whole(tmp_path: Path) -> None:
    _write_atomically(tmp_path / "clip.mp4", b"abc" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    assert (tmp_path / "clip.mp4").read_bytes() == b"abc" * 1000
