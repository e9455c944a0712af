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
    c.registry.mark_online("s1")
    assert choice.route_refusal(c, route, "RETR", "/d/f", 0, HELD) == replies.ROUTE_SLAVE_RESTARTED  # type: ignore[arg-type]
    assert choice.route_refusal(c, Route("slave", slave="s9", xfer_id=2), "RETR", "/d/f", 0,  # type: ignore[arg-type]
                                HELD) == replies.ROUTE_SLAVE_OFFLINE
