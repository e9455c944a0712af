"""master.site: the text of SITE SLAVES, SLAVESELECT and WHO (pure renderers)."""

from __future__ import annotations

from collections import deque

from common.messages import SlaveStats
from master.slaves import SlaveInfo, SlaveState
from master.placement import Selection, Verdict
from master.site import SessionView, slave_lines, slaveselect_lines, who_lines


def test_slave_lines_keep_the_parsed_prefix_and_append_figures() -> None:
    fresh = SlaveInfo(name="b", state=SlaveState.ONLINE, incarnation="i", data_host="h", max_transfers=4,
                      disk_total=100, disk_free=50, dispatched=2, stats_at=10.0,
                      stats=SlaveStats(name="b", incarnation="i", seq=1, ts_ms=0, disk_free=40, disk_total=100,
                                       load1=2.0, ncpu=4, net_tx_bps=1500.0, net_rx_bps=12_000_000.0,
                                       active_up=1, active_down=3))
    new = SlaveInfo(name="a", state=SlaveState.MERGING, incarnation="j", data_host="h", max_transfers=4,
                    disk_total=10, disk_free=5, pool=frozenset({1, 2, 3}), dirty_ports={3},
                    unlent_ports=deque([1]))
    assert slave_lines([fresh, new], now=12.4) == [
        " a merging free=5 total=10 active=0 stats=none pool=1/3 dirty=1",
        " b online free=40 total=100 active=2 up=1 down=3 rx=12.0M tx=1.5K load=0.50 stats=2s",
    ]


def test_slaveselect_lines() -> None:
    selection = Selection("b", (Verdict("a", None, "stats stale"), Verdict("b", 0.5), Verdict("c", -1.25)))
    assert slaveselect_lines(selection) == [
        " chosen: b", " a excluded: stats stale", " b score=0.500", " c score=-1.250"]
    assert slaveselect_lines(Selection(None, ()))[0] == " chosen: (none)"


def test_who_lines() -> None:
    views = [SessionView(user="bob", remote="1.2.3.4:5", connected_s=3.2, command="STOR", path="/a b",
                         slave="slave2", bytes=1024, elapsed_s=1.25),
             SessionView(user="", remote="1.2.3.4:6", connected_s=0.0)]
    assert who_lines(views) == [
        " (not logged in) 1.2.3.4:6 connected=0s",
        " bob 1.2.3.4:5 connected=3s STOR /a b on slave2 1024 bytes in 1.2s",
    ]
