"""slave.stats: byte rates from counters (pure), and the sampler's own vs host figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from slave.stats import Counters, StatsSampler, rates

MB = 1_000_000


@pytest.mark.parametrize("prev, cur, expected", [
    (None, Counters(10.0, 5 * MB, 7 * MB), (0.0, 0.0)),  # first reading: nothing to compare
    (Counters(10.0, 0, 0), Counters(12.0, 4 * MB, 0), (2 * MB, 0.0)),  # sent only
    (Counters(10.0, 0, 0), Counters(12.0, 0, 6 * MB), (0.0, 3 * MB)),  # received only
    (Counters(10.0, 1 * MB, 2 * MB), Counters(10.5, 2 * MB, 4 * MB), (2 * MB, 4 * MB)),  # short interval
    (Counters(10.0, 9, 9), Counters(14.0, 9, 9), (0.0, 0.0)),  # idle
    (Counters(10.0, 0, 0), Counters(10.0, 5, 5), (0.0, 0.0)),  # no time passed
    (Counters(10.0, 0, 0), Counters(9.0, 5, 5), (0.0, 0.0)),  # time went backwards
    (Counters(10.0, 8 * MB, 1 * MB), Counters(12.0, 2 * MB, 3 * MB), (0.0, 1 * MB)),  # sent counter reset
    (Counters(0.0, 0, 0), Counters(2.0, 1, 3), (0.5, 1.5)),  # fractions kept
])
def test_rates(prev: Counters | None, cur: Counters, expected: tuple[float, float]) -> None:
    assert rates(prev, cur) == pytest.approx(expected)


def test_sampler_reports_own_totals_as_net_and_nic_counters_as_host(tmp_path: Path) -> None:
    nic = iter([(1000, 1000), (1000 + 40 * MB, 1000 + 40 * MB), None, (0, 0), (2 * MB, 6 * MB)])
    sampler = StatsSampler("s1", "inc", str(tmp_path), read_host_net=lambda: next(nic), host="box")
    # (now, up, down, sent, received) -> (net_tx, net_rx, host_tx, host_rx)
    table = [
        ((100.0, 0, 0, 0, 0), (0.0, 0.0, 0.0, 0.0)),
        ((102.0, 0, 1, 10 * MB, 0), (5 * MB, 0.0, 20 * MB, 20 * MB)),  # host: every slave's traffic
        ((104.0, 1, 0, 10 * MB, 8 * MB), (0.0, 4 * MB, None, None)),  # NIC counters unreadable
        ((106.0, 0, 0, 10 * MB, 8 * MB), (0.0, 0.0, 0.0, 0.0)),  # readable again: no baseline
        ((107.0, 0, 0, 11 * MB, 9 * MB), (1 * MB, 1 * MB, 2 * MB, 6 * MB)),
    ]
    for seq, ((now, up, down, sent, received), expected) in enumerate(table, start=1):
        s = sampler.sample(now, up, down, sent, received)
        assert (s.seq, s.active_up, s.active_down, s.host) == (seq, up, down, "box")
        assert (s.net_tx_bps, s.net_rx_bps) == pytest.approx(expected[:2])
        assert (s.host_net_tx_bps, s.host_net_rx_bps) == pytest.approx(expected[2:]), seq
