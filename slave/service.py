"""The slave's I/O shell: the zmq links to the broker and the one main loop.

Owns: the DEALER to the broker and the stats PUB (only this thread touches them),
registration (Hello / Welcome / Disconnect / silence), heartbeats, command dispatch, the
unacknowledged TransferDones (re-sent every few seconds until DoneAck), open inventory
scans, the stats timer, and the SIGTERM shutdown (refuse new transfers, let running ones
finish for up to stop_timeout seconds, abort the rest, Bye, exit 0).

Workers (transfers, checksums) hand their results back through the Outbox, whose wake-up
socket the same zmq.Poller watches; nothing here blocks on the network or on big files.
Metadata commands (Delete, Rename, ...) run inline so that they stay ordered with the
transfers that follow them.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import signal
import time
import uuid
from collections import OrderedDict
from importlib import metadata
from types import FrameType
from typing import Callable, Iterator, assert_never, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from common import config as cfgmod, log as logmod, messages as m, sdnotify, wire, zmqsock
from common.curve import ClientKeys, client_keys
from common.repeating import RepeatingWarning, broker_unreachable
from common.tlsdata import ktls_available
from slave.outbox import JobPool, Outbox, checksum_job
from slave.registration import REFUSED_RETRY_S, Due, Registration
from slave.stats import StatsSampler
from slave.storage import Storage, StorageRootMissing
from slave.transfers import TransferManager
from slave.workers import Kind

log = logging.getLogger(__name__)

RESEND_DONE_S = 3.0
PROGRESS_S = 1.0
"""A running transfer's byte count goes to the master this often (when it changed)."""
MAX_OPEN_SCANS = 4
MAX_PAGE_ENTRIES = 5000
MAX_PAGE_BYTES = 2 * 1024 * 1024
"""Inventory pages stay well under the broker's MAXMSGSIZE (4 MiB)."""
SHUTDOWN_WAIT_S = 5.0
BYE_LINGER_MS = 1000
TICK_S = 0.25
REFUSED_WARN_EVERY_S = 60.0
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
LAZY_STARTED_S = 0.05
"""A lazy_started start's Started waits this long: a transfer that ends sooner (most small
files) needs none, its TransferDone answers the start (one message less per transfer)."""


def _version() -> str:
    try:
        return metadata.version("ftpcluster")
    except metadata.PackageNotFoundError:
        return ""


