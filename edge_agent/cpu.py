"""What this CPU can do, for choices that depend on it (no heavy imports: sidecars use it too)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path


def int8_kernel(machine: str, flags: Collection[str]) -> str:
    """The family of INT8 kernels ONNX Runtime uses on a CPU.

    Args:
        machine: ``platform.machine()``.
        flags: The CPU's feature flags (`cpu_flags`).
    """
    arch = machine.lower()
    if arch in ("x86_64", "amd64"):
        return "x86 VNNI" if {"avx512_vnni", "avx_vnni"} & set(flags) else "x86 without VNNI"
    if arch in ("aarch64", "arm64"):
        # Without the dot-product instructions INT8 is exact but its speed was never measured.
        return "arm64 dot product" if "asimddp" in flags else "arm64 without dot product"
    return f"{machine or 'unknown CPU'} (not measured)"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first ``flags`` (x86) or ``Features`` (ARM) line of ``cpuinfo``; empty where unreadable."""
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()
