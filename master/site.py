"""Commands answered from cluster state: SITE SLAVES, STATUS, SLAVESELECT and WHO (admins
only), and XCRC (whole-file CRC from the VFS, or a range computed by a slave that holds the file).

Owns the text of those replies (plain functions over the registry and counters); the
handler only routes the commands here. No sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from common import messages as m
from master import choice, replies
from master.answers import SlaveAnswer, why
from master.placement import Selection
from master.slaves import SlaveInfo, SlaveState

if TYPE_CHECKING:
    from master.session import Session


def _rate(bps: float) -> str:
    """Bytes per second, short: 0, 512, 1.5K, 12.0M, 1.1G."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if bps >= size:
            return f"{bps / size:.1f}{unit}"
    return f"{bps:.0f}"


def slave_lines(slaves: Iterable[SlaveInfo], now: float | None = None) -> list[str]:
    """One line per slave: ` <name> <state> free=<bytes> total=<bytes> active=<n>` (scripts
    and the launcher parse these first fields), then up=<n> down=<n> (from the last stats),
    rx=/tx= (bytes/s the slave's own transfers move), load=<load1/ncpu> and stats=<age>s (or
    stats=none), then, for a slave with pooled passive ports, pool=<free to lend>/<all> and
    dirty=<n> (waiting for ClearPort)."""
    lines = []
    for info in sorted(slaves, key=lambda s: s.name):
        stats = info.stats
        free = stats.disk_free if stats is not None else info.disk_free
        total = stats.disk_total if stats is not None else info.disk_total
        line = (f" {info.name} {info.state.value} free={free} total={total} "
                f"active={info.dispatched}")
        if stats is not None:
            line += (f" up={stats.active_up} down={stats.active_down} rx={_rate(stats.net_rx_bps)}"
                     f" tx={_rate(stats.net_tx_bps)} load={stats.load1 / max(1, stats.ncpu):.2f}")
            if now is not None:
                line += f" stats={max(0.0, now - info.stats_at):.0f}s"
        else:
            line += " stats=none"
        if info.pool:
            line += f" pool={len(info.unlent_ports)}/{len(info.pool)}"
            if info.dirty_ports:
                line += f" dirty={len(info.dirty_ports)}"
        lines.append(line)
    return lines


def slaveselect_lines(selection: Selection) -> list[str]:
    """SITE SLAVESELECT: the choice, then ` <name> score=<x>` or ` <name> excluded: <why>`."""
    lines = [f" chosen: {selection.chosen or '(none)'}"]
    for v in selection.verdicts:
        if v.score is None:
            lines.append(f" {v.name} excluded: {v.reason}")
        else:
            lines.append(f" {v.name} score={v.score:.3f}")
    return lines


@dataclass(frozen=True, slots=True)
class SessionView:
    """What SITE WHO shows of one session (built by the handler side, rendered here)."""

    user: str
    remote: str
    connected_s: float
    command: str = ""
    path: str = ""
    slave: str = ""
    bytes: int = 0
    elapsed_s: float = 0.0


def who_lines(sessions: Iterable[SessionView]) -> list[str]:
    """` <user> <ip:port> connected=<s>s` and, when transferring,
    ` <CMD> <path> on <slave> <bytes> bytes in <s>s` (bytes: the relay's count, or what the
    slave last reported in its TransferProgress, about once a second)."""
    lines = []
    for s in sorted(sessions, key=lambda s: (s.user, s.remote)):
        line = f" {s.user or '(not logged in)'} {s.remote} connected={s.connected_s:.0f}s"
        if s.command:
            line += (f" {s.command} {s.path} on {s.slave} {s.bytes} bytes in {s.elapsed_s:.1f}s")
        lines.append(line)
    return lines


def status_lines(relayed_bytes: int, sessions: int, slaves: Iterable[SlaveInfo]) -> list[str]:
    online = sum(1 for s in slaves if s.state is SlaveState.ONLINE)
    return [f" relayed_bytes={relayed_bytes}", f" sessions={sessions}", f" slaves_online={online}"]


def parse_xcrc(arg: str) -> tuple[str, int, int | None] | str:
    """`XCRC path [start [end]]` -> (path, start, end), or the error reply. A path may
    contain spaces; trailing integers are the range."""
    text = arg.strip()
    if text.startswith('"') and '"' in text[1:]:
        close = text.index('"', 1)
        path, numbers = text[1:close], text[close + 1:].split()
    else:
        words = text.split(" ")
        numbers = []
        while len(words) > 1 and len(numbers) < 2 and words[-1].isdigit():
            numbers.insert(0, words.pop())
        path = " ".join(words)
    if not path:
        return "501 Syntax error: XCRC needs a path."
    try:
        values = [int(n) for n in numbers]
    except ValueError:
        return "501 Syntax error: XCRC start and end must be integers."
    if len(values) > 2 or any(v < 0 for v in values):
        return "501 Syntax error: XCRC path [start [end]]."
    start = values[0] if values else 0
    end = values[1] if len(values) > 1 else None
    if end is not None and end < start:
        return "501 XCRC end is before start."
    return path, start, end


def crc_reply(crc32: int) -> str:
    return f"250 {crc32 & 0xFFFFFFFF:08X}"


# ---------------------------------------------------------------- commands

def site_slaves(h: Session) -> None:
    if not h.authorizer.is_admin(h.username):
        h.respond(replies.NO_PERMISSION)
        return
    lines = slave_lines(h.cluster.registry.slaves.values(), h.cluster.clock())
    h.push("200-Slaves:\r\n" + "".join(f"{line}\r\n" for line in lines))
    h.respond(f"200 {len(lines)} slaves")


