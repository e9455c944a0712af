"""The master's link to the broker, living in pyftpdlib's IOLoop.

Owns the DEALER to the broker and the SUB on the stats feed, registration and liveness
(MasterHello, heartbeats, re-hello after silence or Disconnect), the table of requests
in flight (req_id -> callback, swept for timeouts), routing TransferDone to the transfer
that owns its xfer_id (always answering DoneAck), and starting the replay of queued
operations and the inventory merge of a slave that (re)joins (master.syncer). It makes
no FTP decisions and never blocks the loop.

The zmq FD is edge-triggered: every socket is drained once after registering, on every
read event, and again (call_later(0), deduplicated) after every send.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Protocol, assert_never

import msgspec
import zmq

from common import messages as m, wire, zmqsock
from common.config import MasterSection
from common.curve import ClientKeys
from common.repeating import broker_unreachable
from master.addresses import numeric_address
from master.answers import AnswerCallback, RequestFailed, SlaveAnswer, why
from master.loop import ZmqReader
from master.opqueue import QueuedOp
from master.slaves import LentPort, SlaveRegistry, SlaveState
from master.syncer import SlaveSync
from master.vfs import VirtualFS

log = logging.getLogger(__name__)

SWEEP_S = 0.25
ACK_DELAY_S = 0.05
"""DoneAcks wait this long to go out together (one message for many transfers); the slave
re-sends an unacknowledged TransferDone only after seconds."""
ACK_BATCH = 256
RECONNECT_S = 5.0
"""With CURVE, not registered: connect to the broker anew this often (a refused handshake is
never retried by libzmq, and our key may have been listed since)."""
POOL_RETRY_S = 5.0
"""Dirty pooled passive ports whose ClearPort failed (the slave unreachable, or a transfer
the master lost track of still holding the port) are tried again this often."""


Callback = AnswerCallback


class TransferWatcher(Protocol):
    """The owner of an xfer_id: told the outcome, or that its slave is gone."""

    def on_done(self, msg: m.TransferDone) -> bool | None:
        """False: not recorded yet, send no DoneAck (the slave re-sends it)."""

    def on_lost(self, reason: str) -> None: ...


@dataclass(slots=True)
class _Pending:
    slave: str
    deadline: float
    callback: Callback


@dataclass
class LinkCounters:
    requests: int = 0
    failed: int = 0
    bad_frames: int = 0
    stats: int = 0


class BrokerLink:
    """Master <-> broker: requests to slaves, slave events, stats and inventory merges."""

    def __init__(self, ioloop: Any, config: MasterSection, registry: SlaveRegistry,
                 vfs: VirtualFS, ctx: zmq.SyncContext | None = None,
                 clock: Callable[[], float] = time.monotonic, keys: ClientKeys | None = None) -> None:
        self.ioloop = ioloop
        self.keys = keys
        """The master's CURVE keys (None: no CURVE), for both sockets to the broker."""
        self.config = config
        self.registry = registry
        self.vfs = vfs
        self.clock = clock
        self.incarnation = uuid.uuid4().hex
        self.counters = LinkCounters()
        self.connected = False
        self.heartbeat_s = 1.0
        self.liveness = 5
        self._ctx = ctx or zmqsock.new_context()
        self._own_ctx = ctx is None
        self._dealer: ZmqReader | None = None
        self._sub: ZmqReader | None = None
        self._next_id = time.time_ns() >> 10
        """req_id/xfer_id/scan ids go on from the wall clock in ~1 us steps: a restarted
        master never reuses an id a slave still keeps state under (scans, unacked
        TransferDones, running transfers). Fits int64 for centuries."""
        self._pending: dict[int, _Pending] = {}
        self._watchers: dict[int, tuple[str, TransferWatcher]] = {}
        self._grace: dict[int, float] = {}
        """Started transfers kept through a broker loss: xfer_id -> when to give up on its
        slave coming back (same incarnation) to report the outcome."""
        self.syncer = SlaveSync(self, vfs, registry)
        """Queued slave operations and inventory merges (master.syncer)."""
        self._hello_pending = True
        self._last_recv = clock()
        self._last_send = 0.0
        self._drain_call: Any = None
        self._acks: dict[str, list[int]] = {}
        """DoneAcks not sent yet, by slave (see ACK_DELAY_S)."""
        self._ack_call: Any = None
        self._pool_retry_at = 0.0
        self._reconnected_at = clock()
        self._sweeper: Any = None
        self._closed = False
        self._unreachable = broker_unreachable()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        dealer = zmqsock.connected_dealer(self._ctx, self.config.broker_endpoint, self.keys)
        self._dealer = ZmqReader(self.ioloop, dealer, self._drain_dealer)
        sub = zmqsock.connected_sub(self._ctx, self.config.stats_endpoint, wire.STATS_TOPIC_PREFIX,
                                    self.keys)
        self._sub = ZmqReader(self.ioloop, sub, self._drain_sub)
        self._sweeper = self.ioloop.call_every(SWEEP_S, self._tick, _errback=self._tick_error)
        self._send_hello()
        self._schedule_drain()

    def close(self) -> None:
        if self._closed:
            return
        if self._dealer is not None and self.connected:
            self._flush_acks()
            self._send(m.Bye(reason="master shutting down"))
        self._closed = True
        for call in (self._sweeper, self._drain_call, self._ack_call):
            if call is not None and not call.cancelled:
                call.cancel()
        for reader in (self._dealer, self._sub):
            if reader is not None:
                reader.close()
        if self._own_ctx:
            self._ctx.term()

    # ------------------------------------------------------------ public API
    def new_xfer_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def request(self, slave: str, cmd: m.SlaveCommand, callback: Callback,
                timeout: float | None = None) -> int:
        """Send `cmd` (its req_id replaced by a fresh one) to `slave`; `callback` gets exactly
        one reply or a RequestFailed, never synchronously. Returns the req_id."""
        req_id = self.new_xfer_id()
        cmd = msgspec.structs.replace(cmd, req_id=req_id)
        self.counters.requests += 1
        if not self._send(m.ToSlave(slave=slave, cmd=cmd)):
            self.counters.failed += 1
            self.ioloop.call_later(0, self._safe_call, callback, RequestFailed("broker unreachable"))
            return req_id
        wait = self.config.request_timeout if timeout is None else timeout
        self._pending[req_id] = _Pending(slave, self.clock() + wait, callback)
        return req_id

    def cancel(self, req_id: int) -> None:
        """Forget a request: its reply, if any, is dropped."""
        self._pending.pop(req_id, None)

    def notify(self, slave: str, cmd: m.SlaveCommand) -> None:
        """Fire-and-forget with logging (Delete, Rename, RemoveDir, Abort)."""
        self.request(slave, cmd, functools.partial(self._log_outcome, slave, cmd))

    def watch(self, xfer_id: int, slave: str, watcher: TransferWatcher) -> None:
        self._watchers[xfer_id] = (slave, watcher)

    def unwatch(self, xfer_id: int) -> None:
        self._watchers.pop(xfer_id, None)
        self._grace.pop(xfer_id, None)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------ sending
    def _send(self, msg: m.Message) -> bool:
        if self._dealer is None or self._closed and not isinstance(msg, m.Bye):
            return False
        try:
            self._dealer.sock.send_multipart(wire.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            log.warning("send to broker failed: %s", exc)
            return False
        finally:
            self._schedule_drain()
        self._last_send = self.clock()
        return True

    def _send_hello(self) -> None:
        self._hello_pending = not self._send(m.MasterHello(incarnation=self.incarnation))
        self._last_recv = self.clock()

    # ------------------------------------------------------------ receiving
    def _schedule_drain(self) -> None:
        if self._closed:
            return
        if self._drain_call is None or self._drain_call.cancelled:
            self._drain_call = self.ioloop.call_later(0, self._drain_all, _errback=self._tick_error)

    def _drain_all(self) -> None:
        self._drain_call = None
        self._drain_dealer()
        self._drain_sub()

    def _drain_dealer(self) -> None:
        if self._dealer is not None and not self._closed:
            zmqsock.drain(self._dealer.sock, self._on_frames)

    def _drain_sub(self) -> None:
        if self._sub is not None and not self._closed:
            zmqsock.drain(self._sub.sock, self._on_stats_frames)

    def _on_stats_frames(self, frames: list[bytes]) -> None:
        try:
            stats = wire.decode_stats(frames)
        except wire.BadFrame as exc:
            self.counters.bad_frames += 1
            log.warning("dropping bad stats frame: %s", exc)
            return
        self.counters.stats += 1
        self.registry.on_stats(stats, self.clock())

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames, wire.BROKER_TO_MASTER)
        except wire.BadFrame as exc:
            self.counters.bad_frames += 1
            log.warning("dropping bad frame from broker: %s", exc)
            return
        self._last_recv = self.clock()
        try:
            self._dispatch(msg)
        except Exception:
            log.exception("error handling %s from broker", type(msg).__name__)

    def _dispatch(self, msg: m.BrokerToMaster) -> None:
        match msg:
            case m.FromSlave():
                self._on_from_slave(msg)
            case m.Heartbeat():
                pass
            case m.SlaveUp():
                self._on_slave_up(msg)
            case m.SlaveDown():
                self._on_slave_down(msg)
            case m.Undeliverable():
                pending = self._pending.pop(msg.req_id, None)
                if pending is not None:
                    self._safe_call(pending.callback,
                                    RequestFailed(f"undeliverable to {msg.slave}: {msg.reason}"))
            case m.Welcome():
                self.connected = True
                self.heartbeat_s = max(msg.heartbeat_ms / 1000.0, 0.1)
                self.liveness = max(msg.liveness, 2)
                log.info("registered with the broker")
            case m.Disconnect():
                log.warning("broker asked us to register again (%s)", msg.reason)
                self._broker_lost("broker forgot the master")
                self._send_hello()
            case _:
                assert_never(msg)

    def _on_from_slave(self, wrapped: m.FromSlave) -> None:
        msg = wrapped.msg
        if isinstance(msg, m.TransferProgress):
            entry = self._watchers.get(msg.xfer_id)
            if entry is not None and entry[0] == wrapped.slave:
                on_progress = getattr(entry[1], "on_progress", None)
                if on_progress is not None:
                    self._safe_call(on_progress, msg.bytes)
            return
        if isinstance(msg, m.TransferDone):
            entry = self._watchers.get(msg.xfer_id)
            if entry is not None and entry[0] != wrapped.slave:
                # Not the slave this transfer went to (an id from an earlier master process):
                # the real outcome is still to come from its own slave.
                log.warning("TransferDone for transfer %s from %s, but it runs on %s: ignored",
                            msg.xfer_id, wrapped.slave, entry[0])
            elif entry is not None:
                self._grace.pop(msg.xfer_id, None)
                try:
                    recorded = entry[1].on_done(msg) is not False
                except Exception:
                    log.exception("error in a broker-link callback")
                    recorded = True
                if not recorded:
                    return  # not recorded (metadata store failed): no DoneAck, the slave re-sends
                if self._watchers.get(msg.xfer_id) is entry:
                    del self._watchers[msg.xfer_id]
            else:
                log.info("TransferDone for unknown transfer %s from %s", msg.xfer_id, wrapped.slave)
            # Acknowledge even unknown ids, or the slave re-sends the outcome forever.
            self._ack(wrapped.slave, msg.xfer_id)
            return
        pending = self._pending.pop(msg.req_id, None)
        if pending is None:
            log.debug("late or unknown reply %s req_id=%s from %s", type(msg).__name__,
                      msg.req_id, wrapped.slave)
            return
        self._safe_call(pending.callback, msg)

    def done_recorded(self, slave: str, xfer_id: int) -> None:
        """An outcome whose on_done returned False is recorded now: acknowledge it and stop
        watching its transfer."""
        entry = self._watchers.get(xfer_id)
        if entry is not None and entry[0] == slave:
            del self._watchers[xfer_id]
        self._ack(slave, xfer_id)

    def _ack(self, slave: str, xfer_id: int) -> None:
        batch = self._acks.setdefault(slave, [])
        batch.append(xfer_id)
        if len(batch) >= ACK_BATCH:
            self._flush_acks()
        elif self._ack_call is None:
            self._ack_call = self.ioloop.call_later(ACK_DELAY_S, self._flush_acks,
                                                    _errback=self._tick_error)

    def _flush_acks(self) -> None:
        """Send the batched DoneAcks (one per slave); lost ones only cost the slave a re-send."""
        if self._ack_call is not None:
            if not self._ack_call.cancelled:
                self._ack_call.cancel()
            self._ack_call = None
        acks, self._acks = self._acks, {}
        for slave, (first, *more) in acks.items():
            self._send(m.ToSlave(slave=slave, cmd=m.DoneAck(xfer_id=first, more=more)))

    def clear_pool_ports(self, slave: str) -> None:
        """ClearPort for every dirty pooled passive port of `slave` (see SlaveInfo.dirty_ports);
        each is lent again once the slave answers OpResult(ok)."""
        for lent in self.registry.ports_to_clear(slave):
            self.request(slave, m.ClearPort(req_id=0, port=lent.port),
                         functools.partial(self._pool_port_cleared, lent))

    def _pool_port_cleared(self, lent: LentPort, reply: SlaveAnswer) -> None:
        ok = isinstance(reply, m.OpResult) and reply.ok
        if not ok:
            log.info("pooled port %d of %s not cleared (%s): retried later", lent.port, lent.slave,
                     why(reply))
        self.registry.port_cleared(lent, ok)
        if ok:
            self.clear_pool_ports(lent.slave)  # one soiled while this ClearPort was in flight

    # ------------------------------------------------------------ slaves coming and going
    def _on_slave_up(self, msg: m.SlaveUp) -> None:
        known = self.registry.slaves.get(msg.name)
        old_incarnation = known.incarnation if known is not None else None
        _info, start_merge = self.registry.on_up(msg, self.clock())
        log.info("slave %s up (incarnation %s)", msg.name, msg.incarnation[:8])
        if numeric_address(msg.data_host) is None:
            log.warning("slave %s announced data_host %r, not an IP address: clients and the "
                        "relay need one (set data_host in its config)", msg.name, msg.data_host)
        if old_incarnation is not None and old_incarnation != msg.incarnation:
            # Whatever was in flight to the old process died with it.
            self._fail_slave(msg.name, "slave restarted")
        else:
            # The same process is back (broker restart): its transfers went on meanwhile and
            # it re-sends their TransferDone; stop counting down.
            for xfer_id in [x for x in self._grace if self._watchers.get(x, ("",))[0] == msg.name]:
                del self._grace[xfer_id]
        self.clear_pool_ports(msg.name)  # all of a new incarnation's; failed ones after an outage
        if start_merge:
            self.syncer.start(msg.name, msg.incarnation)
        elif self.registry.is_online(msg.name):
            # Back after a broker restart, no merge needed: what was queued meanwhile goes now.
            self.syncer.flush(msg.name)

    def _on_slave_down(self, msg: m.SlaveDown) -> None:
        info = self.registry.on_down(msg.name, msg.incarnation)
        if info is None:
            return
        log.warning("slave %s down: %s", msg.name, msg.reason)
        self.syncer.cancel(msg.name)
        self._fail_slave(msg.name, f"slave {msg.name} went down")

    def _fail_slave(self, slave: str, reason: str) -> None:
        for req_id in [r for r, p in self._pending.items() if p.slave == slave]:
            pending = self._pending.pop(req_id)
            self._safe_call(pending.callback, RequestFailed(reason))
        for xfer_id, (owner, watcher) in list(self._watchers.items()):
            if owner == slave:
                self._grace.pop(xfer_id, None)
                self._safe_call(watcher.on_lost, reason)

    def _broker_lost(self, reason: str) -> None:
        self.connected = False
        names = self.registry.all_offline()
        if names:
            log.warning("broker lost (%s): slaves %s unreachable", reason, ", ".join(sorted(names)))
        self.syncer.cancel_all()
        for req_id in list(self._pending):
            pending = self._pending.pop(req_id, None)
            if pending is not None:
                self._safe_call(pending.callback, RequestFailed(reason))
        # Started transfers keep going slave-to-client without the broker: wait 2 x liveness
        # for their slave to re-register with the same incarnation (it then re-sends the
        # TransferDone); only those whose slave does not come back in time fail (_tick_once).
        deadline = self.clock() + 2 * self.heartbeat_s * self.liveness
        for xfer_id in list(self._watchers):
            self._grace.setdefault(xfer_id, deadline)

    # ------------------------------------------------------------ queued operations, merges
    def send_op(self, op: QueuedOp, callback: Callback | None = None) -> None:
        """Send an operation from the durable queue (see SlaveSync.send_op)."""
        self.syncer.send_op(op, callback)

    def remerge(self, slave: str, full: bool = True) -> bool:
        """Merge `slave`'s inventory again now (SITE REMERGE); False if it is offline or unknown."""
        info = self.registry.slaves.get(slave)
        if info is None or info.state is SlaveState.OFFLINE:
            return False
        self.syncer.start(slave, info.incarnation, full=full)
        return True

    # ------------------------------------------------------------ timers
    def _tick(self) -> None:
        # An exception escaping a call_every target cancels the timer for good.
        try:
            self._tick_once()
        except Exception:
            log.exception("error in the broker link timer")

    def _tick_once(self) -> None:
        now = self.clock()
        self._warn_if_unreachable(now)
        if self.keys is not None and not self.connected and now - self._reconnected_at >= RECONNECT_S:
            self._reconnected_at = now
            self._reconnect()
        silent_limit = self.heartbeat_s * self.liveness
        if self._hello_pending:
            self._send_hello()
        elif now - self._last_recv > silent_limit:
            if self.connected:
                self._broker_lost("broker silent")
            log.warning("no word from the broker for %.1f s: saying hello again", now - self._last_recv)
            self._send_hello()
        elif self.connected and now - self._last_send >= self.heartbeat_s:
            self._send(m.Heartbeat())
        if self.connected:
            self.syncer.tick(now)
            if now >= self._pool_retry_at:
                self._pool_retry_at = now + POOL_RETRY_S
                for name in list(self.registry.slaves):
                    self.clear_pool_ports(name)
        for xfer_id in [x for x, deadline in self._grace.items() if deadline <= now]:
            del self._grace[xfer_id]
            entry = self._watchers.get(xfer_id)
            if entry is not None:
                log.warning("transfer %s: slave %s not back after the broker loss", xfer_id, entry[0])
                self._safe_call(entry[1].on_lost, f"slave {entry[0]} unreachable (broker lost)")
        expired = [r for r, p in self._pending.items() if p.deadline <= now]
        for req_id in expired:
            pending = self._pending.pop(req_id, None)
            if pending is not None:
                self._safe_call(pending.callback, RequestFailed("timeout"))

    def _reconnect(self) -> None:
        """New connections to the broker: libzmq never retries one whose CURVE handshake the
        broker refused (our key not listed yet), and a fresh one costs nothing here."""
        for reader, endpoint in ((self._dealer, self.config.broker_endpoint),
                                 (self._sub, self.config.stats_endpoint)):
            if reader is None:
                continue
            try:
                reader.sock.disconnect(endpoint)
            except zmq.ZMQError:
                pass  # no such connection any more
            reader.sock.connect(endpoint)

    def _warn_if_unreachable(self, now: float) -> None:
        if self.connected:
            if (lasted := self._unreachable.cleared(now)) is not None:
                log.warning("the broker answers again after %.0f s out of reach", lasted)
        elif (lasted := self._unreachable.holds(now)) is not None:
            log.warning("cannot reach the broker at %s for %.0f s: check that the broker is "
                        "running and that master.broker_endpoint is its master endpoint "
                        "(broker.master_endpoint in the broker's config)%s; no slave can be used until then",
                        self.config.broker_endpoint, lasted,
                        ", and that the broker lists this master's CURVE key (curve.master_keys) and "
                        "curve.broker_key is its public key" if self.keys is not None else
                        ", and whether the broker uses CURVE (this config has no [curve] section)")

    def _tick_error(self) -> None:
        log.exception("error in the broker link timer")

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _safe_call(callback: Callable[[Any], None], arg: Any) -> None:
        try:
            callback(arg)
        except Exception:
            log.exception("error in a broker-link callback")

    @staticmethod
    def _log_outcome(slave: str, cmd: m.SlaveCommand, reply: SlaveAnswer) -> None:
        if isinstance(reply, m.OpResult) and reply.ok:
            return
        log.warning("%s on %s failed: %s", type(cmd).__name__, slave, why(reply))
