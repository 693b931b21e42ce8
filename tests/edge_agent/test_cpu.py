"""CPU capability detection (pure functions over a machine name and a cpuinfo text) and the ONNX Runtime
options that follow from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cpu import (
    ARM_DOTPROD,
    X86_NO_VNNI,
    X86_VNNI,
    cpu_flags,
    int8_kernel,
    needs_exact_int8,
    ort_session_options,
)
from tests.edge_agent.conftest import asks_exact_int8


@pytest.mark.parametrize(
    ("machine", "flags", "kernel"),
    [
        ("", set(), "unknown CPU (not measured)"),
        ("riscv64", {"rv64imafdc"}, "riscv64 (not measured)"),
        ("x86_64", set(), "x86_64 (CPU flags unreadable)"),  # no /proc/cpuinfo: not a guess
        ("arm64", set(), "arm64 (CPU flags unreadable)"),
        ("x86_64", {"sse4_1", "avx2", "avx512f"}, "x86 without VNNI"),
        ("x86_64", {"avx2", "avx512_vnni"}, "x86 VNNI"),
        ("AMD64", {"avx2", "avx_vnni"}, "x86 VNNI"),
        ("aarch64", {"fp", "asimd"}, "arm64 without dot product"),
        ("aarch64", {"fp", "asimd", "asimddp"}, "arm64 dot product"),
    ],
)
def test_int8_kernel(machine: str, flags: set[str], kernel: str) -> None:
    assert int8_kernel(machine, flags) == kernel


X86 = "processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        (None, frozenset()),  # no such file (not Linux)
        ("", frozenset()),
        ("processor\t: 0\nmodel name\t: x\n", frozenset()),
        (X86, {"fpu", "avx2", "avx512_vnni"}),  # the first CPU's line
        (ARM, {"fp", "asimd", "asimddp"}),
    ],
)
def test_cpu_flags_reads_the_first_flags_line(
    tmp_path: Path, text: str | None, flags: frozenset[str]
) -> None:
    path = tmp_path / "cpuinfo"
    if text is not None:
        path.write_text(text)
    assert cpu_flags(path) == flags


@pytest.mark.parametrize(
    ("kernel", "exact"),
    [
        ("x86_64 (CPU flags unreadable)", True),  # might lack VNNI: stay exact
        (X86_NO_VNNI, True),  # saturates without it
        (X86_VNNI, False),  # exact anyway; the U8U8 kernel measured 1.7x slower
        (ARM_DOTPROD, True),  # as before the change: never measured on ARM
    ],
)
def test_exact_int8_kernel_is_asked_for_unless_vnni(kernel: str, exact: bool) -> None:
    assert needs_exact_int8(kernel) is exact
    assert asks_exact_int8(ort_session_options(1, kernel)) is exact
