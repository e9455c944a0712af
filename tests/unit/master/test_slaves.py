"""master.slaves: slave states across SlaveUp/SlaveDown, stats freshness and load counters."""

from __future__ import annotations

import pytest

from common.messages import SlaveStats, SlaveUp
from master.slaves import STATS_FRESH_S, SlaveRegistry, SlaveState
from master.placement import Placement, SlaveLoad

MB = 1024 ** 2


def up(name: str = "s1", incarnation: str = "i1", free: int = 1000 * MB, host: str = "10.0.0.1",
       max_transfers: int = 8) -> SlaveUp:
    return SlaveUp(name=name, incarnation=incarnation, data_host=host, max_transfers=max_transfers,
                   disk_total=2000 * MB, disk_free=free)


def stats(name: str = "s1", incarnation: str = "i1", seq: int = 1, free: int = 500 * MB,
          active_up: int = 0, active_down: int = 0, load1: float = 1.0, ncpu: int = 4) -> SlaveStats:
    return SlaveStats(name=name, incarnation=incarnation, seq=seq, ts_ms=0, disk_free=free,
                      disk_total=2000 * MB, load1=load1, ncpu=ncpu, net_tx_bps=0.0, net_rx_bps=0.0,
                      active_up=active_up, active_down=active_down)


def online(reg: SlaveRegistry, name: str = "s1", incarnation: str = "i1", **kw: object) -> None:
    reg.on_up(up(name, incarnation, **kw), now=0.0)  # type: ignore[arg-type]
    reg.mark_online(name)


def only_load(reg: SlaveRegistry, now: float) -> SlaveLoad:
    (candidate,) = reg.upload_candidates(now)
    return candidate


# ------------------------------------------------------------------ states

def test_first_sight_merges_then_online() -> None:
    reg = SlaveRegistry()
    info, new = reg.on_up(up(), now=1.0)
    assert new and info.state is SlaveState.MERGING and not reg.is_online("s1")
    assert reg.upload_candidates(1.0) == [] and reg.download_candidates(frozenset({"s1"}), 1.0) == []
    reg.mark_online("s1")
    assert reg.is_online("s1") and info.merged
    assert [c.name for c in reg.upload_candidates(1.0)] == ["s1"]


def test_same_incarnation_again_keeps_state_and_refreshes_address() -> None:
    reg = SlaveRegistry()
    online(reg)
    info, new = reg.on_up(up(host="10.0.0.9", max_transfers=3), now=2.0)
    assert not new and info.state is SlaveState.ONLINE
    assert info.data_host == "10.0.0.9" and info.max_transfers == 3
    reg2 = SlaveRegistry()
    reg2.on_up(up(), now=0.0)
    info2, new2 = reg2.on_up(up(), now=1.0)  # repeated while merging: the merge goes on
    assert not new2 and info2.state is SlaveState.MERGING


def test_new_incarnation_starts_over() -> None:
    reg = SlaveRegistry()
    online(reg)
    reg.transfer_started("s1", reserve_bytes=10 * MB)
    reg.on_stats(stats(seq=5), now=1.0)
    info, new = reg.on_up(up(incarnation="i2"), now=2.0)
    assert new and info.state is SlaveState.MERGING and info.incarnation == "i2"
    assert (info.dispatched, info.reserved_bytes, info.stats, info.merged) == (0, 0, None, False)
    reg.on_stats(stats(incarnation="i2", seq=1), now=3.0)  # seq restarts with the process
    assert info.stats is not None and info.stats.seq == 1


def test_down_only_for_the_current_incarnation() -> None:
    reg = SlaveRegistry()
    online(reg, incarnation="i2")
    assert reg.on_down("s1", "i1") is None and reg.is_online("s1")
    assert reg.on_down("nobody", "i1") is None
    info = reg.on_down("s1", "i2")
    assert info is not None and info.state is SlaveState.OFFLINE and not reg.is_online("s1")
    assert reg.on_down("s1", "i2") is None  # already offline: no change
    assert reg.upload_candidates(0.0) == []


def test_broker_restart_restores_state() -> None:
    reg = SlaveRegistry()
    online(reg, "a")
    reg.on_up(up("b"), now=0.0)  # still merging when the broker goes away
    reg.on_up(up("c"), now=0.0)
    reg.on_down("c", "i1")
    assert reg.all_offline() == ["a", "b"]
    assert reg.all_offline() == []
    assert not any(reg.is_online(n) for n in "abc")
    info, new = reg.on_up(up("a"), now=5.0)
    assert not new and info.state is SlaveState.ONLINE  # merged before: back at once
    info, new = reg.on_up(up("b"), now=5.0)
    assert new and info.state is SlaveState.MERGING  # interrupted merge: merge again


