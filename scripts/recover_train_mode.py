"""How close a recovered checkpoint starts training: top-1 agreement with the exported file in train mode.

Usage: ``python scripts/recover_train_mode.py MODEL CALIBRATION.npz`` (e.g. ``default
runs/engines/calib-default.npz``, a set cut for the default by ``affectline engines calibrate --model
default``). Recovers MODEL, then runs the views through it in training mode (batch
statistics, dropout on, batches of 64 as fine-tuning uses, seed 0) twice: with the BatchNorm statistics
measured by ``train recover`` and with neutral ones (mean 0, variance 1, equally exact in eval mode).
"""

from __future__ import annotations

import sys

import torch

from calibration.viewset import ViewSet
from edge_agent.infer import resolve_model_path
from train.models.dual_view import DualViewNet
from train.recover import conv_bn_pairs, recover


def train_mode_agreement(net: torch.nn.Module, person: torch.Tensor, scene: torch.Tensor) -> float:
    """Share of views whose train-mode top-1 class is the eval-mode one."""
    with torch.no_grad():
        reference = net.eval()(person, scene)[0].argmax(1)
        torch.manual_seed(0)
        net.train()
        top1 = torch.cat(
            [net(person[i : i + 64], scene[i : i + 64])[0].argmax(1) for i in range(0, len(person), 64)]
        )
        net.eval()
    return float((top1 == reference).float().mean())


def neutralise(net: DualViewNet) -> None:
    """BatchNorm with mean 0 and variance 1 around the same folded function (eval mode unchanged)."""
    with torch.no_grad():
        for _, bn in conv_bn_pairs(net):
            assert bn.running_mean is not None and bn.running_var is not None
            bn.bias.sub_(bn.running_mean)
            bn.weight.fill_((1.0 + bn.eps) ** 0.5)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)


def main(model: str, calibration: str) -> None:
    views = ViewSet.load(calibration)
    net, meta, _ = recover(resolve_model_path(model), views)
    person = torch.from_numpy(views.inputs[meta.input_for("person").name])
    scene = torch.from_numpy(views.inputs[meta.input_for("scene").name])
    agreement = train_mode_agreement(net, person, scene)
    print(f"measured statistics: {agreement:.1%} of {len(views)} views keep their class")
    neutralise(net)
    print(f"neutral statistics:  {train_mode_agreement(net, person, scene):.1%}")


if __name__ == "__main__":
    main(*sys.argv[1:])
