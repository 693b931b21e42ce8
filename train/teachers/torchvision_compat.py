"""Let torchvision's pure-Python parts import beside a torch whose build does not match its compiled ops.

PyPI's ``torchvision==0.28.0`` for x86_64 Linux is a CUDA 13 build (``0.28.0+cu130``, CUDA runtime and
nvJPEG bundled, no ``nvidia-*`` packages pulled) whose ``_C`` extension links ``libtorch_cuda.so``. Beside
the CPU ``torch==2.13.0+cpu`` wheel that extension cannot load. torchvision copes with that for most of its
operators, but 0.28 registers fake kernels for ``nms`` and ``qnms`` unconditionally, so ``import
torchvision`` raises ``operator torchvision::nms does not exist`` — and so does every importer of it:
``open_clip`` (the CLIP teacher) and ``transformers`` (``sentence-transformers``), although both need only
torchvision's transforms.

``ensure_torchvision_importable`` defines the schemas of those two operators, and only when torchvision's
compiled ops cannot load, so the import succeeds; calling ``torchvision.ops.nms`` then still fails with
torchvision's own "Couldn't load custom C++ ops" error. Where the ops load (a matching torch/torchvision
pair), it changes nothing.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys

import torch

# The operators torchvision 0.28 registers fake kernels for without checking that its ops loaded.
UNGUARDED_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# Kept for the life of the process: dropping a Library object removes its definitions again.
_library: torch.library.Library | None = None


def compiled_ops_load() -> bool | None:
    """Whether torchvision's ``_C`` extension loads into this torch.

    Returns:
        None when torchvision is not installed, else True or False.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    # Found the way torchvision's own extension loader finds it.
    finder = importlib.machinery.FileFinder(
        spec.submodule_search_locations[0],
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    )
    ext = finder.find_spec("_C")
    if ext is None or ext.origin is None:
        return False
    try:
        torch.ops.load_library(ext.origin)
    except OSError:
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Define torchvision's unguarded operator schemas when its compiled ops cannot load.

    Call it before anything imports torchvision (``open_clip``, ``timm``, ``transformers``).

    Returns:
        True when the schemas were defined here (torchvision imports, its compiled ops stay unavailable);
        False when nothing was needed: torchvision is absent, already imported, or its ops load.
    """
    global _library
    if _library is not None:
        return True
    if "torchvision" in sys.modules or compiled_ops_load() in (None, True):
        return False
    _library = torch.library.Library("torchvision", "DEF")
    for schema in UNGUARDED_OPS.values():
        _library.define(schema)
    return True