def test_mark_online_while_offline_stays_offline() -> None:
    reg = SlaveRegistry()
    reg.on_up(up(), now=0.0)
    reg.on_down("s1", "i1")
    reg.mark_online("s1")
    assert not reg.is_online("s1")
    info, new = reg.on_up(up(), now=1.0)
    assert not new and info.state is SlaveState.ONLINE
    reg.mark_online("unknown")  # ignored


# ------------------------------------------------------------------ stats and load

def test_without_stats_uses_slave_up_figures() -> None:
    reg = SlaveRegistry()
    online(reg, free=1000 * MB, max_transfers=8)
    assert only_load(reg, 0.0) == SlaveLoad("s1", 1000 * MB, 0, 8, 0.0, disk_total=2000 * MB)


def test_stats_freshness() -> None:
    reg = SlaveRegistry()
    online(reg, free=1000 * MB)
    reg.on_stats(stats(free=400 * MB, active_up=2, active_down=1, load1=2.0, ncpu=4), now=10.0)
    assert only_load(reg, 10.0 + STATS_FRESH_S) == SlaveLoad("s1", 400 * MB, 3, 8, 0.5, disk_total=2000 * MB)
    stale = only_load(reg, 10.0 + STATS_FRESH_S + 0.1)
    assert stale == SlaveLoad("s1", 1000 * MB, 0, 8, 0.0, disk_total=2000 * MB, fresh=False)  # back to SlaveUp's figures


@pytest.mark.parametrize("bad", [
    stats(incarnation="old", seq=9, free=1),
    stats(name="unknown", seq=9, free=1),
    stats(seq=3, free=1),  # not newer than the kept one
    stats(seq=2, free=1),
])
def test_ignored_stats(bad: SlaveStats) -> None:
    reg = SlaveRegistry()
    online(reg)
    reg.on_stats(stats(seq=3, free=400 * MB), now=1.0)
    reg.on_stats(bad, now=2.0)
    assert only_load(reg, 2.0).disk_free == 400 * MB
    assert reg.slaves["s1"].stats_at == 1.0


def test_counters_and_reservations() -> None:
    reg = SlaveRegistry()
    online(reg, free=1000 * MB)
    reg.transfer_started("s1", reserve_bytes=100 * MB)
    reg.transfer_started("s1")
    reg.transfer_started("unknown", 5)  # ignored
    assert only_load(reg, 0.0) == SlaveLoad("s1", 900 * MB, 2, 8, 0.0, disk_total=2000 * MB, recent_starts=2)
    reg.on_stats(stats(free=850 * MB, active_up=1), now=1.0)  # stats reconcile the reservation
    assert only_load(reg, 1.0) == SlaveLoad("s1", 850 * MB, 2, 8, 0.25, disk_total=2000 * MB)  # max(1, dispatched 2)
    reg.on_stats(stats(seq=2, free=850 * MB, active_up=4, active_down=1), now=2.0)
    assert only_load(reg, 2.0).active_transfers == 5  # max(stats 5, dispatched 2)
    reg.transfer_finished("s1")
    reg.transfer_finished("s1")
    reg.transfer_finished("s1")  # never below zero
    reg.transfer_finished("unknown")
    assert reg.slaves["s1"].dispatched == 0
    reg.transfer_started("s1", reserve_bytes=2000 * MB)
    assert only_load(reg, 2.0).disk_free == 0  # never negative


def test_download_candidates_are_online_holders() -> None:
    reg = SlaveRegistry()
    online(reg, "a")
    online(reg, "b")
    online(reg, "c")
    reg.on_up(up("d"), now=0.0)  # merging
    reg.on_down("c", "i1")
    holders = frozenset({"a", "c", "d", "ghost"})
    assert [c.name for c in reg.download_candidates(holders, 0.0)] == ["a"]
    assert [c.name for c in reg.upload_candidates(0.0)] == ["a", "b"]


def test_feeds_placement() -> None:
    reg = SlaveRegistry()
    online(reg, "a", free=1000 * MB)
    online(reg, "b", free=1000 * MB)
    reg.transfer_started("a", reserve_bytes=950 * MB)
    selection = Placement().choose("upload", "/f", reg.loads(0.0), size_hint=10 * MB)
    assert selection.chosen == "b"
    assert "below minimum" in selection.excluded()["a"]


# ------------------------------------------------------------------ pooled passive ports

def pooled(reg: SlaveRegistry, incarnation: str = "i1", ports: tuple[int, ...] = (40001, 40002, 40003),
           now: float = 0.0) -> None:
    """A slave online with every pooled port cleared (as after its ClearPorts succeeded)."""
    reg.on_up(SlaveUp(name="s1", incarnation=incarnation, data_host="h", max_transfers=8,
                      passive_pool=list(ports)), now=now)
    reg.mark_online("s1")
    for lent in reg.ports_to_clear("s1"):
        reg.port_cleared(lent, ok=True)


