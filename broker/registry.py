"""The broker's pure core: who is registered, where to route, and who is dead.

This module owns every routing and liveness decision of the broker and nothing else:
no sockets, no clock reads (callers pass `now`, seconds from a monotonic clock), no
logging. Each handler takes one decoded message and returns the messages to send as
`Send` values; `broker.service` does the sending and reports failed sends back through
`send_failed`. Up/down transitions are also journalled for the service (`take_changes`),
which logs them and trims its stats cache.

State is one registry `slaves: dict[name, SlaveRecord]` plus the routing-id index
`_names: dict[routing_id, name]`, and at most one `MasterRecord`. A dead slave is
removed outright, so "unknown" and "dead" are the same thing. Messages for an absent
master are dropped here (the slave re-sends what matters).

Nothing here trusts the network: unexpected messages get `Disconnect` or are ignored.
With CURVE the service passes the name the sender's key is listed under (`key_name`): a
Hello of any other name is refused ("refused: ..."; the slave exits) and journalled for
the service to log (`take_refusals`), so no key registers or supersedes another's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from common import messages as m

HEARTBEAT_MS = 1000
"""Send a Heartbeat to a peer we have sent nothing to for this long."""
LIVENESS = 5
"""A peer silent for HEARTBEAT_MS * LIVENESS is dead."""

Peer = Literal["master", "slave"]

SLAVE_COMMANDS: tuple[type[m.Message], ...] = get_args(m.SlaveCommand)
SLAVE_REPLIES: tuple[type[m.Message], ...] = get_args(m.SlaveReply)


@dataclass(frozen=True)
class Send:
    """One message for the service to send: `msg` to `routing_id` on the `to` ROUTER."""

    to: Peer
    routing_id: bytes
    msg: m.Message


@dataclass
class SlaveRecord:
    name: str
    incarnation: str
    routing_id: bytes
    data_host: str
    max_transfers: int
    disk_total: int
    disk_free: int
    last_seen: float
    last_sent: float
    started_ns: int = 0
    passive_pool: list[int] = field(default_factory=list)

    def slave_up(self) -> m.SlaveUp:
        return m.SlaveUp(name=self.name, incarnation=self.incarnation, data_host=self.data_host,
                         max_transfers=self.max_transfers, disk_total=self.disk_total,
                         disk_free=self.disk_free, passive_pool=self.passive_pool)

    def slave_down(self, reason: str) -> m.SlaveDown:
        return m.SlaveDown(name=self.name, incarnation=self.incarnation, reason=reason)


@dataclass
class MasterRecord:
    routing_id: bytes
    incarnation: str
    last_seen: float
    last_sent: float


class Registry:
    """Slaves by name, the master, and the rules of the broker protocol (DESIGN-NOTES.md)."""

    def __init__(self, heartbeat_ms: int = HEARTBEAT_MS, liveness: int = LIVENESS) -> None:
        self.heartbeat_ms = heartbeat_ms
        self.liveness = liveness
        self.interval = heartbeat_ms / 1000.0
        """Seconds between heartbeats to an idle peer."""
        self.expiry = self.interval * liveness
        """Seconds of silence after which a peer is dead."""
        self.slaves: dict[str, SlaveRecord] = {}
        self._names: dict[bytes, str] = {}
        self.master: MasterRecord | None = None
        self._changes: list[m.SlaveUp | m.SlaveDown] = []
        self._refusals: list[str] = []

    # ------------------------------------------------------------ queries

    def slave_by_routing_id(self, routing_id: bytes) -> SlaveRecord | None:
        name = self._names.get(routing_id)
        return self.slaves.get(name) if name is not None else None

    def is_up(self, name: str, incarnation: str) -> bool:
        record = self.slaves.get(name)
        return record is not None and record.incarnation == incarnation

    def take_refusals(self) -> list[str]:
        """Why slave messages were refused since the last call (for the log), oldest first."""
        refusals, self._refusals = self._refusals, []
        return refusals

    def take_changes(self) -> list[m.SlaveUp | m.SlaveDown]:
        """Slave up/down transitions since the last call, oldest first."""
        changes, self._changes = self._changes, []
        return changes

    # ------------------------------------------------------------ slave side

    def from_slave(self, routing_id: bytes, msg: m.Message, now: float,
                   key_name: str | None = None) -> list[Send]:
        """Handle one decoded message that arrived on the slave ROUTER; `key_name`: the name
        the sender's CURVE key is listed under (None: no CURVE, any name goes)."""
        out: list[Send] = []
        if isinstance(msg, m.Hello):
            if msg.proto != m.PROTOCOL_VERSION:
                out.append(Send("slave", routing_id, m.Disconnect(
                    reason=f"protocol {msg.proto} unsupported, broker speaks {m.PROTOCOL_VERSION}")))
                return out
            refusal = name_refusal(msg.name, key_name)
            if refusal:
                self._refusals.append(refusal)
                out.append(Send("slave", routing_id, m.Disconnect(reason=f"refused: {refusal}")))
                return out
            self._hello(routing_id, msg, now, out)
            return out
        record = self.slave_by_routing_id(routing_id)
        if record is not None and key_name is not None and record.name != key_name:
            record = None  # only the key that registered a name speaks for it
        if record is None:
            if not isinstance(msg, m.Bye):  # a peer that is leaving needs no answer
                out.append(Send("slave", routing_id, m.Disconnect(reason="not registered")))
            return out
        record.last_seen = now
        if isinstance(msg, m.Bye):
            self._remove(record, f"bye: {msg.reason}" if msg.reason else "bye", out, now)
        elif isinstance(msg, SLAVE_REPLIES):
            self._to_master(m.FromSlave(slave=record.name, incarnation=record.incarnation,
                                        msg=msg), out, now)  # type: ignore[arg-type]
        # Heartbeat: last_seen is all it does.
        return out

    def _hello(self, routing_id: bytes, hello: m.Hello, now: float, out: list[Send]) -> None:
        """Register `hello`. Of two incarnations of one name the greater (started_ns,
        incarnation) wins: a newer one replaces the registered one (which is told
        "superseded"), an older or equal one is told "superseded" and not registered."""
        old = self.slaves.get(hello.name)
        superseded = m.Disconnect(reason=f"superseded: another slave named {hello.name} is registered")
        if old is not None and old.incarnation != hello.incarnation:
            if (hello.started_ns, hello.incarnation) <= (old.started_ns, old.incarnation):
                # Not newer than the registered process (two slaves sharing a name): refused,
                # so they cannot take turns replacing each other forever.
                self._send_slave(routing_id, superseded, out, now, record=None)
                return
            # A restart: the old process is gone (or must go).
            self._remove(old, "replaced by a new incarnation", out, now)
            if old.routing_id != routing_id:
                self._send_slave(old.routing_id, superseded, out, now, record=None)
            old = None
        # A routing id that spoke for another name gives that name up.
        previous = self.slave_by_routing_id(routing_id)
        if previous is not None and previous.name != hello.name:
            self._remove(previous, f"connection now used by {hello.name}", out, now)
        if old is not None and old.routing_id != routing_id:
            # Same process on a new connection (reconnect, broker restart): re-point the route.
            self._names.pop(old.routing_id, None)

        record = SlaveRecord(
            name=hello.name, incarnation=hello.incarnation, routing_id=routing_id,
            data_host=hello.data_host, max_transfers=hello.max_transfers,
            disk_total=hello.disk_total, disk_free=hello.disk_free, last_seen=now,
            last_sent=old.last_sent if old is not None else now, started_ns=hello.started_ns,
            passive_pool=list(hello.passive_pool))
        self.slaves[hello.name] = record
        self._names[routing_id] = hello.name
        self._send_slave(routing_id, m.Welcome(heartbeat_ms=self.heartbeat_ms, liveness=self.liveness),
                         out, now, record)
        up = record.slave_up()
        self._changes.append(up)
        self._to_master(up, out, now)

    # ------------------------------------------------------------ master side

    def from_master(self, routing_id: bytes, msg: m.Message, now: float) -> list[Send]:
        """Handle one decoded message that arrived on the master ROUTER."""
        out: list[Send] = []
        if isinstance(msg, m.MasterHello) and msg.proto != m.PROTOCOL_VERSION:
            out.append(Send("master", routing_id, m.Disconnect(
                reason=f"protocol {msg.proto} unsupported, broker speaks {m.PROTOCOL_VERSION}")))
            return out
        if isinstance(msg, m.MasterHello):
            # A new routing id (reconnect, restarted master) replaces the old one.
            self.master = MasterRecord(routing_id=routing_id, incarnation=msg.incarnation,
                                       last_seen=now, last_sent=now)
            self._to_master(m.Welcome(heartbeat_ms=self.heartbeat_ms, liveness=self.liveness), out, now)
            for record in self.slaves.values():
                self._to_master(record.slave_up(), out, now)
            return out
        master = self.master
        if master is None or master.routing_id != routing_id:
            if not isinstance(msg, m.Bye):
                out.append(Send("master", routing_id, m.Disconnect(reason="not registered")))
            return out
        master.last_seen = now
        if isinstance(msg, m.Bye):
            self.master = None
        elif isinstance(msg, m.ToSlave):
            self._to_slave(msg, out, now)
        return out

    def _to_slave(self, msg: m.ToSlave, out: list[Send], now: float) -> None:
        record = self.slaves.get(msg.slave)
        if record is None:
            self._to_master(m.Undeliverable(slave=msg.slave, req_id=msg.cmd.req_id,
                                            reason="slave is not up"), out, now)
            return
        self._send_slave(record.routing_id, msg.cmd, out, now, record)

    # ------------------------------------------------------------ time

    def sweep(self, now: float) -> list[Send]:
        """Declare dead every peer silent for `expiry` seconds or more."""
        out: list[Send] = []
        for record in [r for r in self.slaves.values() if now - r.last_seen >= self.expiry]:
            self._remove(record, "heartbeat expired", out, now)
        if self.master is not None and now - self.master.last_seen >= self.expiry:
            self.master = None
        return out

    def heartbeats(self, now: float) -> list[Send]:
        """A Heartbeat for every peer we have sent nothing to for `interval` seconds."""
        out: list[Send] = []
        if self.master is not None and now - self.master.last_sent >= self.interval:
            self._to_master(m.Heartbeat(), out, now)
        for record in self.slaves.values():
            if now - record.last_sent >= self.interval:
                self._send_slave(record.routing_id, m.Heartbeat(), out, now, record)
        return out

    def tick(self, now: float) -> list[Send]:
        """Expiry sweep, then heartbeats (so the dead get no heartbeat)."""
        return self.sweep(now) + self.heartbeats(now)

    # ------------------------------------------------------------ send failures

    def send_failed(self, send: Send, gone: bool, now: float) -> list[Send]:
        """The service could not send `send`.

        `gone`: the peer's connection no longer exists (EHOSTUNREACH) and it is treated
        as dead; otherwise the peer is overloaded (over HWM) and only a command is failed.
        """
        out: list[Send] = []
        if send.to == "master":
            if gone and self.master is not None and self.master.routing_id == send.routing_id:
                self.master = None
            return out
        record = self.slave_by_routing_id(send.routing_id)
        if record is None:
            return out
        if isinstance(send.msg, SLAVE_COMMANDS):
            reason = "slave connection is gone" if gone else "slave is overloaded"
            self._to_master(m.Undeliverable(slave=record.name, req_id=send.msg.req_id,  # type: ignore[attr-defined]
                                            reason=reason), out, now)
        if gone:
            self._remove(record, "connection lost", out, now)
        return out

    # ------------------------------------------------------------ helpers

    def _remove(self, record: SlaveRecord, reason: str, out: list[Send], now: float) -> None:
        if self.slaves.get(record.name) is record:
            del self.slaves[record.name]
        if self._names.get(record.routing_id) == record.name:
            del self._names[record.routing_id]
        down = record.slave_down(reason)
        self._changes.append(down)
        self._to_master(down, out, now)

    def _to_master(self, msg: m.Message, out: list[Send], now: float) -> None:
        if self.master is None:
            return  # nobody to tell: dropped (DESIGN-NOTES.md)
        self.master.last_sent = now
        out.append(Send("master", self.master.routing_id, msg))

    def _send_slave(self, routing_id: bytes, msg: m.Message, out: list[Send], now: float,
                    record: SlaveRecord | None) -> None:
        if record is not None:
            record.last_sent = now
        out.append(Send("slave", routing_id, msg))


def name_refusal(hello_name: str, key_name: str | None) -> str:
    """Why a Hello naming `hello_name` from a key listed as `key_name` is refused, or ""."""
    if key_name is None or hello_name == key_name:
        return ""
    return f"Hello names slave {hello_name!r}, but its key is listed as {key_name!r}"
