"""SlaveStats snapshots: disk, load, CPUs, byte rates, active transfers.

Owns: the stats sequence number (strictly increasing per process) and the previous byte
counters (the slave's own transfers', and the host's NIC counters from psutil), from which
the rates are computed by `rates()`, a pure function. Every snapshot is whole, never a
delta, so a subscriber that missed some loses nothing.

The slave's own rates (net_tx_bps / net_rx_bps) come from the totals its data connections
moved (slave.transfers.TransferManager.moved), so slaves sharing a machine each report their
own traffic; the machine's NIC counters go apart, as host_net_tx_bps / host_net_rx_bps.

Must not: send anything; the service publishes what `sample()` returns.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass
from typing import Callable

import psutil

from common import messages as m


@dataclass(frozen=True, slots=True)
class Counters:
    """Byte counters read at one moment (`at`: monotonic seconds)."""

    at: float
    sent: int
    received: int


def rates(prev: Counters | None, cur: Counters) -> tuple[float, float]:
    """(sent, received) bytes per second from `prev` to `cur`. 0.0 for both without a
    previous reading or when no time passed; a counter that went backwards (a reset or a
    wrap) gives 0.0 for that interval."""
    if prev is None or cur.at <= prev.at:
        return 0.0, 0.0
    elapsed = cur.at - prev.at
    return max(cur.sent - prev.sent, 0) / elapsed, max(cur.received - prev.received, 0) / elapsed


def host_net() -> tuple[int, int] | None:
    """The machine's NIC counters (bytes sent, received; every interface), or None."""
    try:
        counters = psutil.net_io_counters()
    except (OSError, RuntimeError):
        return None
    if counters is None:
        return None
    return counters.bytes_sent, counters.bytes_recv


class StatsSampler:
    def __init__(self, name: str, incarnation: str, root: str,
                 read_host_net: Callable[[], tuple[int, int] | None] = host_net,
                 host: str | None = None) -> None:
        self.name = name
        self.incarnation = incarnation
        self.root = root
        self.host = socket.gethostname() if host is None else host
        self.seq = 0
        self._ncpu = psutil.cpu_count() or 1
        self._read_host_net = read_host_net
        self._last_own: Counters | None = None
        self._last_host: Counters | None = None

    def disk(self) -> tuple[int, int]:
        """(free, total) bytes of the file system holding the root; zeros if unreadable."""
        try:
            usage = shutil.disk_usage(self.root)
        except OSError:
            return 0, 0
        return usage.free, usage.total

    def sample(self, now: float, active_up: int, active_down: int,
               sent: int, received: int) -> m.SlaveStats:
        """A snapshot at monotonic time `now`; `sent` / `received` are the totals the
        slave's transfers have moved so far (they only grow)."""
        own = Counters(now, sent, received)
        tx_bps, rx_bps = rates(self._last_own, own)
        self._last_own = own
        host_tx: float | None = None
        host_rx: float | None = None
        reading = self._read_host_net()
        host = None if reading is None else Counters(now, *reading)
        if host is not None:
            host_tx, host_rx = rates(self._last_host, host)
        self._last_host = host
        free, total = self.disk()
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = 0.0
        self.seq += 1
        return m.SlaveStats(
            name=self.name, incarnation=self.incarnation, seq=self.seq,
            ts_ms=time.time_ns() // 1_000_000, disk_free=free, disk_total=total,
            load1=load1, ncpu=self._ncpu, net_tx_bps=tx_bps, net_rx_bps=rx_bps,
            active_up=active_up, active_down=active_down, host=self.host,
            host_net_tx_bps=host_tx, host_net_rx_bps=host_rx)