def test_ports_of_a_new_incarnation_are_lent_only_once_cleared() -> None:
    reg = SlaveRegistry()
    reg.on_up(SlaveUp(name="s1", incarnation="i1", data_host="h", max_transfers=8,
                      passive_pool=[40001, 40002]), now=0.0)
    reg.mark_online("s1")
    assert reg.lend_port("s1") is None  # an earlier master may have lent them: dirty
    first = reg.ports_to_clear("s1")
    assert [p.port for p in first] == [40001, 40002]
    assert reg.ports_to_clear("s1") == []  # ClearPorts in flight: not sent twice
    reg.port_cleared(first[0], ok=False)  # EBUSY: a transfer still holds it
    reg.port_cleared(first[1], ok=True)
    lent = reg.lend_port("s1")
    assert lent is not None and lent.port == 40002 and reg.lend_port("s1") is None
    [retry] = reg.ports_to_clear("s1")  # the failed one is tried again
    assert retry.port == 40001


def test_pooled_ports_lent_once_and_least_recently_returned_first() -> None:
    reg = SlaveRegistry()
    pooled(reg)
    lent = [reg.lend_port("s1") for _ in range(3)]
    assert [p.port for p in lent if p is not None] == [40001, 40002, 40003]
    assert reg.lend_port("s1") is None  # all lent: the caller falls back to Listen
    assert lent[1] is not None and lent[0] is not None and lent[2] is not None
    reg.return_port(lent[1])
    reg.return_port(lent[1])  # returned twice: still lent once
    reg.return_port(lent[0])
    reg.soil_port(lent[2])  # given up with a connection maybe waiting: cleared first
    again = [reg.lend_port("s1"), reg.lend_port("s1"), reg.lend_port("s1")]
    assert [p.port if p else None for p in again] == [40002, 40001, None]
    [dirty] = reg.ports_to_clear("s1")
    reg.port_cleared(dirty, ok=True)
    last = reg.lend_port("s1")
    assert last is not None and last.port == 40003


def test_ports_of_an_old_incarnation_are_not_lent_or_cleared_again() -> None:
    reg = SlaveRegistry()
    pooled(reg, ports=(40001,))
    old = reg.lend_port("s1")
    assert old is not None and reg.is_current(old)
    pooled(reg, incarnation="i2", ports=(50001,), now=1.0)
    assert not reg.is_current(old)
    reg.return_port(old)  # the restarted slave never had 40001
    reg.soil_port(old)
    assert reg.ports_to_clear("s1") == []
    new = reg.lend_port("s1")
    assert new is not None and (new.port, new.incarnation) == (50001, "i2")
    assert reg.lend_port("s1") is None
    reg.on_down("s1", "i2")
    reg.return_port(new)
    assert reg.lend_port("s1") is None  # offline: nothing lent
    reg.soil_port(new)
    assert reg.ports_to_clear("s1") == []  # nor cleared while offline


def test_a_given_up_route_of_a_replaced_incarnation_soils_the_same_port_number() -> None:
    # With passive_ports the restarted slave reopens its pool on the same port numbers: the
    # old route's client may have connected to the new process's port.
    reg = SlaveRegistry()
    pooled(reg, ports=(40001, 40002))
    old_a, old_b = reg.lend_port("s1"), reg.lend_port("s1")
    assert old_a is not None and old_b is not None
    pooled(reg, incarnation="i2", ports=(40001, 40002), now=1.0)
    held = reg.lend_port("s1")  # 40001 of the new process, lent to another route now
    assert held is not None and held.port == 40001
    reg.soil_port(old_b)  # 40002 is unlent here: dirty at once
    reg.soil_port(old_a)  # 40001 is lent: dirty once given back, even "clean"
    assert reg.lend_port("s1") is None
    reg.return_port(held)
    assert reg.lend_port("s1") is None
    assert sorted(p.port for p in reg.ports_to_clear("s1")) == [40001, 40002]


def test_a_port_soiled_while_its_clear_port_is_in_flight_is_cleared_again() -> None:
    reg = SlaveRegistry()
    reg.on_up(SlaveUp(name="s1", incarnation="i1", data_host="h", max_transfers=8,
                      passive_pool=[40001]), now=0.0)
    reg.mark_online("s1")
    [first] = reg.ports_to_clear("s1")
    reg.soil_port(first)  # a connection may come after the slave ran this ClearPort
    reg.port_cleared(first, ok=True)
    assert reg.lend_port("s1") is None
    [again] = reg.ports_to_clear("s1")
    reg.port_cleared(again, ok=True)
    lent = reg.lend_port("s1")
    assert lent is not None and lent.port == 40001
