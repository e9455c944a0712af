"""Which slave serves a transfer: pure functions over a snapshot of the slaves.

No sockets, no clock reads: the caller passes what it knows (stats, its own counters).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SlaveLoad:
    name: str
    disk_free: int
    """Bytes free from the slave's last stats, minus what the master has reserved since."""
    active_transfers: int
    """From the last stats plus what the master has dispatched since."""
    max_transfers: int
    load_per_cpu: float = 0.0


MIN_FREE_BYTES = 64 * 1024 * 1024


def choose_upload_slave(candidates: list[SlaveLoad], size_hint: int = 0,
                        prefer: frozenset[str] = frozenset(), min_free: int = MIN_FREE_BYTES) -> str | None:
    """Slave for a STOR: enough free space (size_hint + min_free) and a free transfer slot;
    slaves in `prefer` (current holders of an overwritten file) first, then fewest active
    transfers, then most free space, then name. None when no slave qualifies."""
    need = max(0, size_hint) + min_free
    eligible = [c for c in candidates
                if c.disk_free >= need and c.active_transfers < c.max_transfers]
    if not eligible:
        return None
    best = min(eligible, key=lambda c: (c.name not in prefer, c.active_transfers, -c.disk_free, c.name))
    return best.name


def choose_download_slave(holders: list[SlaveLoad]) -> str | None:
    """Least busy online holder with a free transfer slot (ties: lower load, then name).

    "Least busy" is the fewest active transfers; `load_per_cpu` only breaks ties.
    """
    eligible = [h for h in holders if h.active_transfers < h.max_transfers]
    if not eligible:
        return None
    return min(eligible, key=lambda h: (h.active_transfers, h.load_per_cpu, h.name)).name
