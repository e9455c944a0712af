"""common.repeating: when a lasting condition is warned about, as a table of checks."""

from __future__ import annotations

import pytest

from common.repeating import RepeatingWarning

# (time, holds) checks in order -> what each check returns
SCENARIOS = {
    "warns after 10 s, then every 60 s": (
        [(0, True), (5, True), (9.9, True), (10, True), (11, True), (69.9, True), (70, True)],
        [None, None, None, 10, None, None, 70]),
    "a short outage is never warned about": (
        [(0, True), (9, True), (9.5, False), (12, True), (21, True), (22, True)],
        [None, None, None, None, None, 10]),
    "the end of a warned outage reports its length once": (
        [(0, True), (10, True), (15, False), (16, False)],
        [None, 10, 15, None]),
    "a new outage starts the delay again": (
        [(0, True), (10, True), (11, False), (12, True), (21, True), (22, True)],
        [None, 10, 11, None, None, 10]),
    "never held": ([(0, False), (100, False)], [None, None]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(name: str) -> None:
    checks, expected = SCENARIOS[name]
    warning = RepeatingWarning(after=10, every=60)
    got = [warning.holds(t) if holds else warning.cleared(t) for t, holds in checks]
    assert got == expected


def test_after_zero_warns_at_once() -> None:
    warning = RepeatingWarning(after=0, every=300)
    assert warning.holds(5.0) == 0.0
    assert warning.holds(6.0) is None


@pytest.mark.parametrize(("after", "every"), [(-1, 10), (0, 0), (1, -5)])
def test_bad_arguments(after: float, every: float) -> None:
    with pytest.raises(ValueError):
        RepeatingWarning(after, every)
