"""What the master knows about its slaves: state, incarnation, address, stats, load.

Pure: the I/O layer feeds it broker events and stats with `now` and asks it questions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from common.messages import SlaveStats, SlaveUp
from master.placement import SlaveLoad

STATS_FRESH_S = 6.0


class SlaveState(enum.Enum):
    OFFLINE = "offline"
    MERGING = "merging"
    ONLINE = "online"


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


@dataclass(slots=True)
class SlaveRegistry:
    slaves: dict[str, SlaveInfo] = field(default_factory=dict)

    def on_up(self, msg: SlaveUp, now: float) -> tuple[SlaveInfo, bool]:
        """Record a SlaveUp. Returns the info and whether it is a new incarnation (restart or
        first sight: its inventory must be merged; state becomes MERGING) as opposed to the
        same incarnation re-registering after a broker restart (state kept)."""
        raise NotImplementedError

    def on_down(self, name: str, incarnation: str) -> SlaveInfo | None:
        """Mark offline if `incarnation` is the current one; returns the info if it changed."""
        raise NotImplementedError

    def all_offline(self) -> list[str]:
        """Broker lost: mark every slave offline; returns the names that were not offline."""
        raise NotImplementedError

    def mark_online(self, name: str) -> None:
        """Merge finished: the slave serves downloads."""
        raise NotImplementedError

    def on_stats(self, stats: SlaveStats, now: float) -> None:
        """Keep the latest stats of a known slave (same incarnation); reset reserved_bytes."""
        raise NotImplementedError

    def transfer_started(self, name: str, reserve_bytes: int = 0) -> None:
        raise NotImplementedError

    def transfer_finished(self, name: str) -> None:
        raise NotImplementedError

    def is_online(self, name: str) -> bool:
        raise NotImplementedError

    def upload_candidates(self, now: float) -> list[SlaveLoad]:
        """Online slaves (stats may be missing right after joining: then use Hello's disk figures)."""
        raise NotImplementedError

    def download_candidates(self, holders: frozenset[str], now: float) -> list[SlaveLoad]:
        """Online holders only."""
        raise NotImplementedError
