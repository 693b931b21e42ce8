"""The host-copy guard of `DeviceBuffer` (pure logic; the copies themselves need a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.cuda_mem import DeviceBuffer


def _block(nbytes: int) -> DeviceBuffer:
    buf = DeviceBuffer.__new__(DeviceBuffer)  # no cudaMalloc: the guard runs before any CUDA call
    buf.nbytes = nbytes
    return buf


@pytest.mark.parametrize(
    "host,ok",
    [
        (np.zeros(0, np.float32), True),
        (np.zeros(4, np.float32), True),
        (np.zeros(5, np.float32), False),  # one element past the end
        (np.zeros((4, 2), np.float32)[:, 0], False),  # fits, but strided
    ],
    ids=["empty", "exact", "too-big", "strided"],
)
def test_a_copy_must_be_contiguous_and_fit_the_block(host: np.ndarray, ok: bool) -> None:
    block = _block(16)
    if ok:
        block._check(host)
    else:
        with pytest.raises(ValueError, match="does not fit a device block of 16 bytes"):
            block._check(host)
