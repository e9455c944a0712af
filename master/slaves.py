"""What the master knows about its slaves: state, incarnation, address, stats, load.

Pure: the I/O layer feeds it broker events and stats with `now` and asks it questions.

Load figures given to placement (`SlaveLoad`):
- disk free: the last stats' disk_free if they are at most STATS_FRESH_S old, else the
  SlaveUp figure; minus `reserved_bytes` (uploads dispatched since those stats), never below 0.
- active transfers: max(stats active_up + active_down, dispatched) with fresh stats, else
  `dispatched`. Both count the same transfers seen from two sides: the stats lag behind what
  the master just dispatched, and the master does not know transfers it lost track of (a
  restart); the larger figure is the safe one.
- load per CPU: stats load1 / ncpu with fresh stats, else 0.
- fresh: stats at most STATS_FRESH_S old, or none received yet from this incarnation (a
  slave that just joined is judged by Hello's figures; one that stopped publishing is stale).
- recent starts: transfers dispatched since the last stats (the stats do not show them yet).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from common.messages import SlaveStats, SlaveUp
from master.placement import SlaveLoad

STATS_FRESH_S = 6.0


class SlaveState(enum.Enum):
    OFFLINE = "offline"
    MERGING = "merging"
    ONLINE = "online"


@dataclass(frozen=True, slots=True)
class LentPort:
    """One of a slave incarnation's pooled passive ports, lent to one PASV route."""

    slave: str
    incarnation: str
    port: int


@dataclass(slots=True)
class SlaveInfo:
    name: str
    state: SlaveState
    incarnation: str
    data_host: str
    max_transfers: int
    disk_total: int = 0
    disk_free: int = 0
    stats: SlaveStats | None = None
    stats_at: float = 0.0
    dispatched: int = 0
    """Transfers the master started on this slave and that have not finished."""
    reserved_bytes: int = 0
    """Bytes of uploads dispatched since the last stats (reconciled by the next stats)."""
    merge_generation: int = 0
    merged: bool = False
    """This incarnation's inventory merge has finished (survives going offline and back)."""
    started_since_stats: int = 0
    """Transfers dispatched since the last stats (reset by the next stats)."""
    pool: frozenset[int] = frozenset()
    """This incarnation's pooled passive ports (SlaveUp)."""
    unlent_ports: deque[int] = field(default_factory=deque)
    """Pooled ports known clean and not lent, least recently returned first (a port just
    given back, to which a late client connection might still come, is lent last)."""
    dirty_ports: set[int] = field(default_factory=set)
    """Pooled ports that may hold a client's connection or a transfer still waiting for one:
    each is lent again only after a ClearPort succeeds. At first sight (in this master
    process) every port is dirty: an earlier master may have lent it."""
    clearing_ports: set[int] = field(default_factory=set)
    """Dirty ports with a ClearPort in flight."""
    reclear: set[int] = field(default_factory=set)
    """Ports whose next report of being clean does not count (a give-back or a ClearPort
    answered while a connection may have come after it): soiled while lent to a route, or
    while their ClearPort was in flight."""

    def load(self, now: float) -> SlaveLoad:
        """This slave's figures for placement (rules in the module docstring)."""
        stats = self.stats
        fresh = stats is not None and now - self.stats_at <= STATS_FRESH_S
        rx = tx = 0.0
        total = self.disk_total
        if stats is not None and fresh:
            disk_free, total = stats.disk_free, stats.disk_total
            active = max(stats.active_up + stats.active_down, self.dispatched)
            load_per_cpu = stats.load1 / max(1, stats.ncpu)
            rx, tx = stats.net_rx_bps, stats.net_tx_bps  # its own transfers, not host_net_*
        else:
            disk_free, active, load_per_cpu = self.disk_free, self.dispatched, 0.0
        return SlaveLoad(name=self.name, disk_free=max(0, disk_free - self.reserved_bytes),
                         active_transfers=active, max_transfers=self.max_transfers,
                         load_per_cpu=load_per_cpu, disk_total=total, state=self.state.value,
                         fresh=stats is None or fresh, rx_bps=rx, tx_bps=tx,
                         recent_starts=self.started_since_stats)


