"""What this CPU can do, and the ONNX Runtime settings that follow (no heavy imports: sidecars use it)."""

from __future__ import annotations

import functools
import platform
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime as ort


# The INT8 kernel families `int8_kernel` tells apart (sidecars record them, `auto` follows them).
X86_VNNI = "x86 VNNI"
X86_NO_VNNI = "x86 without VNNI"
ARM_DOTPROD = "arm64 dot product"
ARM_NO_DOTPROD = "arm64 without dot product"
# Where INT8 is faster than FP32: x86 VNNI measured (docs/benchmarks.md); ARM dot product from ONNX Runtime's
# quantization guide ("ARM with dot-product instructions can get better performance"), not measured here.
FAST_INT8_KERNELS = (X86_VNNI, ARM_DOTPROD)


def int8_kernel(machine: str, flags: Collection[str]) -> str:
    """The family of INT8 kernels ONNX Runtime uses on a CPU.

    Args:
        machine: ``platform.machine()``.
        flags: The CPU's feature flags (`cpu_flags`); empty when they could not be read.

    Returns:
        One of the constants above, or a description of a CPU that is none of them.
    """
    arch = machine.lower()
    if arch not in ("x86_64", "amd64", "aarch64", "arm64"):
        return f"{machine or 'unknown CPU'} (not measured)"
    if not flags:  # no /proc/cpuinfo (macOS, Windows): say so rather than guess
        return f"{machine} (CPU flags unreadable)"
    if arch in ("x86_64", "amd64"):
        return X86_VNNI if {"avx512_vnni", "avx_vnni"} & set(flags) else X86_NO_VNNI
    # Without the dot-product instructions INT8 is exact but its speed was never measured.
    return ARM_DOTPROD if "asimddp" in flags else ARM_NO_DOTPROD


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


@functools.cache
def host_int8_kernel() -> str:
    """`int8_kernel` of the CPU this process runs on (read once: the CPU does not change)."""
    return int8_kernel(platform.machine(), cpu_flags())


def needs_exact_int8(kernel: str) -> bool:
    """Whether ONNX Runtime must be told to use its exact U8U8 INT8 kernel on this CPU.

    On x86 without VNNI the default kernel (VPMADDUBSW) saturates its 16-bit pair sums for 8-bit
    weights. VNNI's VPDPBUSD sums into 32 bits and is exact without help, and there the U8U8 kernel
    would only cost speed: 1.7x the time at batch 1 for the CPU INT8 default, with bit-identical
    outputs (docs/benchmarks.md, "The exact INT8 kernel only where it is needed"). Where the flags
    cannot be read the CPU might lack VNNI, so the exact kernel stays. On ARM the option (named for
    x64 kernels) stays as before: its effect there was never measured.

    Args:
        kernel: `int8_kernel` of the CPU.
    """
    return kernel != X86_VNNI


def ort_session_options(threads: int, kernel: str | None = None) -> ort.SessionOptions:
    """ONNX Runtime CPU session options for Affectline models (the agent, verification, benchmarks).

    ``session.x64quantprecision`` where `needs_exact_int8`: it runs the layers whose weights exceed
    7 bits on an exact U8U8 kernel, so an INT8 file gives the same answers on every CPU. Without it
    the 96-px default's CPU INT8 file read 79.5 instead of 81.8 % on FER+ Test on an AVX2-only EPYC
    (docs/benchmarks.md, "INT8 on CPUs without VNNI"). It changes nothing for FP32 files.

    Args:
        threads: Intra-op threads (0: ONNX Runtime's default, one per physical core).
        kernel: `int8_kernel` of the CPU the session runs on; None: this host's.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if needs_exact_int8(host_int8_kernel() if kernel is None else kernel):
        opts.add_session_config_entry("session.x64quantprecision", "1")
    return opts
