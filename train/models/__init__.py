"""Model factory. Names encode the architecture and the view sizes so a checkpoint is self-describing.

``affectline_mnv2_<S>``: person and scene views both S×S; ``affectline_mnv2_<Sp>_<Ss>``: person Sp×Sp,
scene Ss×Ss. Every model maps ``(person (N,3,Sp,Sp), scene (N,3,Ss,Ss))`` to
``(logits (N,7), valence_arousal (N,2))`` on inputs normalised as ``(x/255 - mean)/std``.
"""

from __future__ import annotations

import re
from typing import Any

from train.models.dual_view import DualViewNet

# ImageNet statistics: the encoder was pretrained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NAME = re.compile(r"^affectline_mnv2_(\d+)(?:_(\d+))?$")


def view_sizes(name: str) -> tuple[int, int]:
    """(person size, scene size) encoded in a model name.

    Raises:
        ValueError: the name is not ``affectline_mnv2_<S>`` or ``affectline_mnv2_<Sp>_<Ss>`` with
            sizes that are multiples of 32 in [32, 256].
    """
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"model name {name!r} unknown; use affectline_mnv2_<S> or affectline_mnv2_<Sp>_<Ss>")
    sp = int(m.group(1))
    ss = int(m.group(2) or sp)
    for s in (sp, ss):
        if s % 32 or not 32 <= s <= 256:
            raise ValueError(f"model name {name!r}: view size {s} must be a multiple of 32 in [32, 256]")
    return sp, ss


def build_model(name: str, **kwargs: Any) -> DualViewNet:
    """Build a model by factory name; ``kwargs`` go to the network (e.g. ``pretrained=False``).

    Raises:
        ValueError: unknown name (see ``view_sizes``).
    """
    view_sizes(name)
    return DualViewNet(**kwargs)
