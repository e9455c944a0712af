"""common.statsview: the stats board, its states and its renderings (no sockets)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from common.messages import SlaveStats
from common.statsview import StatsBoard, human_bytes, prometheus_samples, render_table

GB = 1024 ** 3


def stats(name: str, seq: int = 1, inc: str = "i", free: int = 40 * GB, total: int = 100 * GB,
          ts_ms: int = 1_000_000, up: int = 1, down: int = 2) -> SlaveStats:
    return SlaveStats(name=name, incarnation=inc, seq=seq, ts_ms=ts_ms, disk_free=free, disk_total=total,
                      load1=1.0, ncpu=4, net_tx_bps=12_500_000.0, net_rx_bps=3_000.0,
                      active_up=up, active_down=down)


def test_states_by_age() -> None:
    board = StatsBoard()
    board.update(stats("a"), now=100.0)
    assert board.state("a", 105.0) == "online"
    assert board.state("a", 105.1) == "stale"  # shown stale well within 6 s of the last stats
    assert board.state("a", 115.0) == "stale"
    assert board.state("a", 115.1) == "offline"
    board.update(stats("a", seq=2), now=120.0)
    assert board.state("a", 120.0) == "online"


def test_duplicates_and_new_incarnations() -> None:
    board = StatsBoard()
    assert board.update(stats("a", seq=5), now=0.0)
    assert not board.update(stats("a", seq=5), now=1.0)  # replayed by the last-value cache
    assert not board.update(stats("a", seq=4), now=1.0)
    assert board.rows["a"].received_at == 0.0
    assert board.update(stats("a", seq=1, inc="j"), now=2.0)  # restarted slave: seq starts over
    assert board.messages == 2


def test_first_stats_of_an_incarnation_are_backdated_by_their_age() -> None:
    board = StatsBoard()
    board.update(stats("a", ts_ms=1_000_000), now=50.0, wall=1_004.0)  # 4 s old (from the cache)
    assert board.rows["a"].received_at == pytest.approx(46.0)
    assert board.state("a", 51.5) == "stale"
    board.update(stats("b", ts_ms=1_000_000), now=50.0, wall=9_999.0)  # capped at offline_after
    assert board.rows["b"].received_at == pytest.approx(35.0)


def test_changes_are_reported_once() -> None:
    board = StatsBoard()
    board.update(stats("a"), now=0.0)
    board.update(stats("b"), now=0.0)
    assert board.changes(1.0) == [("a", "online"), ("b", "online")]
    assert board.changes(2.0) == []
    board.update(stats("b", seq=2), now=5.5)
    assert board.changes(6.0) == [("a", "stale")]
    assert board.changes(16.0) == [("a", "offline"), ("b", "stale")]


def test_snapshot_is_json_with_totals_over_live_slaves() -> None:
    board = StatsBoard()
    board.update(stats("a", free=10 * GB), now=0.0)
    board.update(stats("b", free=30 * GB), now=0.0)
    board.update(stats("gone", free=99 * GB), now=-20.0)
    snap = json.loads(json.dumps(board.snapshot(1.0)))
    assert [s["name"] for s in snap["slaves"]] == ["a", "b", "gone"]
    assert snap["slaves"][0]["disk_free"] == 10 * GB and snap["slaves"][0]["disk_total"] == 100 * GB
    assert snap["slaves"][2]["state"] == "offline"
    assert snap["totals"]["disk_free"] == 40 * GB and snap["totals"]["online"] == 2
    assert snap["totals"]["active_down"] == 4


def render(board: StatsBoard, now: float, width: int = 80) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(render_table(board, now))
    return console.export_text()


def test_live_table_fits_80_columns_without_wrapping() -> None:
    board = StatsBoard()
    names = ["slave1", "slave2", "a-very-long-slave-name-indeed.example.org", "s4"]
    for i, name in enumerate(names):
        board.update(stats(name, free=(i + 1) * 20 * GB, total=999 * 1024 * GB, up=123, down=456), now=0.0)
    board.update(stats("old"), now=-7.0)
    text = render(board, 1.0)
    lines = text.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 80
    # one line per slave (nothing wrapped onto a second line), plus title, header and totals
    for name in ("slave1", "slave2", "s4", "old"):
        (row,) = [line for line in lines if line.startswith(name + " ")]
        assert "123/456" in row or name == "old"
    assert sum("a-very-long" in line for line in lines) == 1
    assert "stale" in next(line for line in lines if line.startswith("old "))
    assert "total" in lines[-1] and "/s" in lines[-1]
    assert len(lines) == 3 + 5  # title, header, 5 slaves, totals


def test_empty_table_says_it_is_waiting() -> None:
    assert "waiting for stats" in render(StatsBoard(), 0.0)


def test_human_bytes() -> None:
    assert [human_bytes(v) for v in (0, 1023, 1536, 5 * GB, 2.5 * 1024 ** 4)] == \
        ["0", "1023", "1.5K", "5.0G", "2.5T"]


def test_prometheus_samples() -> None:
    board = StatsBoard()
    board.update(stats("a", free=10), now=0.0)
    samples = {(metric, tuple(labels.items())): value for metric, _h, labels, value in prometheus_samples(board, 1.0)}
    assert samples[("ftpcluster_slave_disk_free_bytes", (("slave", "a"),))] == 10
    assert samples[("ftpcluster_slave_up", (("slave", "a"),))] == 1.0
    assert samples[("ftpcluster_cluster_disk_total", ())] == 100 * GB
    stale = {(m, tuple(l.items())): v for m, _h, l, v in prometheus_samples(board, 6.0)}
    assert stale[("ftpcluster_slave_up", (("slave", "a"),))] == 0.0


# ------------------------------------------------------------------ own vs host rates

MB = 1_000_000


def rated(name: str, tx: float, rx: float, host: str = "", host_tx: float | None = None,
          host_rx: float | None = None, seq: int = 1) -> SlaveStats:
    return SlaveStats(name=name, incarnation="i", seq=seq, ts_ms=1_000_000, disk_free=40 * GB,
                      disk_total=100 * GB, load1=1.0, ncpu=4, net_tx_bps=tx, net_rx_bps=rx,
                      active_up=0, active_down=0, host=host, host_net_tx_bps=host_tx, host_net_rx_bps=host_rx)


# (stats, received_at), totals (tx, rx), hosts [(host, slaves, tx, rx)]
RATE_CASES = [
    pytest.param([(rated("a", 5 * MB, 0, "box", 9 * MB, 9 * MB), 0.0),
                  (rated("b", 0, 0, "box", 9 * MB, 9 * MB), 0.0)],
                 (5 * MB, 0), [("box", ["a", "b"], 9 * MB, 9 * MB)], id="two-slaves-one-host"),
    pytest.param([(rated("a", 5 * MB, 1 * MB, "box1", 6 * MB, 2 * MB), 0.0),
                  (rated("b", 2 * MB, 3 * MB, "box2", 2 * MB, 3 * MB), 0.0)],
                 (7 * MB, 4 * MB), [("box1", ["a"], 6 * MB, 2 * MB), ("box2", ["b"], 2 * MB, 3 * MB)],
                 id="two-hosts"),
    pytest.param([(rated("a", 1 * MB, 0, "box", 7 * MB, 1 * MB), 0.0),
                  (rated("b", 0, 2 * MB, "box", 8 * MB, 4 * MB), 0.5)],  # b's stats are newer
                 (1 * MB, 2 * MB), [("box", ["a", "b"], 8 * MB, 4 * MB)], id="latest-host-figures"),
    pytest.param([(rated("a", 1 * MB, 1 * MB, "box", 3 * MB, 3 * MB), 0.0),
                  (rated("gone", 50 * MB, 50 * MB, "box2", 99 * MB, 99 * MB), -20.0)],
                 (1 * MB, 1 * MB), [("box", ["a"], 3 * MB, 3 * MB)], id="offline-left-out"),
    pytest.param([(rated("old", 4 * MB, 4 * MB), 0.0)],  # a slave that reports no host figures
                 (4 * MB, 4 * MB), [], id="no-host-figures"),
]


@pytest.mark.parametrize("rows, totals, hosts", RATE_CASES)
def test_totals_sum_own_rates_and_hosts_stand_apart(rows, totals, hosts) -> None:
    board = StatsBoard()
    for s, at in rows:
        board.update(s, now=at)
    snap = json.loads(json.dumps(board.snapshot(1.0)))
    assert (snap["totals"]["net_tx_bps"], snap["totals"]["net_rx_bps"]) == totals
    assert not any(key.startswith("host") for key in snap["totals"])
    assert [(h["host"], h["slaves"], h["net_tx_bps"], h["net_rx_bps"]) for h in snap["hosts"]] == hosts
    for (s, _at), figures in zip(rows, snap["slaves"]):
        assert figures["name"] == s.name and figures["host"] == s.host
        assert (figures["net_tx_bps"], figures["net_rx_bps"]) == (s.net_tx_bps, s.net_rx_bps)
        assert (figures["host_net_tx_bps"], figures["host_net_rx_bps"]) == (s.host_net_tx_bps, s.host_net_rx_bps)


def test_table_shows_own_rates_per_slave_and_the_host_once_apart() -> None:
    board = StatsBoard()
    board.update(rated("slave1", 3 * 1024 ** 2, 0, "box", 5 * 1024 ** 2, 5 * 1024 ** 2), now=0.0)
    board.update(rated("slave2", 0, 0, "box", 5 * 1024 ** 2, 5 * 1024 ** 2), now=0.0)
    lines = [line.rstrip() for line in render(board, 1.0).rstrip("\n").splitlines()]
    assert max(len(line) for line in lines) <= 80
    (row1,) = [line for line in lines if line.startswith("slave1 ")]
    (row2,) = [line for line in lines if line.startswith("slave2 ")]
    assert row1.split()[-2:] == ["0/s", "3.0M/s"]  # rx, tx: its own transfers
    assert row2.split()[-2:] == ["0/s", "0/s"]
    (total,) = [line for line in lines if line.startswith("total ")]
    assert total.split()[-2:] == ["0/s", "3.0M/s"]  # the sum of the slaves' own rates
    assert lines[-1] == "host box (slave1, slave2): rx 5.0M/s tx 5.0M/s"
    assert sum("5.0M" in line for line in lines) == 1


def test_host_line_counts_many_slaves() -> None:
    board = StatsBoard()
    for i in range(5):
        board.update(rated(f"s{i}", 0, 0, "box", 1024.0, 0.0), now=0.0)
    assert render(board, 1.0).rstrip("\n").splitlines()[-1].rstrip() == "host box (s0, s1, s2, +2): rx 0/s tx 1.0K/s"


def test_prometheus_host_rates_are_labelled_host_and_not_in_totals() -> None:
    board = StatsBoard()
    board.update(rated("a", 5 * MB, 1 * MB, "box", 9 * MB, 8 * MB), now=0.0)
    board.update(rated("b", 2 * MB, 0, "box", 9 * MB, 8 * MB), now=0.0)
    samples = [(metric, labels, value) for metric, _h, labels, value in prometheus_samples(board, 1.0)]
    by_key = {(metric, tuple(labels.items())): value for metric, labels, value in samples}
    assert by_key[("ftpcluster_slave_net_tx_bytes_per_second", (("slave", "a"),))] == 5 * MB
    assert by_key[("ftpcluster_slave_net_tx_bytes_per_second", (("slave", "b"),))] == 2 * MB
    assert by_key[("ftpcluster_cluster_net_tx_bps", ())] == 7 * MB
    assert by_key[("ftpcluster_cluster_net_rx_bps", ())] == 1 * MB
    host = [(metric, labels, value) for metric, labels, value in samples if "host" in labels]
    assert host == [("ftpcluster_host_net_rx_bytes_per_second", {"host": "box"}, 8 * MB),
                    ("ftpcluster_host_net_tx_bytes_per_second", {"host": "box"}, 9 * MB)]
