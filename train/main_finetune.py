"""Supervised fine-tuning of the dual-view model: soft targets, class balancing, augmentation, VA.

Run: ``affectline train finetune --data ferplus:../shared/data/ferplus --data expw:../shared/data/expw
--out runs/default`` (or under ``torchrun --nproc-per-node N``). A time budget (``--budget-minutes``)
makes the cosine schedule a function of elapsed wall time (kept in the checkpoint, so a resumed run
continues it): the rate anneals when the budget ends, whatever throughput the shared CPU gives.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from train.checkpoint import load_matching_weights, make_meta
from train.config import AugmentConfig, FinetuneConfig, finetune_args, run_config
from train.data.dataset import DualViewDataset
from train.data.records import CLASSES, DataError
from train.data.splits import WeightedDistributedSampler, balanced_weights
from train.engine import (
    BudgetedLoop,
    Runtime,
    channels_last,
    load_splits,
    predict,
    seeded_runtime,
    to_inputs,
    wrap_ddp,
)
from train.losses import soft_cross_entropy, va_loss
from train.metrics import classification_report
from train.models import build_model
from train.models.dual_view import DualViewNet
from train.schedules import ema_decay_at
from train.teachers.prior import load_prior

LOG_FIELDS = (
    "epoch",
    "global_step",
    "lr",
    "train_loss",
    "train_va_loss",
    "train_acc",
    "val_acc",
    "val_macro_f1",
    "val_n",
    "val_mean_acc",
    "raw_val_mean_acc",
    "elapsed_s",
    "samples_per_s",
)


class WeightEma(torch.nn.Module):
    """Exponential moving average of a network's weights and buffers (``ema_decay_at`` schedule).

    The averaged copy is what gets validated and saved as ``best.pt``; being a module, its state
    (including the update count) is checkpointed with the run and restored on resume.
    """

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay = decay
        self.updates: torch.Tensor
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        """Move every floating tensor towards ``net``'s; copy the others (BN's batch counters)."""
        d = ema_decay_at(int(self.updates), self.decay)
        for avg, cur in zip(self.module.state_dict().values(), net.state_dict().values(), strict=True):
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(cur.detach(), alpha=1 - d)
            else:
                avg.copy_(cur)
        self.updates += 1


def per_source_accuracy(labels: np.ndarray, preds: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    """``val_acc_<source>`` for each source with labelled samples, and their unweighted mean.

    Args:
        labels: (N,) true class, -1 = unlabelled (ignored).
        preds: (N,) predicted class.
        sources: (N,) source name of each sample.

    Returns:
        ``{"val_acc_<source>": acc, ..., "val_mean_acc": mean}`` (no mean when nothing is labelled).
    """
    out: dict[str, float] = {}
    for src in sorted(set(sources.tolist())):
        keep = (sources == src) & (labels >= 0)
        if keep.any():
            out[f"val_acc_{src}"] = float((preds[keep] == labels[keep]).mean())
    if out:
        out["val_mean_acc"] = float(np.mean(list(out.values())))
    return out


def _param_groups(model: torch.nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Encoder at ``encoder_lr_scale`` × lr; no weight decay on norms, biases and embeddings."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        enc = name.startswith("features.")
        decay = p.ndim > 1 and "view_embed" not in name
        groups.setdefault((enc, decay), []).append(p)
    return [
        {
            "params": ps,
            "lr_scale": cfg.encoder_lr_scale if enc else 1.0,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (enc, decay), ps in groups.items()
    ]


class Finetuner(BudgetedLoop):
    """One fine-tuning run: builds data, model and optimizer; ``fit`` trains, validates, checkpoints."""

    log_fields: tuple[str, ...] = LOG_FIELDS
    net: DualViewNet

    def __init__(self, cfg: FinetuneConfig, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.person, self.scene = cfg.geometries()
        self.prior = load_prior()
        self.splits = load_splits(cfg)
        if not self.splits.train:
            raise DataError(f"no training samples in data sources {cfg.data} ({self.splits.readers()})")
        self.augment = AugmentConfig(**cfg.augment)
        self.train_set = DualViewDataset(
            self.splits.train,
            self.person,
            self.scene,
            self.augment,
            self.prior.va,
            cfg.prior_va_weight,
            cfg.seed,
        )
        self.val_set = DualViewDataset(self.splits.val, self.person, self.scene) if self.splits.val else None
        self.val_sources = np.array([v.source for v in self.splits.val])
        self.log_fields = (*LOG_FIELDS, *(f"val_acc_{s}" for s in sorted(set(self.val_sources.tolist()))))
        self.select_metric = {"last": None, "mean_acc": "val_mean_acc", "accuracy": "accuracy"}[cfg.select]
        weights = balanced_weights(self.splits.train, cfg.class_power, cfg.source_weights)
        self.sampler = WeightedDistributedSampler(
            weights, len(self.splits.train), rt.rank, rt.world, cfg.seed
        )
        self.net = build_model(cfg.model, **cfg.model_kwargs)
        channels_last(self.net)
        loaded = load_matching_weights(self.net, cfg.init) if cfg.init else set()
        if "va_head.bias" not in loaded:
            # A warm start from a fine-tuned checkpoint keeps its learned VA head.
            self._init_va_head()
        self.model = wrap_ddp(self.net, rt)
        self.ema = WeightEma(self.net, cfg.ema_decay) if cfg.ema_decay else None
        self.optimizer = torch.optim.AdamW(_param_groups(self.net, cfg), lr=cfg.lr)
        self.meta = make_meta(
            CLASSES, self.person, self.scene, self.resolved(), f"{cfg.model} {time.strftime('%Y-%m-%d')}"
        )
        self.init_loop()

    def heads(self) -> dict[str, torch.nn.Module]:
        return {"ema": self.ema} if self.ema is not None else {}

    def restart_head(self, name: str) -> None:
        """The weight average restarts from the resumed weights (``last.pt`` from a run without it)."""
        assert name == "ema" and self.ema is not None
        self.ema = WeightEma(self.net, self.cfg.ema_decay)

    def selected_net(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.net

    def resolved(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.cfg)
        d["person_geometry"] = self.person.to_dict()
        d["scene_geometry"] = self.scene.to_dict()
        d["classes"] = list(CLASSES)
        return d

    def _init_va_head(self) -> None:
        """Start the VA head at the circumplex prior's mean over classes (bias = atanh of it)."""
        with torch.no_grad():
            mean_va = torch.as_tensor(self.prior.va.mean(axis=0)).clamp(-0.9, 0.9)
            self.net.va_head.bias.copy_(torch.atanh(mean_va))

    def train_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, float]:
        self.set_lr()
        self.model.train()
        person, scene = to_inputs(batch, self.rt, self.augment, gen)
        logits, va = self.model(person, scene)
        dev = self.rt.device
        has = batch["has_cls"].to(dev)
        cls = soft_cross_entropy(logits, batch["dist"].to(dev), has, self.cfg.label_smoothing)
        reg = va_loss(va, batch["va"].to(dev), batch["va_weight"].to(dev).float())
        loss = cls + self.cfg.va_weight * reg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.net)
        hard = batch["dist"].argmax(1).to(dev)
        correct = int(((logits.argmax(1) == hard) & has).sum())
        return {
            "train_loss": float(loss.detach()),
            "train_va_loss": float(reg.detach()),
            "correct": correct,
            "n": int(has.sum()),
        }

    def validate(self) -> dict[str, Any]:
        """Metrics of the selected weights (the EMA when on); ``raw_val_mean_acc`` of the raw ones."""
        if self.val_set is None:
            return {}
        loader = DataLoader(self.val_set, batch_size=128, num_workers=self.cfg.workers)
        out = self._scores(self.selected_net(), loader)
        if self.ema is not None:
            out["raw_val_mean_acc"] = self._scores(self.net, loader).get("val_mean_acc")
        return out

    def _scores(self, net: torch.nn.Module, loader: DataLoader) -> dict[str, Any]:
        pred = predict(net, loader, self.rt)
        # An unreadable image comes back as blank views with its real label: it must not be scored.
        labels = np.where(pred["valid"], pred["label"], -1)
        preds = pred["probs"].argmax(1)
        report = classification_report(labels, preds, CLASSES)
        return {
            **report,
            **per_source_accuracy(labels, preds, self.val_sources[pred["index"]]),
            "val_acc": report["accuracy"],
            "val_macro_f1": report["macro_f1"],
            "val_n": report["n"],
            "val_skipped": int((~pred["valid"]).sum()),
        }


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The resolved config of ``affectline train finetune`` (defaults < --config file < flags)."""
    return run_config(FinetuneConfig, args)


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    with seeded_runtime(cfg.threads, cfg.seed) as rt:
        tuner = Finetuner(cfg, rt)
        tuner.announce(
            f"train {len(tuner.splits.train)} val {len(tuner.splits.val)} test {len(tuner.splits.test)}; "
            f"{tuner.steps_per_epoch} steps/epoch"
        )
        return tuner.fit()


def run_args(args: argparse.Namespace) -> int:
    """Run from parsed flags; returns the exit code 0 (errors raise)."""
    run(config_from_args(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m train.main_finetune`` (what ``torchrun`` starts): bad input is one line and exit 2."""
    from train.cli import guard

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    finetune_args(p)
    return guard(run_args)(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
