"""Distributed fine-tuning: the unchanged entry point under ``torchrun`` with 2 CPU processes (gloo),
on a time budget (the ranks must stop at the same step and share one learning-rate clock)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from tests.conftest import shared_path
from train.checkpoint import load_checkpoint


def test_two_process_budgeted_run_ends_together_and_resumes(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "train.main_finetune",
        "--data", f"ferplus:{shared_path('data', 'ferplus')}", "--max-samples", "64", "--batch-size", "8",
        "--threads", "1", "--warmup-steps", "1", "--epochs", "50", "--out", str(tmp_path),
    ]  # fmt: skip
    first = subprocess.run([*cmd, "--budget-minutes", "0.1"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(tmp_path / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # 64 draws / (2 ranks × 8) = 4 steps per epoch; only the last epoch may be cut by the budget.
    assert rows and all(int(r["global_step"]) == 4 * (i + 1) for i, r in enumerate(rows[:-1]))
    steps = load_checkpoint(tmp_path / "last.pt")["extra"]["state"]["global_step"]
    # A longer budget resumes the same run (the budget may change on resume; the recipe may not).
    second = subprocess.run([*cmd, "--budget-minutes", "0.2"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed" in second.stdout
    assert load_checkpoint(tmp_path / "last.pt")["extra"]["state"]["global_step"] > steps
