"""Linear probing: how much emotion a (pre)trained encoder's frozen features carry, per view.

The MAE paper's measure of a pretraining method, applied to UniEmoX's ablation ladder: the encoder is
frozen, its global-average-pooled features of the person view (and optionally the scene view) are
extracted once, and a multinomial logistic regression — the only thing trained — is fitted to the
labelled training images and scored on each source's held-out test part. No fine-tuning run, so
encoders pretrained with different losses are compared cheaply and without fine-tuning noise.

Run: ``affectline train probe imagenet runs/pre/last.pt --data ferplus:DIR --data expw:DIR --out runs/probe``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE, ViewGeometry
from train.checkpoint import checkpoint_meta, load_checkpoint, match_weights
from train.data.dataset import DualViewDataset
from train.data.records import CLASSES, DataError, Sample
from train.data.sources import load_source
from train.engine import Runtime, to_inputs
from train.metrics import classification_report
from train.models import build_model
from train.models.dual_view import DualViewNet

IMAGENET = "imagenet"  # the encoder as initialised from ImageNet MobileNetV2, before any of our training
IMAGENET_MODEL = "affectline_mnv2_64"  # ...probed at the default view geometry


@dataclass
class ProbeData:
    """The probe's images, decoded once and shared by every encoder.

    Attributes:
        person: (N, 3, S, S) uint8 person views.
        scene: (N, 3, S, S) uint8 scene views.
        label: (N,) majority class.
        source: (N,) source name.
        train: (N,) True for the probe's training images, False for held-out test images.
        skipped: Images that could not be read.
        readers: Each reader's one-line summary of the rows it kept and skipped.
    """

    person: torch.Tensor
    scene: torch.Tensor
    label: np.ndarray
    source: np.ndarray
    train: np.ndarray
    skipped: int
    readers: list[str]


def _probe_label(item: dict[str, Any], train: bool) -> int:
    """A training image's label is its distribution's top class; a test image's, its majority label."""
    return int(item["dist"].argmax()) if train else int(item["label"])


def _labelled(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.label >= 0 or s.dist is not None]


def load_probe_data(
    specs: list[str],
    train_per_source: int,
    seed: int = 0,
    person: ViewGeometry = DEFAULT_PERSON,
    scene: ViewGeometry = DEFAULT_SCENE,
) -> ProbeData:
    """Labelled training images (at most ``train_per_source`` per source, drawn at random) and every
    test image with a majority label of each source, as views of the given geometry.

    The images drawn depend on ``seed`` only, so encoders probed at different geometries see the
    same images.

    Raises:
        ValueError: ``train_per_source`` < 1.
        DataError: a source without a readable labelled training image or test image.
    """
    if train_per_source < 1:
        raise ValueError(f"train_per_source={train_per_source}: must be >= 1")
    rng = np.random.default_rng(seed)
    chosen: list[tuple[Sample, bool]] = []
    readers: list[str] = []
    parts: list[tuple[str, int]] = []  # (spec, index in ``chosen`` where its samples end)
    for spec in specs:
        splits = load_source(spec)
        readers += [r.summary() for r in splits.reports]
        train = _labelled(splits.train)
        if not train:
            raise DataError(
                f"data source {spec!r}: no labelled training images (the probe needs a source with its "
                "own train/test split: ferplus, expw or emotion6)"
            )
        take = sorted(rng.permutation(len(train))[:train_per_source].tolist())
        # Test images are scored on their majority label, as `train evaluate` scores them (FER+
        # images whose majority is contempt/unknown/not-a-face have none and are left out).
        chosen += [(train[i], True) for i in take] + [(s, False) for s in splits.test if s.label >= 0]
        parts.append((spec, len(chosen)))
    ds = DualViewDataset([s for s, _ in chosen], person, scene)
    items = [ds[i] for i in range(len(ds))]
    ok = [i for i, it in enumerate(items) if it["valid"]]
    _require_both_parts(parts, chosen, set(ok), ds.bad)
    return ProbeData(
        person=torch.stack([items[i]["person"] for i in ok]),
        scene=torch.stack([items[i]["scene"] for i in ok]),
        label=np.array([_probe_label(items[i], chosen[i][1]) for i in ok]),
        source=np.array([chosen[i][0].source for i in ok]),
        train=np.array([chosen[i][1] for i in ok]),
        skipped=len(items) - len(ok),
        readers=readers,
    )


