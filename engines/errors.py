"""Errors raised by `engines`; the CLI maps them to one printed line and an exit code."""

from __future__ import annotations


class EnginesInputError(ValueError):
    """A bad argument: the message names the argument, the value and the allowed range (exit 2)."""


class VerificationError(RuntimeError):
    """A built artefact failed its own check (ONNX checker, numeric parity, accuracy budget) (exit 1)."""


class TensorRTUnavailable(RuntimeError):
    """TensorRT or its CUDA binding is not importable here (exit 1)."""


class EngineMismatchError(RuntimeError):
    """A TensorRT engine was built for another TensorRT version or GPU; the message says how to rebuild."""
