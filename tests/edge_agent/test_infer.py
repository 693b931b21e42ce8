"""Inference stage on real ONNX models run by ONNX Runtime (tiny graphs built with onnx.helper)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.config import Inference, OnnxRuntimeBackend
from edge_agent.cpu import (
    X86_NO_VNNI,
    cpu_flags,
    host_int8_kernel,
    int8_kernel,
    needs_exact_int8,
    ort_session_options,
)
from edge_agent.detect import BlazeFace
from edge_agent.infer import (
    BUILTIN_MODELS,
    EmotionInferencer,
    ModelLoadError,
    OrtBackend,
    Preprocessor,
    auto_model,
    mirrored,
    predict,
    resolve_model_path,
    softmax,
)
from edge_agent.structures import Detections, Frame, FrameResult
from tests.conftest import shared_path
from tests.edge_agent.conftest import asks_exact_int8
from tests.model_factory import CLASSES, make_tiny_model, tiny_meta


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "tiny.onnx", size=32)


def backend(path: Path) -> OrtBackend:
    return OrtBackend(OnnxRuntimeBackend(type="onnxruntime", model=str(path)))


def result(
    camera: str, index: int, faces: Sequence[Sequence[float] | None], image: np.ndarray | None = None
) -> FrameResult:
    img = (
        image if image is not None else np.random.default_rng(index).integers(0, 255, (240, 320, 3), np.uint8)
    )
    face = np.array([f if f is not None else [np.nan] * 4 for f in faces], np.float32).reshape(-1, 4)
    person = np.where(np.isnan(face), np.array([[0, 0, 100, 200]], np.float32), face)
    person[:, 2:] += 20
    det = Detections(
        xyxy=person,
        confidence=np.full(len(faces), 0.9),
        face_xyxy=face,
        tracker_id=np.arange(1, len(faces) + 1),
    )
    return FrameResult(Frame(camera, img, index, float(index), 0.0), det, CLASSES)


def test_backend_reads_metadata_and_runs(tiny: Path) -> None:
    b = backend(tiny)
    assert b.meta.classes == CLASSES
    x = np.zeros((3, 3, 32, 32), np.float32)
    logits, va = b.run({"person": x, "scene": x})
    assert logits.shape == (3, 7) and va.shape == (3, 2) and np.abs(va).max() <= 1


def _with_props(tmp_path: Path, props: dict[str, str]) -> Path:
    return make_tiny_model(tmp_path / "m.onnx", props=props)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing.onnx", "is not a file"),
        (
            lambda p: (p / "junk.onnx").write_bytes(b"\x00garbage") and p / "junk.onnx",
            "not a loadable ONNX model",
        ),
        (lambda p: _with_props(p, {}), "metadata key 'affectline.format' is missing"),
        (lambda p: _with_props(p, tiny_meta(48).to_props()), "has shape"),
        (
            lambda p: _with_props(p, tiny_meta(32, person_name="face").to_props()),
            "metadata names input 'face'",
        ),
    ],
)
def test_bad_models_are_refused_with_the_file_named(tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ModelLoadError, match=match) as info:
        backend(path)
    assert str(path) in str(info.value)


def test_bad_output_name_refused(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "affectline.outputs":
            p.value = '{"logits": "probs", "valence_arousal": "valence_arousal"}'
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="metadata names output 'probs'"):
        backend(path)


def test_preprocessor_normalises_and_flips_to_rgb(tiny: Path) -> None:
    pre = Preprocessor(backend(tiny).meta)
    img = np.zeros((100, 100, 3), np.uint8)
    img[..., 0] = 255  # pure blue in BGR
    views = pre.views(img, np.array([[40, 40, 60, 60]], np.float32))
    x = pre.normalise("person", views["person"])
    assert x.shape == (1, 3, 32, 32)
    # RGB order: blue is channel 2 -> (1 - 0.5)/0.25 = 2; red is channel 0 -> (0 - 0.5)/0.25 = -2
    assert x[0, 2].mean() == pytest.approx(2.0) and x[0, 0].mean() == pytest.approx(-2.0)


@pytest.mark.parametrize(("resample", "aliased"), [("bilinear", True), ("area", False)])
def test_preprocessor_resamples_as_the_model_file_says(tmp_path: Path, resample: str, aliased: bool) -> None:
    """The model file's ``resample`` (written into the ONNX, read back) decides how large faces shrink."""
    meta = tiny_meta()
    meta = dataclasses.replace(
        meta,
        inputs=tuple(
            dataclasses.replace(s, geometry=dataclasses.replace(s.geometry, resample=resample))
            for s in meta.inputs
        ),
    )
    pre = Preprocessor(backend(make_tiny_model(tmp_path / "m.onnx", meta=meta)).meta)
    stripes = np.zeros((1200, 1200, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a flat grey when averaged
    person = pre.views(stripes, np.array([[450, 450, 750, 750]], np.float32))["person"]
    off_grey = float(np.abs(person.astype(float) - 127.5).mean())
    assert (off_grey > 40) if aliased else (off_grey < 8)


def test_first_sight_infers_then_cache_then_reinfer(tiny: Path) -> None:
    inf = EmotionInferencer(backend(tiny), Inference(reinfer_every_n=3))
    faces = [[50, 50, 90, 90], [150, 60, 190, 100]]
    r0 = inf.infer([result("a", 0, faces)])[0]
    d = r0.detections.data
    assert d["observed"].all() and np.allclose(d["probs_raw"].sum(1), 1, atol=1e-5)
    assert ((d["quality"] > 0) & (d["quality"] <= 1)).all()
    r1 = inf.infer([result("a", 1, faces)])[0]
    assert not r1.detections.data["observed"].any()
    assert np.allclose(r1.detections.data["probs_raw"], d["probs_raw"])
    r3 = inf.infer([result("a", 3, faces)])[0]
    assert r3.detections.data["observed"].all()
    assert inf.calls == 2 and inf.persons_inferred == 4


def test_box_growth_forces_reinference(tiny: Path) -> None:
    inf = EmotionInferencer(backend(tiny), Inference(reinfer_every_n=100, reinfer_scale_change=0.2))
    inf.infer([result("a", 0, [[50, 50, 90, 90]])])
    same = inf.infer([result("a", 1, [[51, 50, 91, 90]])])[0]
    grown = inf.infer([result("a", 2, [[50, 50, 100, 100]])])[0]
    assert not same.detections.data["observed"][0] and grown.detections.data["observed"][0]


def test_persons_without_face_are_not_inferred(tiny: Path) -> None:
    inf = EmotionInferencer(backend(tiny), Inference())
    r = inf.infer([result("a", 0, [None, [50, 50, 90, 90]])])[0]
    d = r.detections.data
    assert list(d["observed"]) == [False, True] and d["quality"][0] == 0
    assert np.allclose(d["probs_raw"][0], 1 / 7)


def test_all_cameras_share_one_call_and_max_batch_splits(tiny: Path) -> None:
    faces = [[10 + 40 * i, 50, 40 + 40 * i, 80] for i in range(5)]
    inf = EmotionInferencer(backend(tiny), Inference(max_batch=16))
    inf.infer([result("a", 0, faces), result("b", 0, faces)])
    assert inf.calls == 1 and inf.persons_inferred == 10
    small = EmotionInferencer(backend(tiny), Inference(max_batch=4))
    out = small.infer([result("a", 0, faces), result("b", 0, faces)])
    assert small.calls == 3 and all(r.detections.data["observed"].all() for r in out)


def test_batched_equals_single(tiny: Path) -> None:
    """A person's estimate must not depend on who else is in the batch."""
    faces = [[50, 50, 90, 90], [150, 60, 190, 100]]
    img = np.random.default_rng(1).integers(0, 255, (240, 320, 3), np.uint8)
    both = EmotionInferencer(backend(tiny), Inference()).infer([result("a", 0, faces, img)])[0]
    one = EmotionInferencer(backend(tiny), Inference()).infer([result("a", 0, faces[1:], img)])[0]
    assert np.allclose(both.detections.data["probs_raw"][1], one.detections.data["probs_raw"][0], atol=1e-5)


def test_ended_tracks_are_forgotten(tiny: Path) -> None:
    inf = EmotionInferencer(backend(tiny), Inference(reinfer_every_n=100))
    inf.infer([result("a", 0, [[50, 50, 90, 90]])])
    inf.forget("a", (1,))
    again = inf.infer([result("a", 1, [[50, 50, 90, 90]])])[0]
    assert again.detections.data["observed"][0]


@pytest.mark.parametrize("width", [1, 2, 32])
def test_mirrored_flips_only_the_width(width: int) -> None:
    x = np.arange(2 * 3 * 4 * width, dtype=np.float32).reshape(2, 3, 4, width)
    m = mirrored({"person": x})["person"]
    assert m.shape == x.shape and m.flags.c_contiguous
    assert np.array_equal(m[..., ::-1], x)  # width reversed, batch/channel/height untouched
    assert np.array_equal(mirrored(mirrored({"p": x}))["p"], x)


def _inputs(b: OrtBackend, n: int, seed: int, symmetric: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for spec in b.meta.inputs:
        x = rng.normal(size=(n, 3, spec.geometry.size, spec.geometry.size)).astype(np.float32)
        out[spec.name] = (x + x[..., ::-1]) / 2 if symmetric else x
    return out


@pytest.fixture(scope="module")
def shipped() -> OrtBackend:
    """The shipped FP32 model: a real network that, unlike the tiny pooled one, sees left from right."""
    return backend(BUILTIN_MODELS["default"])


def test_predict_mirror_average_is_the_mean_of_both_runs(shipped: OrtBackend) -> None:
    b = shipped
    x = _inputs(b, 5, seed=0)
    plain, va = predict(b, x, mirror_average=False)
    logits, va_run = b.run(x)
    assert np.allclose(plain, softmax(logits)) and np.allclose(va, va_run)
    logits_m, va_m = b.run(mirrored(x))
    avg, va_avg = predict(b, x, mirror_average=True)
    assert np.allclose(avg, (softmax(logits) + softmax(logits_m)) / 2, atol=1e-6)
    assert np.allclose(va_avg, (va_run + va_m) / 2, atol=1e-6)
    assert np.allclose(avg.sum(1), 1, atol=1e-5) and not np.allclose(avg, plain, atol=1e-3)


def test_predict_mirror_average_changes_nothing_for_symmetric_views(shipped: OrtBackend) -> None:
    x = _inputs(shipped, 3, seed=1, symmetric=True)
    on, off = predict(shipped, x, True), predict(shipped, x, False)
    assert np.allclose(on[0], off[0], atol=1e-5) and np.allclose(on[1], off[1], atol=1e-5)


@pytest.mark.parametrize("mirror", [False, True])
def test_inferencer_follows_mirror_average(shipped: OrtBackend, mirror: bool) -> None:
    """The stage's raw estimate is exactly ``predict`` on its own views, with the configured mirroring."""
    faces = [[50, 50, 90, 90], [150, 60, 190, 100]]
    img = np.random.default_rng(2).integers(0, 255, (240, 320, 3), np.uint8)
    b = shipped
    out = EmotionInferencer(b, Inference(mirror_average=mirror)).infer([result("a", 0, faces, img)])[0]
    pre = Preprocessor(b.meta)
    views = pre.views(img, np.array(faces, np.float32))
    want, _ = predict(b, {k: pre.normalise(k, v) for k, v in views.items()}, mirror)
    assert np.allclose(out.detections.data["probs_raw"], want, atol=1e-6)


def test_quality_does_not_depend_on_the_model_input_size(tmp_path: Path) -> None:
    """Sharpness is measured on a person view cut at SHARPNESS_SIDE px for every model: the same face
    must weigh the same in the smoother whether the model takes 32- or 96-px views (at its own
    input size a 96-px model measured ~4.5x less Laplacian variance on the same face)."""
    face = cv2.imread(str(sorted(shared_path("data", "ferplus", "FER2013Test").glob("*.png"))[0]))
    img = np.full((240, 320, 3), 128, np.uint8)
    img[60:156, 100:196] = cv2.resize(face, (96, 96))
    box = [[110, 70, 186, 146]]
    quality = {}
    for size in (32, 64, 96):
        model = make_tiny_model(tmp_path / f"m{size}.onnx", size=size)
        out = EmotionInferencer(backend(model), Inference()).infer([result("a", 0, box, img)])[0]
        quality[size] = float(out.detections.data["quality"][0])
    assert 0 < quality[64] < 1
    assert quality[32] == pytest.approx(quality[64], rel=1e-6)
    assert quality[96] == pytest.approx(quality[64], rel=1e-6)


def test_softmax_is_stable() -> None:
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(p, np.array([[1.0, 0.0], [0.5, 0.5]]))


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_shipped_model_matches_its_sidecar_and_the_fp32_contract(name: str) -> None:
    """Every built-in name resolves to a file whose sha256 is the one its build sidecar recorded,
    and which carries the FP32 model's classes and views (an INT8 file cut differently would
    silently change what the agent computes)."""
    path = BUILTIN_MODELS[name]
    if not path.is_file():
        pytest.skip(f"{path.name} is not in this install")
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    ref = backend(BUILTIN_MODELS["default"]).meta
    meta = backend(path).meta
    assert meta.classes == ref.classes and meta.inputs == ref.inputs


@pytest.mark.parametrize("name", ["default-int8", "default-int8-cpu"])
def test_shipped_int8_models_agree_with_fp32_on_real_faces(name: str, single_face_clip: Path) -> None:
    """Top-1 of each INT8 file equals FP32's on most faces BlazeFace finds in a real clip."""
    faces = BlazeFace("full_range", 0.5, 20)
    cap = cv2.VideoCapture(str(single_face_clip))
    fp32 = backend(BUILTIN_MODELS["default"])
    int8 = backend(BUILTIN_MODELS[name])
    pre = Preprocessor(fp32.meta)
    views: dict[str, list[np.ndarray]] = {s.name: [] for s in fp32.meta.inputs}
    for _ in range(0, 72, 3):
        frame = cap.read()[1]
        cap.grab(), cap.grab()
        boxes, _ = faces.find(frame)
        for k, v in pre.views(frame, boxes[:1]).items():
            views[k].append(pre.normalise(k, v))
    cap.release()
    faces.close()
    batch = {k: np.concatenate(v) for k, v in views.items()}
    assert len(batch[fp32.meta.inputs[0].name]) >= 20  # the face is visible in nearly every frame
    agree = (fp32.run(batch)[0].argmax(1) == int8.run(batch)[0].argmax(1)).mean()
    assert agree >= 0.75, f"{name}: top-1 agreement with FP32 {agree:.2f}"


@pytest.mark.parametrize(
    ("kernel", "model"),
    [
        ("x86_64 (CPU flags unreadable)", "default"),
        ("riscv64 (not measured)", "default"),
        ("x86 without VNNI", "default"),
        ("arm64 without dot product", "default"),
        ("x86 VNNI", "default-int8-cpu"),
        ("arm64 dot product", "default-int8-cpu"),
    ],
)
def test_auto_model_follows_the_int8_kernels(kernel: str, model: str) -> None:
    assert auto_model(kernel) == model


@pytest.mark.parametrize(
    ("machine", "flags", "name", "resolved", "logged"),
    [
        (
            "x86_64",
            set(),
            "auto",
            "default",
            "model auto: default on this CPU (INT8 kernels: x86_64 (CPU flags",
        ),
        (
            "x86_64",
            {"avx2"},
            "auto",
            "default",
            "model auto: default on this CPU (INT8 kernels: x86 without VNNI)",
        ),
        ("x86_64", {"avx512_vnni"}, "auto", "default-int8-cpu", "model auto: default-int8-cpu on this CPU"),
        ("aarch64", {"asimddp"}, "auto", "default-int8-cpu", "INT8 kernels: arm64 dot product"),
        ("x86_64", {"avx2"}, "default-int8-cpu", "default-int8-cpu", "default-int8-cpu is slower than FP32"),
        ("x86_64", {"avx512_vnni"}, "default-int8", "default-int8", "default-int8 is slower than FP32"),
        ("x86_64", set(), "default-int8", "default-int8", "default-int8 is slower than FP32"),  # any x86
        ("x86_64", {"avx512_vnni"}, "default-int8-cpu", "default-int8-cpu", None),
        ("aarch64", {"asimd"}, "default-int8-cpu", "default-int8-cpu", None),  # not measured: no claim
    ],
)
def test_resolve_model_path_names_its_choice(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    machine: str,
    flags: set[str],
    name: str,
    resolved: str,
    logged: str | None,
) -> None:
    monkeypatch.setattr("edge_agent.infer.platform.machine", lambda: machine)
    monkeypatch.setattr("edge_agent.infer.host_int8_kernel", lambda: int8_kernel(machine, flags))
    if not BUILTIN_MODELS[resolved].is_file():
        pytest.skip(f"{resolved} is not in this install")
    with caplog.at_level("INFO", logger="edge_agent.infer"):
        assert resolve_model_path(name, log_choice=False) == BUILTIN_MODELS[resolved]  # checks stay quiet
        assert not caplog.records
        assert resolve_model_path(name) == BUILTIN_MODELS[resolved]
    if logged is None:
        assert not caplog.records
    else:
        assert logged in caplog.text


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (None, "inference.backend.model"),  # the agent's config key, the default
        ("model", "model"),  # a command-line argument
    ],
)
def test_missing_model_names_the_callers_key(tmp_path: Path, key: str | None, expected: str) -> None:
    missing = str(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError) as info:
        resolve_model_path(missing) if key is None else resolve_model_path(missing, key=key)
    assert str(info.value) == f"{expected}: {missing!r} is not a file"


def _saturating_conv(channels: int = 64) -> bytes:
    """A Q/DQ 1x1 convolution of activations 255 with weights 127, summed over ``channels``: exactly
    ``channels``, but VPMADDUBSW's 16-bit pair sums (255 * 127 * 2 > 32767) halve it on x86 CPUs
    without VNNI unless the exact kernel is chosen."""
    init = numpy_helper.from_array
    inits = [
        init(np.array(1 / 255, np.float32), "xs"),
        init(np.array(0, np.uint8), "xz"),
        init(np.full((1, channels, 1, 1), 127, np.int8), "wq"),
        init(np.array(1 / 127, np.float32), "ws"),
        init(np.array(0, np.int8), "wz"),
        init(np.array(0.5, np.float32), "ys"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["yc"]),
        # The output Q/DQ is what lets ONNX Runtime fuse the whole into one integer convolution.
        helper.make_node("QuantizeLinear", ["yc", "ys", "xz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "xz"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "saturating_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.parametrize("exact", [False, True])
def test_int8_is_exact_on_every_cpu(exact: bool) -> None:
    """The agent's options give 64 everywhere; ONNX Runtime's defaults saturate to 32.5 on x86 CPUs
    without VNNI (which shows that the model reaches the kernel in question)."""
    options = ort_session_options(1) if exact else ort.SessionOptions()
    session = ort.InferenceSession(_saturating_conv(), options, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": np.ones((1, 64, 2, 2), np.float32)})[0]
    kernel = int8_kernel(platform.machine(), cpu_flags())
    if exact or kernel != X86_NO_VNNI:
        assert np.all(y == 64.0), f"INT8 saturated ({kernel}): {y.ravel()}"
    else:
        assert np.all(y == 32.5), f"{kernel}: {y.ravel()}"


def test_the_agent_runs_onnx_runtime_with_the_exact_int8_kernels_where_needed(tiny: Path) -> None:
    options = backend(tiny).session.get_session_options()
    assert asks_exact_int8(options) is needs_exact_int8(host_int8_kernel())
