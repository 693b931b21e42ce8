"""Training wiring shared by pretraining and fine-tuning: devices, DDP, batches → inputs, prediction.

The loops themselves live in ``main_pretrain`` / ``main_finetune``; everything both need is here.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from train.config import FinetuneConfig, PretrainConfig
from train.data.augment import AugmentConfig, photometric
from train.data.records import DataError
from train.data.sources import Splits, as_train, load_source
from train.models import IMAGENET_MEAN, IMAGENET_STD
from train.schedules import budget_cosine, warmup_cosine


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, DDP rank and world size."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


def setup_runtime(threads: int) -> Runtime:
    """Initialise torch threads and, under ``torchrun``, the process group (NCCL on GPU, gloo on CPU)."""
    torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # Rank 0 validates alone (twice with EMA) while the others wait in the next collective; NCCL's
        # default 10-minute timeout would abort them on a large validation set or a slow disk.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return Runtime(device, rank, world)


def teardown_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (``seeded_runtime`` passes seed + rank so ranks augment differently)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def seeded_runtime(threads: int, seed: int) -> Iterator[Runtime]:
    """``setup_runtime`` and ``seed_everything`` (seed + rank) for one run; the process group ends with it."""
    rt = setup_runtime(threads)
    try:
        seed_everything(seed + rt.rank)
        yield rt
    finally:
        teardown_runtime()


def load_splits(cfg: FinetuneConfig | PretrainConfig) -> Splits:
    """All sources of the config, split; ``max_samples`` (tests, smoke runs) truncates each list."""
    splits = Splits()
    for spec in cfg.data:
        # Pretraining has no validation part: its images are unlabelled anyway.
        val_fraction = getattr(cfg, "val_fraction", 0.0)
        splits.extend(as_train(load_source(spec, cfg.test_fraction, cfg.split_seed, val_fraction), spec))
    if cfg.max_samples:
        rng = np.random.default_rng(cfg.seed)
        for name in ("train", "val", "test"):
            items = getattr(splits, name)
            keep = sorted(rng.permutation(len(items))[: cfg.max_samples].tolist())
            setattr(splits, name, [items[i] for i in keep])
    return splits


def wrap_ddp(model: nn.Module, rt: Runtime, find_unused: bool = False) -> nn.Module:
    """Move to the device; wrap in DDP when more than one process runs.

    ``find_unused`` is needed when some parameters get no gradient (pretraining leaves the heads idle).
    """
    model = model.to(rt.device)
    if rt.world > 1:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
    return model


def channels_last(module: nn.Module) -> None:
    """Convert a module's 4-D weights to channels-last in place (~25 % faster convolutions on CPU)."""
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from torch's stubs


def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet channel mean and std as (1, 3, 1, 1) tensors on ``device``."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return mean, std


def normalise(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) float in [0, 1] → ImageNet-normalised."""
    mean, std = _imagenet_stats(x.device)
    return (x - mean) / std


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalise``, clamped to [0, 1] and contiguous (what the frozen teachers take)."""
    mean, std = _imagenet_stats(x.device)
    return (x * std + mean).clamp(0, 1).contiguous()


