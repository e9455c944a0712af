"""master.placement: which slave serves an upload or a download."""

from __future__ import annotations

import pytest

from master.placement import MIN_FREE_BYTES, SlaveLoad, choose_download_slave, choose_upload_slave

GB = 1024 ** 3


def load(name: str, free: int = 10 * GB, active: int = 0, max_transfers: int = 10,
         per_cpu: float = 0.0) -> SlaveLoad:
    return SlaveLoad(name=name, disk_free=free, active_transfers=active, max_transfers=max_transfers,
                     load_per_cpu=per_cpu)


# ------------------------------------------------------------------ uploads

def test_upload_none_without_candidates() -> None:
    assert choose_upload_slave([]) is None


@pytest.mark.parametrize("free, size_hint, ok", [
    (MIN_FREE_BYTES, 0, True),  # exactly enough
    (MIN_FREE_BYTES - 1, 0, False),
    (MIN_FREE_BYTES + 100, 100, True),
    (MIN_FREE_BYTES + 99, 100, False),
    (MIN_FREE_BYTES, -5, True),  # a negative hint counts as 0
    (0, 0, False),
])
def test_upload_free_space_filter(free: int, size_hint: int, ok: bool) -> None:
    expected = "a" if ok else None
    assert choose_upload_slave([load("a", free=free)], size_hint=size_hint) == expected


def test_upload_custom_min_free() -> None:
    assert choose_upload_slave([load("a", free=10)], size_hint=5, min_free=5) == "a"
    assert choose_upload_slave([load("a", free=10)], size_hint=6, min_free=5) is None


def test_upload_slot_filter() -> None:
    full = load("a", active=4, max_transfers=4)
    over = load("b", active=5, max_transfers=4)
    assert choose_upload_slave([full, over]) is None
    assert choose_upload_slave([full, over, load("c", active=3, max_transfers=4)]) == "c"


def test_upload_prefers_holders_even_when_busier() -> None:
    slaves = [load("a", active=0), load("b", active=7, free=2 * GB)]
    assert choose_upload_slave(slaves) == "a"
    assert choose_upload_slave(slaves, prefer=frozenset({"b"})) == "b"


def test_upload_preferred_holder_must_still_qualify() -> None:
    slaves = [load("a"), load("b", active=10, max_transfers=10), load("c", free=0)]
    assert choose_upload_slave(slaves, prefer=frozenset({"b", "c"})) == "a"


@pytest.mark.parametrize("slaves, expected", [
    ([load("a", active=2), load("b", active=1)], "b"),  # fewest active transfers
    ([load("a", free=5 * GB), load("b", free=6 * GB)], "b"),  # then most free space
    ([load("b"), load("a"), load("c")], "a"),  # then name
    ([load("a", active=1, free=100 * GB), load("b", active=0, free=1 * GB)], "b"),
])
def test_upload_ordering(slaves: list[SlaveLoad], expected: str) -> None:
    assert choose_upload_slave(slaves) == expected


def test_upload_ties_among_holders() -> None:
    slaves = [load("z", active=1), load("y", active=1), load("x", active=0)]
    assert choose_upload_slave(slaves, prefer=frozenset({"z", "y"})) == "y"


# ------------------------------------------------------------------ downloads

def test_download_none() -> None:
    assert choose_download_slave([]) is None
    assert choose_download_slave([load("a", active=3, max_transfers=3)]) is None


@pytest.mark.parametrize("holders, expected", [
    ([load("a", active=3), load("b", active=1), load("c", active=2)], "b"),  # least busy
    ([load("a", active=1, per_cpu=0.9), load("b", active=1, per_cpu=0.2)], "b"),  # then load
    ([load("b", active=1, per_cpu=0.5), load("a", active=1, per_cpu=0.5)], "a"),  # then name
    ([load("a", active=0, per_cpu=5.0), load("b", active=1, per_cpu=0.0)], "a"),
    ([load("a", active=2, max_transfers=2), load("b", active=9, max_transfers=10)], "b"),  # slots
    ([load("a", free=0)], "a"),  # free space does not matter for reading
])
def test_download_choice(holders: list[SlaveLoad], expected: str) -> None:
    assert choose_download_slave(holders) == expected
