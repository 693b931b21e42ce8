"""Ranges of numeric inputs: one rule text for config fields and flags."""

from __future__ import annotations

import argparse
import math

import pytest

from edge_agent.ranges import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, Range, flag_type


@pytest.mark.parametrize(
    ("allowed", "value", "ok"),
    [
        (Range(), math.nan, False),  # non-finite numbers are never allowed
        (Range(), math.inf, False),
        (Range(), -1e300, True),
        (AT_LEAST_0, -1e-9, False),
        (AT_LEAST_0, 0, True),
        (AT_LEAST_1, 0, False),
        (AT_LEAST_1, 1, True),
        (POSITIVE, 0.0, False),
        (POSITIVE, 1e-12, True),
        (FRACTION, 1.0, False),
        (FRACTION, 0.0, True),
        (FRACTION, 0.999, True),
        (Range(0, 1), 1.0, True),
        (Range(hi=5, hi_open=True), 5, False),
        (Range(0, infinite_ok=True), math.inf, True),  # "never", e.g. checkpoint_minutes
        (Range(0, infinite_ok=True), math.nan, False),
        (AT_LEAST_1, 10**400, True),  # a huge int compares; math.isfinite would overflow
    ],
)
def test_allows(allowed: Range, value: float, ok: bool) -> None:
    assert allowed.allows(value) is ok


@pytest.mark.parametrize(
    ("allowed", "rule"),
    [
        (Range(), "must be a finite number"),
        (AT_LEAST_0, "must be >= 0"),
        (POSITIVE, "must be > 0"),
        (FRACTION, "must be in [0, 1)"),
        (Range(0.5, 2), "must be in [0.5, 2]"),
        (Range(hi=3, hi_open=True), "must be < 3"),
    ],
)
def test_rule_reads_like_the_range(allowed: Range, rule: str) -> None:
    assert allowed.rule() == rule


def test_check_names_field_value_and_rule() -> None:
    with pytest.raises(ValueError, match=r"^epochs=0: must be >= 1$"):
        AT_LEAST_1.check("epochs", 0)
    AT_LEAST_1.check("epochs", 3)


@pytest.mark.parametrize(
    ("kind", "allowed", "text", "error"),
    [
        (int, AT_LEAST_1, "0", "0: must be >= 1"),
        (int, AT_LEAST_1, "1.5", "'1.5': not an integer"),
        (float, AT_LEAST_0, "nan", "nan: must be a finite number >= 0"),
        (float, AT_LEAST_0, "inf", "inf: must be a finite number >= 0"),  # not "inf is below 0"
        (float, AT_LEAST_0, "-inf", "-inf: must be a finite number >= 0"),
        (int, AT_LEAST_1, "-" + "9" * 400, "-" + "9" * 400 + ": must be >= 1"),  # no overflow in the check
        (float, AT_LEAST_0, "abc", "'abc': not a number"),
        (float, AT_LEAST_0, "2.5", None),
    ],
)
def test_flag_type_through_argparse(
    capsys: pytest.CaptureFixture[str], kind: type, allowed: Range, text: str, error: str | None
) -> None:
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--n", type=flag_type(kind, allowed))
    if error is None:
        assert p.parse_args([f"--n={text}"]).n == kind(text)
        return
    with pytest.raises(SystemExit) as info:
        p.parse_args([f"--n={text}"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"x: error: argument --n: {error}"
