"""SlaveStats snapshots from psutil: disk, load, CPUs, network rates, active transfers.

Owns: the stats sequence number (strictly increasing per process) and the previous
network counters, from which byte rates are computed. Every snapshot is whole, never a
delta, so a subscriber that missed some loses nothing.

Must not: send anything; the service publishes what `sample()` returns.
"""

from __future__ import annotations

import os
import shutil
import time

import psutil

from common import messages as m


class StatsSampler:
    def __init__(self, name: str, incarnation: str, root: str) -> None:
        self.name = name
        self.incarnation = incarnation
        self.root = root
        self.seq = 0
        self._ncpu = psutil.cpu_count() or 1
        self._last_net = self._net()
        self._last_t = time.monotonic()

    @staticmethod
    def _net() -> tuple[int, int]:
        try:
            counters = psutil.net_io_counters()
        except (OSError, RuntimeError):
            return 0, 0
        if counters is None:
            return 0, 0
        return counters.bytes_sent, counters.bytes_recv

    def disk(self) -> tuple[int, int]:
        """(free, total) bytes of the file system holding the root; zeros if unreadable."""
        try:
            usage = shutil.disk_usage(self.root)
        except OSError:
            return 0, 0
        return usage.free, usage.total

    def sample(self, active_up: int, active_down: int) -> m.SlaveStats:
        now = time.monotonic()
        tx, rx = self._net()
        elapsed = max(now - self._last_t, 1e-3)
        last_tx, last_rx = self._last_net
        tx_bps = max(tx - last_tx, 0) / elapsed
        rx_bps = max(rx - last_rx, 0) / elapsed
        self._last_net, self._last_t = (tx, rx), now
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
            active_up=active_up, active_down=active_down)