def to_inputs(
    batch: dict[str, torch.Tensor], rt: Runtime, augment: AugmentConfig | None, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 views of a batch → normalised float (channels-last: ~25 % faster convs on CPU)."""
    out = []
    for key in ("person", "scene"):
        x = batch[key].to(rt.device).float() / 255
        if augment is not None and gen is not None:
            x = photometric(x, augment, gen)
        out.append(normalise(x).contiguous(memory_format=torch.channels_last))
    return out[0], out[1]


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, rt: Runtime) -> dict[str, np.ndarray]:
    """Run a model over a loader (no augmentation).

    Returns:
        ``probs`` (N, C), ``va`` (N, 2), ``label`` (N,), ``va_target`` (N, 2), ``va_weight`` (N,),
        ``valid`` (N,) bool, ``index`` (N,) dataset indices.
    """
    model.eval()
    keys = ("label", "va", "va_weight", "valid", "index")
    acc: dict[str, list[np.ndarray]] = {k: [] for k in ("probs", "va_pred", *keys)}
    for batch in loader:
        person, scene = to_inputs(batch, rt, None, None)
        logits, va = model(person, scene)
        acc["probs"].append(torch.softmax(logits, 1).cpu().numpy())
        acc["va_pred"].append(va.cpu().numpy())
        for k in keys:
            acc[k].append(torch.as_tensor(batch[k]).numpy())
    out = {k: np.concatenate(v) for k, v in acc.items()}
    return {
        "probs": out["probs"],
        "va": out["va_pred"],
        "label": out["label"],
        "va_target": out["va"],
        "va_weight": out["va_weight"],
        "valid": out["valid"].astype(bool),
        "index": out["index"],
    }


# Settings a resumed run may change: where and how long it runs, not what it trains (switching the
# weight average on restarts it from the resumed weights, see `restart_head`).
RESUMABLE_CHANGES = frozenset(
    {"out", "resume", "budget_minutes", "epochs", "max_steps", "threads", "workers"}
    | {"checkpoint_minutes", "select", "ema_decay"}
)


# Mappings whose keys grow with the code: a key the saved mapping lacks was written before it existed.
GROWING_MAPPINGS = frozenset({"augment"})


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for each setting outside `RESUMABLE_CHANGES` that differs.

    A key the saved config lacks (written before the setting existed) counts as unchanged, and so does
    a key of a `GROWING_MAPPINGS` entry (``augment.degrade`` in a run from before degradations).
    """
    changes = []
    for k in sorted(current):
        if k in RESUMABLE_CHANGES or k not in saved:
            continue
        old, new = saved[k], current[k]
        if k in GROWING_MAPPINGS and isinstance(old, dict) and isinstance(new, dict):
            changes += [
                f"{k}.{n}: {old[n]!r} -> {new[n]!r}" for n in sorted(new) if n in old and old[n] != new[n]
            ]
            changes += [f"{k}.{n}: {old[n]!r} -> (absent)" for n in sorted(old) if n not in new]
        elif old != new:
            changes.append(f"{k}: {old!r} -> {new!r}")
    return changes


class BudgetedLoop:
    """Epoch loop shared by pretraining and fine-tuning: time budget or step limit, mid-epoch
    checkpoints every ``checkpoint_minutes``, CSV log, ``best.pt`` selection.

    A resumed run continues at the same step of the same draw order with the same weights, optimizer
    and schedule; its augmentation draws after that step differ from an uninterrupted run's. It
    refuses a ``last.pt`` written with another config (`RESUMABLE_CHANGES` may differ).

    Subclasses set ``cfg`` (fields: out, epochs, budget_minutes, max_steps, batch_size, workers, seed,
    checkpoint_minutes, resume, lr, min_lr, warmup_steps), ``rt``, ``net`` (the bare network that is
    saved), ``model`` (maybe DDP-wrapped), ``optimizer``, ``splits``, ``train_set``, ``sampler``,
    ``meta`` and ``log_fields``, and implement ``train_step``, ``validate``, ``resolved``; ``heads``
    lists extra modules (e.g. a decoder) whose state is checkpointed for resuming.
    """

    cfg: Any
    rt: Runtime
    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    splits: Splits
    train_set: Any
    sampler: Any
    meta: Any
    log_fields: tuple[str, ...]
    select_metric: str | None = "accuracy"  # None: every epoch's weights replace best.pt

    def init_loop(self) -> None:
        self.out = Path(self.cfg.out)
        self.steps_per_epoch = max(1, len(self.sampler) // self.cfg.batch_size)
        self.t_start, self.elapsed0 = time.time(), 0.0
        self.last_save = time.time()
        self.state: dict[str, Any] = {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "best": -float("inf"),
            "elapsed_s": 0.0,
            "skipped_images": 0,
        }
        self.totals: dict[str, float] = {}
        self.synced_progress = 0.0
        self.some_image_usable = False  # set once `require_usable_images` has found one

    def announce(self, line: str) -> None:
        """On the main rank, print what each data reader kept and skipped, then ``line``."""
        if self.rt.main:
            for r in self.splits.reports:
                print(r.summary(), flush=True)
            print(line, flush=True)

    def heads(self) -> dict[str, nn.Module]:
        return {}

    def restart_head(self, name: str) -> None:
        """Re-create head ``name`` from the resumed weights (a checkpoint written without it).

        Raises:
            CheckpointError: the loop cannot restart that head.
        """
        raise CheckpointError(f"{self.out / 'last.pt'} has no {name!r} state; resume into a new --out")

    def train_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> dict[str, Any]:
        raise NotImplementedError

    def resolved(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- time, schedule -------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed0 + time.time() - self.t_start

    def progress(self) -> float:
        """Elapsed fraction of the time budget on this rank's clock (0 when the run has no budget)."""
        return self.elapsed() / (self.cfg.budget_minutes * 60) if self.cfg.budget_minutes else 0.0

    def out_of_steps(self) -> bool:
        """The step limit or the time budget is used up (called by every rank before each step)."""
        if self.cfg.max_steps and self.state["global_step"] >= self.cfg.max_steps:
            return True
        if not self.cfg.budget_minutes:
            return False
        prog = torch.tensor([self.progress()], dtype=torch.float64, device=self.rt.device)
        if self.rt.world > 1:
            # Clocks differ between ranks: rank 0's decides both the stop (or the next all-reduce
            # hangs) and the learning rate (or the replicas' weights drift apart).
            dist.broadcast(prog, 0)
        self.synced_progress = float(prog.item())
        return self.synced_progress >= 1

    def lr_at(self, step: int) -> float:
        if self.cfg.budget_minutes:
            cfg = self.cfg
            return budget_cosine(step, self.synced_progress, cfg.warmup_steps, cfg.lr, cfg.min_lr)
        total = max(1, int(self.cfg.epochs) * self.steps_per_epoch)
        if self.cfg.max_steps:
            total = min(total, self.cfg.max_steps)
        return warmup_cosine(
            step, total, min(self.cfg.warmup_steps, total // 5), self.cfg.lr, self.cfg.min_lr
        )

    def set_lr(self) -> float:
        lr = self.lr_at(int(self.state["global_step"]))
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    # -- checkpoints ----------------------------------------------------------------------------
    def selected_net(self) -> nn.Module:
        """The weights that are validated and saved as ``best.pt`` (fine-tuning may average them)."""
        return self.net

    def save(self, name: str, metrics: dict[str, Any] | None = None, net: nn.Module | None = None) -> None:
        """Write ``name`` with ``net``'s weights (default the trained network) and the loop state."""
        if self.rt.main:
            extra = {
                "state": dict(self.state),
                "metrics": metrics or {},
                "heads": {k: m.state_dict() for k, m in self.heads().items()},
            }
            save_checkpoint(
                self.out / name,
                net if net is not None else self.net,
                self.optimizer,
                int(self.state["epoch"]),
                self.resolved(),
                self.meta,
                extra,
            )

    def resume(self) -> None:
        """Continue from ``out/last.pt`` when resuming is on and it exists.

        Raises:
            CheckpointError: it was written with a config that differs in more than
                `RESUMABLE_CHANGES` (another model, data, batch size, recipe).
        """
        last = self.out / "last.pt"
        if not (self.cfg.resume and last.exists()):
            return
        blob = load_checkpoint(last)
        changed = config_changes(blob.get("config", {}), self.resolved())
        if changed:
            raise CheckpointError(
                f"{last}: written with another config ({'; '.join(changed)}); resuming would mix two runs. "
                f"Use a new --out, or --no-resume to start over in {self.out}"
            )
        self.net.load_state_dict(blob["state_dict"])
        saved = blob["extra"]["heads"]
        for k, m in self.heads().items():
            if k in saved:
                m.load_state_dict(saved[k])
            else:
                self.restart_head(k)
                if self.rt.main:
                    print(f"{last} has no {k!r} state (written without it): {k} restarts here", flush=True)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.state.update(blob["extra"]["state"])
        if self.rt.main:
            print(
                f"resumed {last}: epoch {self.state['epoch']} step {self.state['step_in_epoch']}", flush=True
            )

    # -- loop -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until the epochs, the step limit or the time budget end; returns the last log row."""
        self.resume()
        self.t_start, self.elapsed0 = time.time(), float(self.state["elapsed_s"])
        self.last_save = time.time()
        row: dict[str, Any] = {}
        while self.state["epoch"] < self.cfg.epochs and not self.out_of_steps():
            row = self.run_epoch()
        if not row and self.rt.main:
            print(
                f"{self.out}: nothing to train ({self.state['global_step']} step(s) and "
                f"{self.state['epoch']} of {self.cfg.epochs} epoch(s) done, "
                f"{self.state['elapsed_s'] / 60:.1f} min of the budget used)",
                flush=True,
            )
        self.report_skipped()
        return row

    def _step(self, batch: dict[str, torch.Tensor], gen: torch.Generator, bar: Any) -> None:
        usable = self.usable(batch)
        if usable is None:
            self.require_usable_images()
        else:
            for k, v in self.train_step(usable, gen).items():
                self.totals[k] = self.totals.get(k, 0.0) + v
        self.totals["steps"] = self.totals.get("steps", 0.0) + 1
        self.state["global_step"] += 1
        self.state["step_in_epoch"] += 1
        bar.update(1)
        if self.rt.main and time.time() - self.last_save > self.cfg.checkpoint_minutes * 60:
            self.state["elapsed_s"] = self.elapsed()
            self.save("last.pt")
            self.last_save = time.time()

    def usable(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The batch without its unusable images (blank views, see `DualViewDataset`), counted;
        ``None`` when none is usable (the step is then skipped).

        Raises:
            DataError: no image of the batch is usable in a multi-process run, whose ranks cannot
                skip a step alone (the gradient all-reduce would wait for them).
        """
        valid = torch.as_tensor(batch["valid"], dtype=torch.bool)
        bad = int((~valid).sum())
        if not bad:
            return batch
        self.state["skipped_images"] += bad
        if bad < len(valid):
            return {k: v[valid] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if self.rt.world > 1:
            example = next(iter(getattr(self.train_set, "bad", {}).values()), "see the readers' report")
            raise DataError(f"every image of a batch of {bad} is unusable (e.g. {example})")
        return None

    def require_usable_images(self) -> None:
        """After a batch with no usable image: go on only if the training set has one at all.

        Training on nothing would still write checkpoints that look like a result. The set is
        searched once, up to its first usable image; an unlucky batch from a partly broken set
        then goes on.

        Raises:
            DataError: no training image is usable (names one reason).
        """
        if self.some_image_usable:
            return
        if not self.train_set.any_usable():
            example = next(iter(self.train_set.bad.values()), "see the readers' report")
            raise DataError(f"no usable training image among {len(self.train_set)} (e.g. {example})")
        self.some_image_usable = True

    def report_skipped(self) -> None:
        """On the main rank, print how many unusable image draws training dropped (with one reason)."""
        count = int(self.state["skipped_images"])
        if self.rt.main and count:
            bad = getattr(self.train_set, "bad", {})  # filled only without worker processes
            example = f", e.g. {next(iter(bad.values()))}" if bad else ""
            print(f"skipped {count} unusable image draw(s) in training{example}", flush=True)

    def run_epoch(self) -> dict[str, Any]:
        """Train up to the end of the epoch (or the step limit / budget), validate, log and save.

        Returns:
            The epoch's log row on the main rank, ``{}`` on the others.
        """
        epoch = int(self.state["epoch"])
        cut, steps, rate = self._run_steps(epoch)
        metrics = self.validate() if self.rt.main else {}
        if not cut:
            # An epoch cut short by the step limit or the budget stays open: a resume with a larger
            # one goes on with its remaining draws (and logs a second row for it).
            self.state["epoch"] = epoch + 1
            self.state["step_in_epoch"] = 0
        self.state["elapsed_s"] = self.elapsed()
        if not self.rt.main:
            return {}
        row = self._epoch_row(epoch, steps, rate, metrics)
        self._log(row)
        self._save_epoch(metrics)
        return row

    def _epoch_draws(self, epoch: int) -> tuple[DataLoader[Any], torch.Generator]:
        """This epoch's loader (resuming mid-epoch where the state says) and augmentation generator."""
        self.sampler.set_epoch(epoch, int(self.state["step_in_epoch"]) * self.cfg.batch_size)
        self.train_set.set_epoch(epoch)
        loader = DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=self.sampler,
            num_workers=self.cfg.workers,
            drop_last=True,
        )
        # Per rank: each replica augments its own draws differently.
        gen = torch.Generator().manual_seed(
            self.cfg.seed * 7919 + epoch * 131 + int(self.state["step_in_epoch"]) + 1_000_003 * self.rt.rank
        )
        return loader, gen

    def _run_steps(self, epoch: int) -> tuple[bool, float, float]:
        """The epoch's training steps.

        Returns:
            (cut short by the step limit or budget, steps taken, training pairs per second over ranks).
        """
        loader, gen = self._epoch_draws(epoch)
        self.totals = {}
        t0 = time.time()
        cut = False
        with tqdm(
            total=self.steps_per_epoch,
            initial=int(self.state["step_in_epoch"]),
            disable=not self.rt.main,
            desc=f"epoch {epoch}",
            mininterval=30,
            ascii=True,
        ) as bar:
            for batch in loader:
                if self.out_of_steps():
                    cut = True
                    break
                self._step(batch, gen, bar)
        steps = self.totals.pop("steps", 0.0)
        rate = steps * self.cfg.batch_size * self.rt.world / max(time.time() - t0, 1e-6)
        return cut, steps, rate

    def _epoch_row(self, epoch: int, steps: float, rate: float, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": epoch + 1,
            "global_step": self.state["global_step"],
            "lr": self.lr_at(self.state["global_step"]),
            "elapsed_s": round(self.state["elapsed_s"], 1),
            "samples_per_s": round(rate, 1),
            # Printed with the row, not log.csv columns (older logs keep their header).
            "skipped_images": self.state["skipped_images"],
            **({"val_skipped": metrics["val_skipped"]} if "val_skipped" in metrics else {}),
            **self.train_averages(steps),
            **{k: v for k, v in metrics.items() if k in self.log_fields},
        }

    def _save_epoch(self, metrics: dict[str, Any]) -> None:
        """``last.pt`` always; ``best.pt`` when the selection metric improved (or there is none)."""
        score = metrics.get(self.select_metric) if self.select_metric else None
        improved = score is not None and score > self.state["best"]
        if improved:
            self.state["best"] = score
        self.save("last.pt", metrics)
        self.last_save = time.time()
        if improved or score is None:
            self.save("best.pt", metrics, self.selected_net())

    def train_averages(self, steps: float) -> dict[str, float]:
        """Per-step means of the summed step outputs; ``correct``/``n`` become ``train_acc``."""
        out = {k: v / max(steps, 1) for k, v in self.totals.items() if k not in ("correct", "n")}
        if "n" in self.totals:
            out["train_acc"] = self.totals.get("correct", 0.0) / max(self.totals["n"], 1)
        return out

    def _log(self, row: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.log_fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        print(json.dumps(row), flush=True)
