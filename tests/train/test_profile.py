"""Model cost report: parameters and FLOPs within the edge budget; throughput measurement runs."""

from __future__ import annotations

import pytest

from train.profile import model_cost, train_throughput


@pytest.mark.parametrize("name,max_mflops", [("affectline_mnv2_64", 110), ("affectline_mnv2_96_64", 170)])
def test_model_cost(name: str, max_mflops: float) -> None:
    cost = model_cost(name)
    assert cost["params"] < 10e6 and 0 < cost["flops_per_person"] < max_mflops * 1e6


def test_train_throughput_runs() -> None:
    assert train_throughput("affectline_mnv2_64", batch=2, steps=1, threads=1, warmup=0) > 0


def test_train_throughput_bad_steps() -> None:
    with pytest.raises(ValueError, match="steps=0"):
        train_throughput("affectline_mnv2_64", steps=0)
