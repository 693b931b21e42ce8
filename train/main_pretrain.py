"""UniEmoX-style pretraining of the dual-view encoder: masked image modelling on the scene view
(L3) plus cross-modal semantic guidance from a frozen teacher — embedding alignment (L2) and
similarity-profile matching over text embeddings (L1); total ``w1·L1 + w2·L2 + w3·L3``.

Run: ``affectline train pretrain --data unlabelled:DIR --data expw:../shared/data/expw --out runs/pre``
(labels in the sources are ignored). Fine-tune from it with
``affectline train finetune --init runs/pre/last.pt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from train.checkpoint import make_meta
from train.config import TEACHERS, AugmentConfig, PretrainConfig, pretrain_args, run_config
from train.data.dataset import DualViewDataset
from train.data.records import CLASSES, DataError
from train.data.splits import WeightedDistributedSampler
from train.engine import (
    BudgetedLoop,
    Runtime,
    channels_last,
    load_splits,
    seeded_runtime,
    to_inputs,
    unnormalise,
    wrap_ddp,
)
from train.losses import embedding_loss, masked_patch_mse, similarity_profile_loss
from train.models import build_model
from train.models.pretrain import PATCH, PretrainModel, random_keep_mask

LOG_FIELDS = (
    "epoch",
    "global_step",
    "lr",
    "loss",
    "l1_profile",
    "l2_embed",
    "l3_recon",
    "elapsed_s",
    "samples_per_s",
)


def build_teacher(cfg: PretrainConfig) -> tuple[nn.Module | None, torch.Tensor | None]:
    """The frozen teacher and the text embeddings of the similarity-profile loss (both None for 'none').

    Raises:
        ValueError: unknown teacher name.
    """
    if cfg.teacher not in TEACHERS:
        raise ValueError(f"teacher {cfg.teacher!r} unknown; allowed {TEACHERS}")
    if cfg.teacher == "none":
        return None, None
    if cfg.teacher == "clip":
        from train.teachers.clip import ClipTeacher

        clip = ClipTeacher(cfg.clip_model, cfg.clip_checkpoint or None)
        return clip, clip.texts
    from train.teachers.offline import OfflineTeacher, load_text_bank

    bank = load_text_bank()
    return OfflineTeacher(bank, cfg.teacher_scene_weight), torch.from_numpy(bank.all)


class Pretrainer(BudgetedLoop):
    """One pretraining run (see module docstring)."""

    log_fields = LOG_FIELDS

    def __init__(self, cfg: PretrainConfig, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.person, self.scene = cfg.geometries()  # sizes are multiples of 32, as masking needs
        self.splits = load_splits(cfg)
        samples = self.splits.train
        if not samples:
            raise DataError(f"no pretraining samples in data sources {cfg.data} ({self.splits.readers()})")
        self.augment = AugmentConfig(**cfg.augment)
        self.train_set = DualViewDataset(samples, self.person, self.scene, self.augment, seed=cfg.seed)
        self.sampler = WeightedDistributedSampler(
            np.ones(len(samples)), len(samples), rt.rank, rt.world, cfg.seed
        )
        self.teacher, texts = build_teacher(cfg)
        self.texts = texts.to(rt.device) if texts is not None else None
        if self.teacher is not None:
            self.teacher.to(rt.device)
        self.net = build_model(cfg.model, **cfg.model_kwargs)
        dim = int(self.texts.shape[1]) if self.texts is not None else 0
        self.pm = PretrainModel(self.net, dim)
        channels_last(self.pm)
        self.model = wrap_ddp(self.pm, rt, find_unused=True)
        self.optimizer = torch.optim.AdamW(self.pm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.meta = make_meta(
            CLASSES,
            self.person,
            self.scene,
            self.resolved(),
            f"{cfg.model}-pretrain {time.strftime('%Y-%m-%d')}",
        )
        self.init_loop()

    def heads(self) -> dict[str, nn.Module]:
        return {"pretrain_model": self.pm}

    def resolved(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.cfg)
        d["person_geometry"] = self.person.to_dict()
        d["scene_geometry"] = self.scene.to_dict()
        return d

    def train_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, float]:
        self.set_lr()
        self.model.train()
        person, scene = to_inputs(batch, self.rt, self.augment, gen)
        keep = random_keep_mask(person.shape[0], scene.shape[-1] // PATCH, self.cfg.mask_ratio, gen).to(
            self.rt.device
        )
        out = self.model(person, scene, keep)
        l3 = masked_patch_mse(out["pred"], out["target"], out["keep"])
        l1 = l2 = torch.zeros((), device=self.rt.device)
        if self.teacher is not None and self.texts is not None:
            target = self.teacher(unnormalise(person), unnormalise(scene))
            l2 = embedding_loss(out["student"], target)
            l1 = similarity_profile_loss(out["student"], target, self.texts)
        loss = self.cfg.w_profile * l1 + self.cfg.w_embed * l2 + self.cfg.w_recon * l3
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {
            "loss": float(loss.detach()),
            "l1_profile": float(l1.detach()),
            "l2_embed": float(l2.detach()),
            "l3_recon": float(l3.detach()),
        }

    def validate(self) -> dict[str, Any]:
        return {}


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The resolved config of ``affectline train pretrain`` (defaults < --config file < flags)."""
    return run_config(PretrainConfig, args)


def run(cfg: PretrainConfig) -> dict[str, Any]:
    with seeded_runtime(cfg.threads, cfg.seed) as rt:
        loop = Pretrainer(cfg, rt)
        loop.announce(f"pretraining on {len(loop.train_set)} samples; {loop.steps_per_epoch} steps/epoch")
        return loop.fit()


def run_args(args: argparse.Namespace) -> int:
    """Run from parsed flags; returns the exit code 0 (errors raise)."""
    run(config_from_args(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m train.main_pretrain`` (what ``torchrun`` starts): bad input is one line and exit 2."""
    from train.cli import guard

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    pretrain_args(p)
    return guard(run_args)(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
