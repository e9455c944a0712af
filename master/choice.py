"""Which slave serves a transfer: the registry's load figures through the placement policy
for the direction, or the reply that says why none can (RFC 959 450/452)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from master import replies
from master.placement import Selection
from master.route import Route
from master.transfer_state import UPLOADS
from master.vfs import Entry

if TYPE_CHECKING:
    from master.cluster import Cluster


def _refusal(selection: Selection, busy: str, unavailable: str) -> str:
    """The reply when no slave qualifies: `unavailable` if none was even online."""
    if any(reason not in ("offline", "merging") for reason in selection.excluded().values()):
        return busy
    return unavailable


def pick_download(cluster: Cluster, entry: Entry, now: float) -> tuple[str | None, str]:
    """Slave to serve `entry`, or None and the reply explaining why."""
    holders = cluster.registry.loads(now, entry.slaves)
    selection = cluster.placement.choose("download", entry.path, holders)
    if selection.chosen is None:
        # RFC 959 450: requested file action not taken, file unavailable (busy).
        return None, _refusal(selection, replies.FILE_SLAVES_BUSY, replies.FILE_SLAVE_OFFLINE)
    return selection.chosen, ""


def pick_upload(cluster: Cluster, path: str, entry: Entry | None, must_hold: bool,
                now: float, size_hint: int = 0) -> tuple[str | None, str]:
    """Slave to receive an upload to `path`. `must_hold`: REST+STOR or APPE onto an existing
    file, which only a current holder can continue. `size_hint`: bytes announced by ALLO."""
    holders = entry.slaves if entry is not None else frozenset()
    candidates = cluster.registry.loads(now, holders if must_hold else None)
    selection = cluster.placement.choose("upload", path, candidates, size_hint=size_hint,
                                         prefer=frozenset(holders))
    if selection.chosen is None:
        # RFC 959 452: insufficient storage space (or no free transfer slot).
        if must_hold:
            unavailable = replies.FILE_SLAVE_OFFLINE
        else:
            unavailable = replies.NO_SLAVE_ONLINE
        return None, _refusal(selection, replies.NO_SLAVE_ROOM, unavailable)
    return selection.chosen, ""


def plan(cluster: Cluster, kind: str, path: str, offset: int, entry: Entry | None,
         size_hint: int = 0) -> tuple[str | None, str]:
    """Slave for `kind` on `path` (at PRET time or when the command arrives), or the reply.
    `entry` is what the metadata holds at `path` (the caller has looked it up)."""
    now = cluster.clock()
    if kind == "RETR":
        if entry is None or entry.is_dir:
            return None, replies.not_a_file(entry)
        return pick_download(cluster, entry, now)
    if kind == "STOU":
        entry = None
    must_hold = entry is not None and (offset > 0 or kind == "APPE")
    return pick_upload(cluster, path, entry, must_hold, now, size_hint=size_hint)


def route_refusal(cluster: Cluster, route: Route, kind: str, path: str, offset: int,
                  entry: Entry | None) -> str:
    """Why the slave a PRET'd PASV lent (`route`) cannot serve `kind` on `path` now, or ""."""
    slave = route.slave
    assert slave is not None
    must_hold = kind == "RETR" or offset > 0 or (kind == "APPE" and entry is not None)
    # A new process of the slave may still be merging (not online yet): that it restarted is
    # the reason the client can act on (PASV again), so it is told first.
    if route.lent is not None and cluster.registry.restarted_since(route.lent):
        return replies.ROUTE_SLAVE_RESTARTED
    if not cluster.registry.is_online(slave):
        return replies.ROUTE_SLAVE_OFFLINE
    if must_hold and (entry is None or slave not in entry.slaves):
        return replies.ROUTE_SLAVE_LACKS_FILE
    if route.lent is not None and not cluster.registry.is_current(route.lent):
        return replies.ROUTE_SLAVE_RESTARTED
    if rule := cluster.placement.rule_exclusion("upload" if kind in UPLOADS else "download",
                                                path, slave):
        # PRET placed the listener for another path: the path rules still apply to this one.
        return replies.route_rule_refusal(rule)
    return ""