class SlaveService:
    def __init__(self, config: cfgmod.SlaveConfig, keys: ClientKeys | None = None) -> None:
        self.cfg = config.slave
        self.incarnation = uuid.uuid4().hex
        self.started_ns = time.time_ns()
        """Orders this process against another slave of the same name (the newer wins)."""
        self.exit_status = 0
        self.data_host = self.cfg.data_host or self.cfg.data_bind
        self.storage = Storage(self.cfg.root, create=self.cfg.create_root)
        self.outbox = Outbox()
        self.jobs = JobPool(self.outbox)
        self.transfers = TransferManager(self.storage, self.cfg, self.outbox)
        pool = self.transfers.open_pool()
        log.info("%d pooled passive listeners on %s", len(pool), self.cfg.data_bind)
        if self.cfg.tls_certfile:
            log.info("PROT P data connections with %s; %s", self.cfg.tls_certfile,
                     "the kernel offers kTLS, unused (no SSL_sendfile in pyOpenSSL): TLS write loop"
                     if ktls_available() else "no kTLS on this kernel: TLS write loop")
        self.stats = StatsSampler(self.cfg.name, self.incarnation, str(self.storage.root))
        self.ctx = zmqsock.new_context()
        self.dealer = zmqsock.connected_dealer(self.ctx, self.cfg.broker_endpoint, keys)
        self.pub = zmqsock.connected_pub(self.ctx, self.cfg.stats_endpoint, keys)
        # The monitor tells us when the DEALER (re)connects: a restarted broker gets our
        # Hello at once instead of after the 5 s silence.
        self.monitor = self.dealer.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED)
        self.curve = keys is not None
        self.refused = RepeatingWarning(after=0, every=REFUSED_WARN_EVERY_S)
        self.poller = zmq.Poller()
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.poller.register(self.outbox.fileno(), zmq.POLLIN)
        now = time.monotonic()
        self.reg = Registration(now)
        """Welcomed or not, and when to say Hello or Heartbeat (slave.registration)."""
        # timers
        self.resend_due = now + RESEND_DONE_S
        self.stats_due = now
        self.progress_due = now + PROGRESS_S
        self.progress_sent: dict[int, int] = {}
        self.unacked: dict[int, m.TransferDone] = {}
        self.held_started: dict[int, tuple[float, m.Started]] = {}
        """Started held back (lazy_started): xfer_id -> (when to send it, the message)."""
        self.scans: OrderedDict[int, tuple[str, Iterator[m.InventoryEntry]]] = OrderedDict()
        """Open inventory scans: scan id -> (mode, the rest of the walk)."""
        self.stopping = False
        self.draining = False
        self.drain_deadline = 0.0
        self.drain_logged = False
        self.unreachable = broker_unreachable()

    # ------------------------------------------------------------ sending

    def send(self, msg: m.Message) -> bool:
        """NOBLOCK send to the broker; False if it could not be queued."""
        try:
            self.dealer.send_multipart(wire.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.debug("broker unreachable, dropped %s", type(msg).__name__)
            return False
        except zmq.ZMQError as exc:
            log.warning("send %s failed: %s", type(msg).__name__, exc)
            return False
        self.reg.sent(time.monotonic())
        return True

    def send_hello(self) -> bool:
        free, total = self.stats.disk()
        return self.send(m.Hello(
            name=self.cfg.name, incarnation=self.incarnation, version=_version(),
            data_host=self.data_host, max_transfers=self.cfg.max_transfers,
            disk_total=total, disk_free=free, started_ns=self.started_ns,
            passive_pool=self.transfers.pooled.ports()))

    def error(self, req_id: int, exc: OSError) -> None:
        if req_id:  # req_id 0 marks a notification (master's link.notify): nobody waits
            self.send(m.OpResult(req_id=req_id, ok=False, error=exc.strerror or str(exc),
                                 errno=exc.errno or 0))

    # ------------------------------------------------------------ main loop

    def run(self) -> int:
        removed = self.storage.clean_temp()
        if removed:
            log.info("removed %d leftover upload temp files", removed)
        log.info("slave %s (incarnation %s) root %s, data %s, broker %s", self.cfg.name,
                 self.incarnation, self.storage.root, self.data_host, self.cfg.broker_endpoint)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self.stopping:
                timeout_ms = max(0, int(self._next_timer() * 1000))
                ready = dict(self.poller.poll(timeout_ms))
                zmqsock.drain(self.dealer, self.on_frames)
                if self.monitor in ready:
                    self.on_monitor()
                if self.outbox.fileno() in ready:
                    for result in self.outbox.drain():
                        self.on_result(result)
                self.on_timers(time.monotonic())
                if self.draining and not self.drain_logged:
                    self.drain_logged = True
                    log.info("stopping: refusing new transfers, waiting up to %d s for %d running",
                             self.cfg.stop_timeout, len(self.transfers.transfers))
                if self.draining and (not self.transfers.transfers
                                      or time.monotonic() >= self.drain_deadline):
                    self.stopping = True
            self.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.exit_status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.draining:
            self.stopping = True  # a second signal: abort now
        else:
            self.draining = True
            self.drain_deadline = time.monotonic() + self.cfg.stop_timeout
            sdnotify.stopping()
        self.outbox.wake()

    def _next_timer(self) -> float:
        now = time.monotonic()
        due = [self.stats_due, now + TICK_S]
        if self.held_started:
            due.append(min(when for when, _ in self.held_started.values()))
        due += self.reg.deadlines()
        if self.reg.welcomed:
            due.append(self.resend_due)
        return max(0.0, min(due) - now)

    def on_timers(self, now: float) -> None:
        self.warn_if_unreachable(now)
        for due in self.reg.tick(now):
            match due:
                case Due.BROKER_SILENT:
                    log.warning("broker silent for %.1f s; saying hello again", self.reg.silence(now))
                case Due.HELLO:
                    self.reg.hello_sent(now, self.send_hello())
                case Due.HEARTBEAT:
                    self.send(m.Heartbeat())
                case Due.RECONNECT:
                    # libzmq never retries a refused handshake: a new connection does.
                    for sock, endpoint in ((self.dealer, self.cfg.broker_endpoint),
                                           (self.pub, self.cfg.stats_endpoint)):
                        try:
                            sock.disconnect(endpoint)
                        except zmq.ZMQError:
                            pass  # already gone
                        sock.connect(endpoint)
                case _:
                    assert_never(due)
        if now >= self.resend_due:
            self.resend_due = now + RESEND_DONE_S
            if self.reg.welcomed:
                self.resend_unacked()
        if now >= self.progress_due:
            self.progress_due = now + PROGRESS_S
            if self.reg.welcomed:
                self.send_progress()
        if now >= self.stats_due:
            self.stats_due = now + self.cfg.stats_interval_ms / 1000
            self.publish_stats(now)
        for xfer_id, (when, started) in list(self.held_started.items()):
            if when <= now:
                del self.held_started[xfer_id]
                self.send(started)
        for xfer_id in self.transfers.expire_listeners(now):
            log.info("xfer %d: passive listener expired unused", xfer_id)

    def warn_if_unreachable(self, now: float) -> None:
        if self.reg.welcomed:
            if (lasted := self.unreachable.cleared(now)) is not None:
                log.warning("the broker answers again after %.0f s out of reach", lasted)
        elif (lasted := self.unreachable.holds(now)) is not None:
            log.warning("cannot reach the broker at %s for %.0f s: check that the broker is "
                        "running and that slave.broker_endpoint is its slave endpoint "
                        "(broker.slave_endpoint in the broker's config); this slave serves "
                        "nothing until then", self.cfg.broker_endpoint, lasted)

    def send_progress(self) -> None:
        """TransferProgress for every running transfer whose byte count (kept by its worker)
        moved since the last report: STAT and SITE WHO show direct transfers too."""
        sent = self.progress_sent
        for xfer_id in [x for x in sent if x not in self.transfers.transfers]:
            del sent[xfer_id]
        for xfer_id, transfer in list(self.transfers.transfers.items()):
            moved = transfer.bytes
            if moved and sent.get(xfer_id) != moved:
                sent[xfer_id] = moved
                self.send(m.TransferProgress(xfer_id=xfer_id, bytes=moved))

    def resend_unacked(self) -> None:
        for done in list(self.unacked.values()):
            self.send(done)

    def publish_stats(self, now: float) -> None:
        sent, received = self.transfers.moved()
        stats = self.stats.sample(now, self.transfers.active(Kind.RECEIVE),
                                  self.transfers.active(Kind.SEND), sent, received)
        try:
            self.pub.send_multipart(wire.encode_stats(stats), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("stats not published: %s", exc)

    # ------------------------------------------------------------ input

    def on_frames(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames, wire.BROKER_TO_SLAVE)
        except wire.BadFrame as exc:
            log.warning("dropped a bad frame from the broker: %s", exc)
            return
        self.reg.received(time.monotonic())
        try:
            self.on_message(msg)
        except Exception:  # one bad command must not kill the slave
            log.exception("handling %s failed", type(msg).__name__)

    def on_monitor(self) -> None:
        """Say Hello on a reconnect (or a first connect our Hello could not use)."""
        reconnected = False
        while self.monitor.poll(0):
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.ZMQError:
                break
            if event["event"] & HANDSHAKE_FAILED:
                self.on_refused(event["event"], time.monotonic())
                continue
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.refused.cleared(time.monotonic())
            if self.reg.connection_event(event["event"] == zmq.EVENT_DISCONNECTED):
                reconnected = True
        if reconnected:
            log.info("connected to the broker; saying hello")
            now = time.monotonic()
            self.reg.start_over(now)
            self.on_timers(now)

    def on_refused(self, event: int, now: float) -> None:
        """The broker refused our handshake: say why it may be, then retry in a while."""
        if not self.reg.handshake_failed(now):
            return
        if self.refused.holds(now) is None:
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            why = ("it does not list this slave's CURVE key (its public key must be "
                   f"{self.cfg.name}.key in the broker's curve.slave_keys; then SIGHUP the broker)")
        elif self.curve:
            why = "CURVE failed: is curve.broker_key the broker's public key, and does the broker use CURVE?"
        else:
            why = "the broker uses CURVE and this config has no [curve] section (see `ftpcluster keygen`)"
        log.error("the broker at %s refused this slave: %s; trying again every %.0f s",
                  self.cfg.broker_endpoint, why, REFUSED_RETRY_S)

    def on_result(self, msg: m.Message) -> None:
        """A worker's result from the Outbox."""
        if isinstance(msg, m.TransferDone):
            self.held_started.pop(msg.xfer_id, None)  # answered by the TransferDone
            self.transfers.finished(msg.xfer_id)
            self.unacked[msg.xfer_id] = msg
            log.debug("xfer %d done: %s", msg.xfer_id, msg)
        self.send(msg)

    def on_message(self, msg: m.BrokerToSlave) -> None:
        match msg:
            case m.Welcome(heartbeat_ms=hb, liveness=liveness):
                if self.reg.welcome(hb, liveness):
                    log.info("registered with the broker")
                    sdnotify.ready(f"slave {self.cfg.name} registered")
                self.resend_unacked()
            case m.Heartbeat():
                pass
            case m.Disconnect(reason=reason) if reason.startswith("superseded"):
                # Another process of this name is registered and newer: saying Hello again
                # would only fight it. Exit; the service manager's restart back-off decides.
                log.error("broker refused slave %s (%s): another process uses this name; exiting",
                          self.cfg.name, reason)
                self.exit_status = 1
                self.stopping = True
            case m.Disconnect(reason=reason) if reason.startswith("refused"):
                # Our key is listed under another name: no Hello of ours will ever pass.
                log.error("broker refused slave %s (%s): the broker lists this key under "
                          "another name (slave.name must be the key file's name); exiting",
                          self.cfg.name, reason)
                self.exit_status = 1
                self.stopping = True
            case m.Disconnect(reason=reason):
                log.info("broker says disconnect (%s); saying hello again", reason)
                now = time.monotonic()
                self.reg.start_over(now)
                self.on_timers(now)
            case m.Listen():
                self.on_listen(msg)
            case m.StartSend() | m.StartReceive():
                self.on_start(msg)
            case m.ClearPort(req_id=req_id, port=port):
                self.op(req_id, self.transfers.clear_port, port)
            case m.Abort(req_id=req_id, xfer_id=xfer_id):
                if self.transfers.abort(xfer_id):
                    log.info("xfer %d: aborted", xfer_id)
                if req_id:  # req_id 0 is a notification: no reply wanted
                    self.send(m.OpResult(req_id=req_id, ok=True))
            case m.DoneAck(xfer_id=xfer_id, more=more):
                self.unacked.pop(xfer_id, None)
                for acked in more:
                    self.unacked.pop(acked, None)
            case m.Delete(req_id=req_id, path=path):
                self.op(req_id, self.storage.delete, path)
            case m.Rename(req_id=req_id, src=src, dst=dst, replace=replace):
                if replace:
                    self.op(req_id, self.storage.rename, src, dst)
                else:
                    self.op(req_id, functools.partial(self.storage.rename, replace=False), src, dst)
            case m.MakeDir(req_id=req_id, path=path):
                self.op(req_id, self.storage.mkdir, path)
            case m.RemoveDir(req_id=req_id, path=path):
                self.op(req_id, self.storage.rmdir, path)
            case m.Checksum():
                self.on_checksum(msg)
            case m.InventoryRequest():
                self.on_inventory(msg)
            case _:
                assert_never(msg)

    def op(self, req_id: int, func: Callable[..., None], *args: str | int) -> None:
        try:
            func(*args)
        except OSError as exc:
            log.info("%s%r refused: %s", func.__name__, args, exc)
            self.error(req_id, exc)
            return
        if req_id:
            self.send(m.OpResult(req_id=req_id, ok=True))

    def on_listen(self, msg: m.Listen) -> None:
        if self.draining:
            self.error(msg.req_id, OSError(errno.ESHUTDOWN, "slave is stopping"))
            return
        try:
            port = self.transfers.listen(msg.xfer_id, msg.allowed_ip, time.monotonic())
        except OSError as exc:
            log.info("xfer %d: listen refused: %s", msg.xfer_id, exc)
            self.error(msg.req_id, exc)
            return
        self.send(m.Listening(req_id=msg.req_id, xfer_id=msg.xfer_id, port=port))

    def on_start(self, msg: m.StartSend | m.StartReceive) -> None:
        if self.draining:
            self.transfers.refused(msg)
            self.error(msg.req_id, OSError(errno.ESHUTDOWN, "slave is stopping"))
            return
        try:
            if isinstance(msg, m.StartSend):
                self.transfers.start_send(msg)
            else:
                self.transfers.start_receive(msg)
        except OSError as exc:
            log.info("xfer %d: %s %r refused: %s", msg.xfer_id, type(msg).__name__, msg.path, exc)
            self.error(msg.req_id, exc)
            return
        started = m.Started(req_id=msg.req_id, xfer_id=msg.xfer_id)
        if msg.lazy_started:
            self.held_started[msg.xfer_id] = (time.monotonic() + LAZY_STARTED_S, started)
        else:
            self.send(started)
        for result in self.outbox.drain():  # a small download may have ended already (inline)
            self.on_result(result)

    def on_checksum(self, msg: m.Checksum) -> None:
        try:
            real = self.storage.real(msg.path, allow_root=False)
        except OSError as exc:
            self.error(msg.req_id, exc)
            return
        self.jobs.submit(functools.partial(checksum_job, msg.req_id, str(real), max(msg.start, 0), msg.end))

    def on_inventory(self, msg: m.InventoryRequest) -> None:
        walk = None
        stored = self.scans.pop(msg.scan, None)
        if stored is not None:
            if stored[0] == msg.mode:
                walk = stored[1]
            else:  # the id of another scan (a restarted master): start afresh
                log.info("inventory scan %d: mode %s, was %s; restarted", msg.scan, msg.mode, stored[0])
        if walk is None:
            if msg.mode == "summary":
                # DirSummary items share the walk; they go out as the page's summaries.
                walk = cast("Iterator[m.InventoryEntry]", self.storage.summaries())
            elif msg.mode == "dirs":
                walk = self.storage.list_dirs(list(msg.dirs))
            else:
                walk = self.storage.inventory()
            while len(self.scans) >= MAX_OPEN_SCANS:
                old, _ = self.scans.popitem(last=False)
                log.warning("inventory scan %d dropped (too many open scans)", old)
        limit = max(1, min(msg.limit, MAX_PAGE_ENTRIES))
        entries: list[m.InventoryEntry] = []
        budget = MAX_PAGE_BYTES
        for entry in walk:
            if len(entries) >= limit or budget < len(entry.path) + 64:
                walk = itertools.chain([entry], walk)  # keep it for the next page
                self.scans[msg.scan] = (msg.mode, walk)
                break
            entries.append(entry)
            budget -= len(entry.path.encode()) + 64
        last = msg.scan not in self.scans
        if msg.mode == "summary":
            self.send(m.InventoryPage(req_id=msg.req_id, scan=msg.scan, entries=[], last=last,
                                      summaries=entries))  # type: ignore[arg-type]
            return
        self.send(m.InventoryPage(req_id=msg.req_id, scan=msg.scan, entries=entries, last=last))

    # ------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        log.info("shutting down: aborting %d transfers", len(self.transfers.transfers))
        self.transfers.shutdown(SHUTDOWN_WAIT_S)
        for result in self.outbox.drain():
            self.on_result(result)
        self.jobs.stop()
        self.send(m.Bye(reason="shutdown"))
        self.dealer.setsockopt(zmq.LINGER, BYE_LINGER_MS)  # let Bye leave before close
        self.dealer.disable_monitor()
        self.monitor.close()
        self.dealer.close()
        self.pub.close()
        self.ctx.term()
        self.outbox.close()


def run(config_path: str) -> int:
    """Entry point used by `ftpcluster slave --config FILE`; raises ConfigError."""
    config = cfgmod.load(config_path, cfgmod.SlaveConfig)
    keys = None
    if config.curve is not None:
        keys = client_keys(config.curve.secret_key, config.curve.broker_key, config_path)
    logmod.setup(f"slave:{config.slave.name}", config.log.level)
    try:
        service = SlaveService(config, keys)
    except StorageRootMissing as exc:
        raise cfgmod.ConfigError(f"{config_path}: key slave.root: {exc} (fix the path, or set "
                                 "create_root = true to create it)") from None
    return service.run()