def _require_both_parts(
    parts: list[tuple[str, int]], chosen: list[tuple[Sample, bool]], ok: set[int], bad: dict[str, str]
) -> None:
    """Every source needs a readable training and a readable test image: a fit on nothing, or a
    score on nothing, would read as 0 %.

    Raises:
        DataError: naming the source, the part and one reason its images were unusable.
    """
    start = 0
    for spec, end in parts:
        for part, is_train in (("training", True), ("test", False)):
            wanted = [i for i in range(start, end) if chosen[i][1] == is_train]
            if not any(i in ok for i in wanted):
                why = bad.get(chosen[wanted[0]][0].image, "unusable") if wanted else "none labelled"
                raise DataError(f"data source {spec!r}: no usable {part} image among {len(wanted)} ({why})")
        start = end


@dataclass(frozen=True)
class Encoder:
    """A frozen encoder and the view geometry it was trained at (its probe data is cut to match).

    Attributes:
        net: The network in eval mode (the probe uses its encoder and view embedding only).
        person: Person-view geometry.
        scene: Scene-view geometry.
    """

    net: DualViewNet
    person: ViewGeometry
    scene: ViewGeometry

    @property
    def geometry(self) -> tuple[ViewGeometry, ViewGeometry]:
        return self.person, self.scene


def load_encoder(name: str) -> Encoder:
    """``imagenet`` (default model at the default geometry), or the network a pretraining or
    fine-tuning checkpoint names, with its weights and its view geometry.

    Raises:
        CheckpointError: unreadable checkpoint, or one without encoder weights of this model family.
    """
    if name == IMAGENET:
        return Encoder(build_model(IMAGENET_MODEL, pretrained=True).eval(), DEFAULT_PERSON, DEFAULT_SCENE)
    blob = load_checkpoint(name)
    net = build_model(blob["model"], **{**blob["model_kwargs"], "pretrained": False})
    match_weights(net, blob, name)
    views = {spec.view: spec.geometry for spec in checkpoint_meta(blob, name).inputs}
    return Encoder(net.eval(), views["person"], views["scene"])


@torch.no_grad()
def extract(net: DualViewNet, data: ProbeData, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1280) pooled person features and (N, 1280) pooled scene features of the frozen encoder."""
    rt = Runtime(torch.device("cpu"))
    person, scene = [], []
    for start in range(0, len(data.label), batch_size):
        batch = slice(start, start + batch_size)
        views = {"person": data.person[batch], "scene": data.scene[batch]}
        p, s = net.pooled(*to_inputs(views, rt, None, None))
        person.append(p.numpy())
        scene.append(s.numpy())
    return np.concatenate(person), np.concatenate(scene)


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-3, iters: int = 100) -> Any:
    """Multinomial logistic regression on standardised features, full-batch L-BFGS.

    Args:
        x: (N, D) training features.
        y: (N,) class indices in [0, num_classes).
        num_classes: Output classes.
        l2: Weight decay on the weights (not the bias); fixed, so no test-set tuning enters the probe.
        iters: L-BFGS iterations.

    Returns:
        A function (M, D) features → (M,) predicted classes.
    """
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.as_tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach(), b.detach()

    def predict(z: np.ndarray) -> np.ndarray:
        zt = torch.as_tensor((z - mean) / std, dtype=torch.float32)
        return (zt @ w_ + b_).argmax(1).numpy()

    return predict


def probe(net: DualViewNet, data: ProbeData) -> dict[str, dict[str, dict[str, float]]]:
    """Test top-1 and macro-F1 per source, for person-only and person+scene features.

    Returns:
        ``{"person": {source: {"accuracy", "macro_f1", "n"}}, "person+scene": {...}}``.
    """
    person, scene = extract(net, data)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, x in (("person", person), ("person+scene", np.concatenate([person, scene], 1))):
        predict = fit_logistic(x[data.train], data.label[data.train], len(CLASSES))
        test = ~data.train
        pred = predict(x[test])
        out[name] = {}
        for src in sorted(set(data.source[test].tolist())):
            keep = data.source[test] == src
            rep = classification_report(data.label[test][keep], pred[keep], CLASSES)
            out[name][src] = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"], "n": rep["n"]}
    return out
