"""master.choice: whether the slave a PRET'd PASV lent may serve the command that follows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from common.config import DirectionPolicy, PathRule, PlacementSection
from common.messages import SlaveUp
from master import choice, replies
from master.placement import Placement
from master.route import Route
from master.slaves import LentPort, SlaveRegistry
from master.vpath import Entry

MB = 1 << 20
HELD = Entry("/d/f", False, 10, 0.0, "u", "g", None, frozenset({"s1"}))
ELSEWHERE = Entry("/d/f", False, 10, 0.0, "u", "g", None, frozenset({"s2"}))


def cluster() -> SimpleNamespace:
    registry = SlaveRegistry()
    registry.on_up(SlaveUp(name="s1", incarnation="i1", data_host="127.0.0.1", max_transfers=8,
                           disk_total=2000 * MB, disk_free=1000 * MB, passive_pool=[4000]), now=0.0)
    registry.mark_online("s1")
    rules = [PathRule(glob="/private/*", forbid=["s1"])]
    placement = Placement(PlacementSection(upload=DirectionPolicy(rules=rules),
                                           download=DirectionPolicy(rules=rules)))
    return SimpleNamespace(registry=registry, placement=placement)


CASES = [
    ("RETR of a file it holds", "RETR", "/d/f", 0, HELD, ""),
    ("RETR of a file another slave holds", "RETR", "/d/f", 0, ELSEWHERE, replies.ROUTE_SLAVE_LACKS_FILE),
    ("RETR of a missing file", "RETR", "/d/f", 0, None, replies.ROUTE_SLAVE_LACKS_FILE),
    ("STOR of a new file", "STOR", "/d/new", 0, None, ""),
    ("STOR over a file held elsewhere", "STOR", "/d/f", 0, ELSEWHERE, ""),
    ("REST+STOR needs the holder", "STOR", "/d/f", 5, ELSEWHERE, replies.ROUTE_SLAVE_LACKS_FILE),
    ("APPE onto a file held elsewhere", "APPE", "/d/f", 0, ELSEWHERE, replies.ROUTE_SLAVE_LACKS_FILE),
    ("APPE creating a file", "APPE", "/d/new", 0, None, ""),
    ("a path rule forbids it", "STOR", "/private/x", 0, None,
     replies.route_rule_refusal("forbidden by rule /private/*")),
]


@pytest.mark.parametrize(("name", "kind", "path", "offset", "entry", "reply"), CASES,
                         ids=[c[0] for c in CASES])
def test_route_refusal(name: str, kind: str, path: str, offset: int, entry: Entry | None,
                       reply: str) -> None:
    c = cluster()
    got = choice.route_refusal(c, Route("slave", slave="s1", xfer_id=1), kind, path,  # type: ignore[arg-type]
                               offset, entry)
    if reply.startswith("425 Can't open data connection: the PRET'd slave may not"):
        assert got.startswith("425 Can't open data connection: the PRET'd slave may not serve")
    else:
        assert got == reply


def test_an_offline_slave_and_a_restarted_one() -> None:
    c = cluster()
    lent = LentPort("s1", "i1", 4000)
    route = Route("slave", slave="s1", xfer_id=1, lent=lent)
    assert choice.route_refusal(c, route, "RETR", "/d/f", 0, HELD) == ""  # type: ignore[arg-type]
    c.registry.on_up(SlaveUp(name="s1", incarnation="i2", data_host="127.0.0.1", max_transfers=8,
                             disk_total=2000 * MB, disk_free=1000 * MB, passive_pool=[4000]), now=1.0)
    # The new process is up but not merged (not online) yet: still "restarted", not "offline".
    assert choice.route_refusal(c, route, "RETR", "/d/f", 0, HELD) == replies.ROUTE_SLAVE_RESTARTED  # type: ignore[arg-type]
    c.registry.mark_online("s1")
    assert choice.route_refusal(c, route, "RETR", "/d/f", 0, HELD) == replies.ROUTE_SLAVE_RESTARTED  # type: ignore[arg-type]
    assert choice.route_refusal(c, Route("slave", slave="s9", xfer_id=2), "RETR", "/d/f", 0,  # type: ignore[arg-type]
                                HELD) == replies.ROUTE_SLAVE_OFFLINE


def two_slaves(free_s2: int = 1000 * MB, online_s2: bool = True) -> SimpleNamespace:
    """s1 online with room; s2 online (or only known) with `free_s2` bytes free."""
    c = cluster()
    c.registry.on_up(SlaveUp(name="s2", incarnation="j1", data_host="127.0.0.2", max_transfers=8,
                             disk_total=2000 * MB, disk_free=free_s2), now=0.0)
    if online_s2:
        c.registry.mark_online("s2")
    c.clock = lambda: 1.0
    return c


PLANS = [
    # (name, kind, path, offset, entry, size_hint, chosen, reply)
    ("RETR goes to the holder", "RETR", "/d/f", 0, ELSEWHERE, 0, "s2", ""),
    ("RETR of a directory", "RETR", "/d", 0, Entry("/d", True, 0, 0.0, "u", "g", None, frozenset()),
     0, None, replies.IS_A_DIRECTORY),
    ("RETR of a missing file", "RETR", "/d/x", 0, None, 0, None, replies.NO_SUCH_FILE),
    ("RETR whose holder is unknown", "RETR", "/d/f", 0,
     Entry("/d/f", False, 1, 0.0, "u", "g", None, frozenset({"s9"})), 0, None,
     replies.FILE_SLAVE_OFFLINE),
    ("REST+STOR stays on the holder", "STOR", "/d/f", 5, HELD, 0, "s1", ""),
    ("APPE stays on the holder", "APPE", "/d/f", 0, ELSEWHERE, 0, "s2", ""),
    ("APPE onto a file whose holder is gone", "APPE", "/d/f", 0,
     Entry("/d/f", False, 1, 0.0, "u", "g", None, frozenset({"s9"})), 0, None,
     replies.FILE_SLAVE_OFFLINE),
    ("an upload bigger than any free space", "STOR", "/d/new", 0, None, 10_000 * MB, None,
     replies.NO_SLAVE_ROOM),
    ("STOU ignores an entry of the same name", "STOU", "/d/f", 5, ELSEWHERE, 0, "any", ""),
]


@pytest.mark.parametrize(("name", "kind", "path", "offset", "entry", "size_hint", "chosen", "reply"),
                         PLANS, ids=[p[0] for p in PLANS])
def test_plan(name: str, kind: str, path: str, offset: int, entry: Entry | None, size_hint: int,
              chosen: str | None, reply: str) -> None:
    got_slave, got_reply = choice.plan(two_slaves(), kind, path, offset, entry,  # type: ignore[arg-type]
                                       size_hint)
    assert got_reply == reply
    assert got_slave in ("s1", "s2") if chosen == "any" else got_slave == chosen


def test_no_slave_online_for_an_upload() -> None:
    c = SimpleNamespace(registry=SlaveRegistry(), placement=Placement(), clock=lambda: 0.0)
    assert choice.plan(c, "STOR", "/new", 0, None) == (None, replies.NO_SLAVE_ONLINE)  # type: ignore[arg-type]
    assert choice.pick_download(c, HELD, 0.0) == (None, replies.FILE_SLAVE_OFFLINE)  # type: ignore[arg-type]


def test_busy_holders_are_told_apart_from_offline_ones() -> None:
    c = cluster()
    for _ in range(8):  # s1's max_transfers
        c.registry.transfer_started("s1")
    assert choice.pick_download(c, HELD, 1.0) == (None, replies.FILE_SLAVES_BUSY)  # type: ignore[arg-type]