@dataclass(slots=True)
class SlaveRegistry:
    slaves: dict[str, SlaveInfo] = field(default_factory=dict)

    def on_up(self, msg: SlaveUp, now: float) -> tuple[SlaveInfo, bool]:
        """Record a SlaveUp. Returns the info and whether it is a new incarnation (restart or
        first sight: its inventory must be merged; state becomes MERGING) as opposed to the
        same incarnation re-registering after a broker restart (state kept).

        Precisely, the flag means "start a merge now":
        - unknown name or another incarnation: a fresh SlaveInfo (counters and stats of the old
          process forgotten), MERGING, True;
        - same incarnation while OFFLINE (broker restart): back to ONLINE, False, if its merge
          had finished; else MERGING again, True (the interrupted merge restarts);
        - same incarnation while MERGING or ONLINE (a repeated announcement): state kept, False.
        Address, slot count and disk figures are refreshed in every case.
        """
        info = self.slaves.get(msg.name)
        if info is None or info.incarnation != msg.incarnation:
            info = SlaveInfo(name=msg.name, state=SlaveState.MERGING, incarnation=msg.incarnation,
                             data_host=msg.data_host, max_transfers=msg.max_transfers,
                             disk_total=msg.disk_total, disk_free=msg.disk_free,
                             pool=frozenset(msg.passive_pool), dirty_ports=set(msg.passive_pool))
            self.slaves[msg.name] = info
            return info, True
        info.data_host = msg.data_host
        info.max_transfers = msg.max_transfers
        info.disk_total = msg.disk_total
        info.disk_free = msg.disk_free
        if info.state is not SlaveState.OFFLINE:
            return info, False
        if info.merged:
            info.state = SlaveState.ONLINE
            return info, False
        info.state = SlaveState.MERGING
        return info, True

    def on_down(self, name: str, incarnation: str) -> SlaveInfo | None:
        """Mark offline if `incarnation` is the current one; returns the info if it changed.

        Counters are kept: data connections run slave-to-client and may outlive the broker
        link; the I/O layer reports their end with `transfer_finished`.
        """
        info = self.slaves.get(name)
        if info is None or info.incarnation != incarnation or info.state is SlaveState.OFFLINE:
            return None
        info.state = SlaveState.OFFLINE
        return info

    def all_offline(self) -> list[str]:
        """Broker lost: mark every slave offline; returns the names that were not offline."""
        changed = []
        for name, info in sorted(self.slaves.items()):
            if info.state is not SlaveState.OFFLINE:
                info.state = SlaveState.OFFLINE
                changed.append(name)
        return changed

    def mark_online(self, name: str) -> None:
        """Merge finished: the slave serves downloads.

        A slave that went offline meanwhile stays offline (but its merge counts as done for
        this incarnation); an unknown name is ignored.
        """
        info = self.slaves.get(name)
        if info is None:
            return
        info.merged = True
        if info.state is SlaveState.MERGING:
            info.state = SlaveState.ONLINE

    def on_stats(self, stats: SlaveStats, now: float) -> None:
        """Keep the latest stats of a known slave (same incarnation); reset reserved_bytes.

        Stats of an unknown slave or another incarnation, and stats with a sequence number
        not above the kept one (reordered or repeated), are ignored.
        """
        info = self.slaves.get(stats.name)
        if info is None or info.incarnation != stats.incarnation:
            return
        if info.stats is not None and stats.seq <= info.stats.seq:
            return
        info.stats = stats
        info.stats_at = now
        info.reserved_bytes = 0
        info.started_since_stats = 0

    def transfer_started(self, name: str, reserve_bytes: int = 0) -> None:
        """Count a transfer dispatched to `name` (and reserve upload space); unknown: ignored."""
        info = self.slaves.get(name)
        if info is not None:
            info.dispatched += 1
            info.started_since_stats += 1
            info.reserved_bytes += max(0, reserve_bytes)

    def transfer_finished(self, name: str) -> None:
        """A dispatched transfer ended; never goes below 0 (a new incarnation resets the count)."""
        info = self.slaves.get(name)
        if info is not None and info.dispatched > 0:
            info.dispatched -= 1

    def lend_port(self, name: str) -> LentPort | None:
        """A free pooled passive port of online slave `name`, or None (none free, or no pool)."""
        info = self.slaves.get(name)
        if info is None or info.state is not SlaveState.ONLINE or not info.unlent_ports:
            return None
        return LentPort(name, info.incarnation, info.unlent_ports.popleft())

    def is_current(self, lent: LentPort) -> bool:
        """`lent` belongs to the slave's current incarnation (not to a process since gone)."""
        info = self.slaves.get(lent.slave)
        return info is not None and info.incarnation == lent.incarnation and lent.port in info.pool

    def restarted_since(self, lent: LentPort) -> bool:
        """The slave that lent `lent` has come back as another process (online or not yet)."""
        info = self.slaves.get(lent.slave)
        return info is not None and info.incarnation != lent.incarnation

    def return_port(self, lent: LentPort) -> None:
        """`lent` is clean (the slave emptied its queue) and may be lent again; ignored if
        its incarnation is gone or it is free or dirty already."""
        info = self.slaves.get(lent.slave)
        if (not self.is_current(lent) or info is None or lent.port in info.unlent_ports
                or lent.port in info.dirty_ports):
            return
        if lent.port in info.reclear:
            info.reclear.discard(lent.port)
            info.dirty_ports.add(lent.port)
            return
        info.unlent_ports.append(lent.port)

    def soil_port(self, lent: LentPort) -> None:
        """`lent` may hold a connection nobody will take: clear it before lending it again.

        `lent` may belong to an incarnation since replaced: with passive_ports the new
        process reopens the same port numbers, and the old route's client may have connected
        to this process's port. That port is then dirty too (if lent right now, once given
        back: a ClearPort now would report clean a port another route holds)."""
        info = self.slaves.get(lent.slave)
        if info is None or lent.port not in info.pool:
            return
        if lent.port in info.clearing_ports:
            info.reclear.add(lent.port)  # the ClearPort may have run before the connection came
        elif lent.port in info.dirty_ports:
            return
        elif lent.port in info.unlent_ports:
            info.unlent_ports.remove(lent.port)
            info.dirty_ports.add(lent.port)
        elif self.is_current(lent):
            info.dirty_ports.add(lent.port)
        else:
            info.reclear.add(lent.port)  # lent to a route of the current process right now

    def ports_to_clear(self, name: str) -> list[LentPort]:
        """Dirty ports of `name` (not offline) with no ClearPort in flight; they count as in
        flight from now until `port_cleared`."""
        info = self.slaves.get(name)
        if info is None or info.state is SlaveState.OFFLINE:
            return []
        ports = sorted(info.dirty_ports - info.clearing_ports)
        info.clearing_ports.update(ports)
        return [LentPort(name, info.incarnation, port) for port in ports]

    def port_cleared(self, lent: LentPort, ok: bool) -> None:
        """A ClearPort's outcome: clean ports may be lent; the others stay dirty (retried)."""
        info = self.slaves.get(lent.slave)
        if info is None or not self.is_current(lent):
            return
        info.clearing_ports.discard(lent.port)
        if ok and lent.port in info.reclear:
            info.reclear.discard(lent.port)  # stays dirty: cleared once more
        elif ok and lent.port in info.dirty_ports:
            info.dirty_ports.discard(lent.port)
            info.unlent_ports.append(lent.port)

    def is_online(self, name: str) -> bool:
        info = self.slaves.get(name)
        return info is not None and info.state is SlaveState.ONLINE

    def loads(self, now: float, names: frozenset[str] | None = None) -> list[SlaveLoad]:
        """Every known slave (or those in `names`), whatever its state: placement filters."""
        return [info.load(now) for name, info in sorted(self.slaves.items())
                if names is None or name in names]

    def upload_candidates(self, now: float) -> list[SlaveLoad]:
        """Online slaves (stats may be missing right after joining: then use Hello's disk figures)."""
        return [info.load(now) for _, info in sorted(self.slaves.items())
                if info.state is SlaveState.ONLINE]

    def download_candidates(self, holders: frozenset[str], now: float) -> list[SlaveLoad]:
        """Online holders only."""
        return [info.load(now) for name, info in sorted(self.slaves.items())
                if name in holders and info.state is SlaveState.ONLINE]