def site_remerge(h: Session, arg: str) -> None:
    """SITE REMERGE <slave>: replay its queued operations, then a full inventory merge (every
    directory listed, whatever the recorded digests). Answers at once; the merge runs on."""
    if not h.authorizer.is_admin(h.username):
        h.respond(replies.NO_PERMISSION)
        return
    name = arg.strip()
    if not name:
        h.respond("501 Syntax: SITE REMERGE slave.")
        return
    if not h.cluster.link.remerge(name, full=True):
        h.respond(f"550 No such slave online: {name}.")
        return
    h.respond(f"200 Full merge of {name} started.")


def site_status(h: Session) -> None:
    if not h.authorizer.is_admin(h.username):
        h.respond(replies.NO_PERMISSION)
        return
    cluster = h.cluster
    lines = status_lines(cluster.relayed.total, len(cluster.sessions), cluster.registry.slaves.values())
    h.push("200-Cluster status:\r\n" + "".join(f"{line}\r\n" for line in lines))
    h.respond("200 End of status.")


def site_slaveselect(h: Session, arg: str) -> None:
    """SITE SLAVESELECT up|down PATH: what placement would decide now, and why (no side effect)."""
    if not h.authorizer.is_admin(h.username):
        h.respond(replies.NO_PERMISSION)
        return
    direction, _, raw = arg.strip().partition(" ")
    kinds = {"up": "upload", "upload": "upload", "down": "download", "download": "download",
             "replication": "replication"}
    if direction.lower() not in kinds or not raw.strip():
        h.respond("501 Syntax: SITE SLAVESELECT up|down PATH.")
        return
    kind = kinds[direction.lower()]
    path = h.fs.ftp2fs(raw.strip())
    now = h.cluster.clock()
    registry = h.cluster.registry
    entry = h.fs.lookup(path)
    holders = entry.slaves if entry is not None and not entry.is_dir else frozenset()
    if kind == "download":
        if entry is None or entry.is_dir:
            h.respond("550 No such file.")
            return
        slaves = registry.loads(now, holders)
    else:
        slaves = registry.loads(now)
    prefer = holders if kind == "upload" else frozenset()
    selection = h.cluster.placement.evaluate(kind, path, slaves, prefer=prefer)  # type: ignore[arg-type]
    lines = slaveselect_lines(selection)
    h.push(f"200-Slave selection for {kind} of {path}:\r\n" + "".join(f"{line}\r\n" for line in lines))
    h.respond(f"200 {len(selection.scores())} eligible, {len(selection.excluded())} excluded.")


def site_who(h: Session) -> None:
    if not h.authorizer.is_admin(h.username):
        h.respond(replies.NO_PERMISSION)
        return
    views = [session_view(s) for s in list(h.cluster.sessions)]
    lines = who_lines(views)
    h.push("200-Sessions:\r\n" + "".join(f"{line}\r\n" for line in lines))
    h.respond(f"200 {len(lines)} sessions.")


def session_view(session: Any) -> SessionView:
    import time as _time

    now = _time.monotonic()
    transfer = session.current_transfer()
    connected = max(0.0, now - getattr(session, "connected_at", now))
    remote = f"{session.remote_ip}:{session.remote_port}"
    if transfer is None:
        return SessionView(user=session.username, remote=remote, connected_s=connected)
    return SessionView(user=session.username, remote=remote, connected_s=connected, command=transfer.kind,
                       path=transfer.path, slave=transfer.slave, bytes=transfer.progress(),
                       elapsed_s=now - transfer.created)


def xcrc(h: Session, arg: str) -> None:
    if refusal := replies.type_a_refusal("XCRC", h.current_type()):
        h.respond(refusal)
        return
    parsed = parse_xcrc(arg)
    if isinstance(parsed, str):
        h.respond(parsed)
        return
    raw, start, end = parsed
    path = h.fs.ftp2fs(raw)
    if not h.fs.validpath(path):
        h.respond(replies.INVALID_PATH)
        return
    if not h.authorizer.has_perm(h.username, "r", path):
        h.respond(replies.NO_PERMISSION)
        return
    entry = h.fs.lookup(path)
    if entry is None or entry.is_dir:
        h.respond(replies.not_a_file(entry))
        return
    if end is not None and end > entry.size or start > entry.size:
        # RFC 1123-style 554: the range cannot be positioned within the file.
        h.respond(f"554 Range beyond the end of the file ({entry.size} bytes).")
        return
    whole = start == 0 and (end is None or end == entry.size)
    if whole and entry.crc32 is not None:
        h.respond(crc_reply(entry.crc32))
        return
    slave, refusal = choice.pick_download(h.cluster, entry, h.cluster.clock())
    if slave is None:
        h.respond(refusal)
        return
    token = object()
    h.pending_checksum = token
    h.begin_deferred()

    def on_reply(reply: SlaveAnswer) -> None:
        if h._closed or h.pending_checksum is not token:
            return
        h.pending_checksum = None
        if isinstance(reply, m.ChecksumResult):
            h.respond(crc_reply(reply.crc32))
        elif isinstance(reply, m.OpResult):
            h.respond(f"550 Checksum failed: {reply.error or 'error on the slave'}.")
        else:
            h.respond(f"451 Checksum not available: {why(reply)}.")
        h.end_deferred()

    h.cluster.link.request(slave, m.Checksum(req_id=0, path=path, start=start, end=end), on_reply)
