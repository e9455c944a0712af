"""RETR / STOR / APPE / STOU dispatched to slaves, and the proxy that stands in for
pyftpdlib's data channel while a slave moves the bytes.

Owns: which slave serves a transfer (plain functions over the registry), the reply for
every outcome, the Transfer object (one per dispatched command; it outlives its session
so that an upload's outcome is recorded even after the client left) and RemoteTransfer
(the `data_channel` stand-in that STAT, ABOR, QUIT and close() talk to). Data routes
(PORT, PRET+PASV, relay) are resolved by master.passive; byte copying by master.relay.
"""

from __future__ import annotations

import collections
import logging
import posixpath
import secrets
import sqlite3
import time
from typing import TYPE_CHECKING, assert_never

from common import messages as m
from master import choice, passive, replies, transfer_state as ts
from master.addresses import client_ip
from master.answers import RequestFailed, SlaveAnswer
from master.ftpfs import reserved_name
from master.recorder import record_now
from master.slaves import LentPort
from master.transfer_state import UPLOADS
from master.vfs import Entry, UploadRecord

if TYPE_CHECKING:
    from master.cluster import Cluster
    from master.relay import Relay
    from master.session import Session

log = logging.getLogger(__name__)



# ---------------------------------------------------------------- pure decisions

def check_upload_target(entry: Entry | None, parent: Entry | None, path: str) -> str:
    """Reply refusing an upload to `path`, or "" if it may go ahead."""
    if reserved_name(path):
        return replies.FILE_NAME_NOT_ALLOWED  # RFC 959 553
    if path == "/" or (entry is not None and entry.is_dir):
        return replies.IS_A_DIRECTORY
    if parent is None:
        return replies.NO_SUCH_FILE
    if not parent.is_dir:
        return replies.NOT_A_DIRECTORY
    return ""


def rest_refusal(rest: int, entry: Entry) -> str:
    """Reply refusing a REST offset beyond the end of `entry`, or "" if it is within it."""
    if rest > entry.size:
        # RFC 1123 4.1.3.4: 554 when the file cannot be repositioned as REST asked.
        return f"554 REST position ({rest}) > file size ({entry.size})."
    return ""


def unique_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


# ---------------------------------------------------------------- the data_channel stand-in

class RemoteTransfer:
    """What pyftpdlib's FTPHandler sees in `data_channel` while a slave (or the relay) moves
    the bytes: STAT reads the counters, ABOR and close() call close()."""

    socket = None
    file_obj = None

    def __init__(self, transfer: Transfer) -> None:
        self.transfer = transfer
        self.receive = transfer.kind in UPLOADS
        self.cmd = transfer.kind

    def transfer_in_progress(self) -> bool:
        return True

    def get_elapsed_time(self) -> float:
        return time.monotonic() - self.transfer.created

    @property
    def tot_bytes_sent(self) -> int:
        return 0 if self.receive else self.transfer.progress()

    @property
    def tot_bytes_received(self) -> int:
        return self.transfer.progress() if self.receive else 0

    def get_transmitted_bytes(self) -> int:
        return self.transfer.progress()

    def use_sendfile(self) -> bool:
        return False

    def close(self) -> None:
        self.transfer.abort_from_session()


# ---------------------------------------------------------------- one dispatched transfer

class Transfer:
    """The shell around one TransferMachine: turns the link's replies, the relay's end, the
    client's abort and timers into events, and carries out the machine's actions on the
    session, the broker link, the registry, the relay and the VFS. Outlives its session so
    that an upload's outcome is recorded even after the client left."""

    old_holders: frozenset[str] | None = None
    """A plain STOR over an existing file: the slaves holding the old content. A failed
    overwrite records nothing (the old file stays, DESIGN-NOTES)."""
    lent: LentPort | None = None
    """The slave's pooled listener the client connects to (PRET+PASV), until given back."""
    allowed_ip = ""
    """With `lent`: the only address the slave accepts the data connection from."""
    tls = False
    """PROT P with the client connected to the slave (or the slave to the client): the slave
    is the TLS server. A relayed PROT P transfer is TLS on the master (Relay.client_tls)."""

    def __init__(self, session: Session, kind: str, path: str, slave: str,
                 xfer_id: int, offset: int = 0, relay: Relay | None = None,
                 ascii: bool = False) -> None:
        self.session: Session | None = session
        self.cluster: Cluster = session.cluster
        self.kind = kind
        self.path = path
        self.slave = slave
        self.xfer_id = xfer_id
        self.offset = offset
        self.relay = relay
        self.ascii = ascii
        """TYPE A when the command came: the slave converts line endings (the relay does not)."""
        self.owner = session.username or "ftpcluster"
        self.created = time.monotonic()
        self.machine = ts.TransferMachine(kind, path, relayed=relay is not None)
        self.reserve_bytes = 0
        """Upload size announced by ALLO, reserved on the slave for placement."""
        self.connect_to: tuple[str, int] | None = None
        """Active mode: the client's PORT/EPRT address the slave connects to."""
        self._start_req = 0
        """The start request's req_id while its Started may still come (CancelStart)."""
        self._reported = 0
        """Bytes the slave last reported moving (TransferProgress)."""
        self._events: collections.deque[ts.Event] = collections.deque()
        self._feeding = False

    @property
    def is_upload(self) -> bool:
        return self.machine.is_upload

    def progress(self) -> int:
        """Bytes moved so far: the relay's count, else the slave's TransferProgress (about
        once a second), the final count once TransferDone arrived."""
        if self.relay is not None:
            return self.relay.bytes
        if self.machine.done is not None:
            return self.machine.done.bytes
        return self._reported

    # -- inputs: what the link, the relay, the session and the timers say
    def start(self, connect_to: tuple[str, int] | None) -> None:
        cluster = self.cluster
        self.connect_to = connect_to
        cluster.registry.transfer_started(self.slave, self.reserve_bytes)
        cluster.link.watch(self.xfer_id, self.slave, self)
        assert self.session is not None
        self.session.attach_transfer(RemoteTransfer(self))
        if self.relay is not None:
            listen = m.Listen(req_id=0, xfer_id=self.xfer_id, allowed_ip=self.relay.source_ip)
            cluster.link.request(self.slave, listen, self._on_listen_reply)
        self._carry_out(self.machine.start())

    def on_progress(self, moved: int) -> None:
        """The link: TransferProgress from this transfer's slave."""
        self._reported = max(self._reported, moved)

    def on_done(self, msg: m.TransferDone) -> bool:
        """The slave's outcome. False while an upload could not be recorded (the metadata
        store failed): the link sends no DoneAck, so the slave re-sends it and the record is
        tried again (the client has had its 451 already)."""
        relay = self.relay
        self.feed(ts.Done(msg, relay_copying=relay is not None and relay.running))
        return not (self.machine.unrecorded or self.machine.state is ts.State.RECORDING)

    def on_lost(self, reason: str) -> None:
        self.feed(ts.Lost(reason))

    def abort_from_session(self) -> None:
        """ABOR, a new PORT/PASV, or the session closing: the session replies itself."""
        self.feed(ts.ClientAbort())

    def _on_listen_reply(self, reply: SlaveAnswer) -> None:
        self.feed(ts.Listened(reply.port) if isinstance(reply, m.Listening)
                  else _start_failure(reply))

    def _on_start_reply(self, reply: SlaveAnswer) -> None:
        self._start_req = 0
        self.feed(ts.Started() if isinstance(reply, m.Started) else _start_failure(reply))

    def feed(self, event: ts.Event) -> None:
        """Hand one event to the machine and carry out its actions. An event raised while
        actions run (the relay ending at once, a recorded upload) waits its turn."""
        self._events.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._events:
                event = self._events.popleft()
                try:
                    actions = self.machine.handle(event)
                except ts.ProtocolError as exc:
                    log.warning("transfer %s (%s %s on %s): protocol error: %s", self.xfer_id,
                                self.kind, self.path, self.slave, exc)
                    continue
                self._carry_out(actions)
        finally:
            self._feeding = False

    # -- outputs
    def _carry_out(self, actions: list[ts.Action]) -> None:
        link = self.cluster.link
        for action in actions:
            match action:
                case ts.SendStart():
                    self._send_start()
                case ts.SendAbort():
                    link.notify(self.slave, m.Abort(req_id=0, xfer_id=self.xfer_id))
                case ts.CancelStart():
                    if self._start_req:
                        link.cancel(self._start_req)
                        self._start_req = 0
                case ts.Announce(text=text):
                    session = self._live_session()
                    if session is not None:
                        session.respond(text)
                        session.end_deferred()
                case ts.Reply():
                    self._reply(action)
                case ts.Detach():
                    session, self.session = self.session, None
                    if session is not None:
                        session.detach_transfer()
                case ts.Record(msg=msg):
                    record = self._upload_record(msg)
                    recorder = self.cluster.recorder
                    if record is not None and recorder is not None:
                        recorder.add(record, self._on_recorded)  # answered once committed
                    else:
                        self.feed(self._record_upload(msg))  # at once: no recorder, or no record
                case ts.Release(soil=soil):
                    self.cluster.registry.transfer_finished(self.slave)
                    lent, self.lent = self.lent, None
                    if lent is not None:
                        passive.give_back_port(self.cluster, lent, clear=soil)
                case ts.RelayConnect(port=port):
                    assert self.relay is not None
                    info = self.cluster.registry.slaves.get(self.slave)
                    host = info.data_host if info is not None else "127.0.0.1"
                    self.relay.set_slave_address((host, port))
                case ts.RelayStart():
                    assert self.relay is not None
                    self.relay.slave_started(lambda ok, error: self.feed(ts.RelayEnded(ok, error)))
                case ts.RelayAbort():
                    if self.relay is not None:
                        self.relay.abort()
                case ts.WaitLate(seconds=seconds):
                    self.cluster.ioloop.call_later(seconds, self.feed, ts.GraceOver())
                case ts.Unwatch():
                    link.unwatch(self.xfer_id)
                case _:
                    assert_never(action)

    def _send_start(self) -> None:
        cmd: m.SlaveCommand
        port = self.lent.port if self.lent is not None else 0
        lazy = self.relay is None  # the relay connects to the slave only after Started
        if self.is_upload:
            cmd = m.StartReceive(req_id=0, xfer_id=self.xfer_id, path=self.path, offset=self.offset,
                                 append=self.kind == "APPE", connect_to=self.connect_to,
                                 pool_port=port, allowed_ip=self.allowed_ip, lazy_started=lazy,
                                 ascii=self.ascii, tls=self.tls)
        else:
            cmd = m.StartSend(req_id=0, xfer_id=self.xfer_id, path=self.path, offset=self.offset,
                              connect_to=self.connect_to, pool_port=port,
                              allowed_ip=self.allowed_ip, lazy_started=lazy, ascii=self.ascii,
                              tls=self.tls)
        self._start_req = self.cluster.link.request(self.slave, cmd, self._on_start_reply)

    def _live_session(self) -> Session | None:
        session = self.session
        if session is None or session._closed or session.current_transfer() is not self:
            return None
        return session

    def _reply(self, reply: ts.Reply) -> None:
        session = self._live_session()
        self.session = None
        if session is None:
            return
        if reply.moved is not None:
            session.log_transfer(cmd=self.kind, filename=self.path, receive=self.is_upload,
                                 completed=reply.completed,
                                 elapsed=round(time.monotonic() - self.created, 3),
                                 bytes=reply.moved)
            if reply.completed:
                (session.on_file_received if self.is_upload else session.on_file_sent)(self.path)
        session.respond(reply.text)
        session.log_cmd(self.kind, self.path, int(reply.text[:3]), reply.text[4:])
        session.detach_transfer()

    def _upload_record(self, msg: m.TransferDone) -> UploadRecord | None:
        """What to write in the tree for this outcome, or None when it changes no entry (a
        failed upload that left the old file or nothing, or a failed overwrite)."""
        if not msg.ok and (msg.bytes == 0 or msg.kept_old or self.old_holders is not None):
            return None
        mtime = msg.mtime_ms / 1000.0 if msg.mtime_ms else time.time()
        return UploadRecord(self.path, self.slave, msg.size, msg.crc32, mtime, self.owner,
                            "ftpcluster")

    def _on_recorded(self, recorded: ts.Recorded) -> None:
        """The recorder committed (or could not commit) this upload's outcome."""
        if self.machine.unrecorded and recorded.result == "ok":
            log.info("upload of %s on %s recorded on a re-sent outcome", self.path, self.slave)
        self.feed(recorded)
        if recorded.result != "retry":
            self.cluster.link.done_recorded(self.slave, self.xfer_id)

    def _record_upload(self, msg: m.TransferDone) -> ts.Recorded:
        """Record the upload's outcome now (no recorder) and queue the slave commands it
        implies."""
        link = self.cluster.link
        record = self._upload_record(msg)
        if record is not None:
            recorded = record_now(self.cluster.vfs, record, link.send_op, link.notify)
            if recorded.result == "ok" and self.machine.unrecorded:
                log.info("upload of %s on %s recorded on a re-sent outcome", self.path, self.slave)
            return recorded
        failed_overwrite = msg.bytes > 0 and not msg.kept_old and self.old_holders is not None
        if failed_overwrite and self.slave not in (self.old_holders or ()):
            # A failed overwrite on a slave without the old file: the old entry stays, and the
            # partial file that slave kept under the name is not its content.
            vfs = self.cluster.vfs
            try:
                with vfs.transaction():
                    ops = vfs.enqueue([(self.slave, m.Delete(req_id=0, path=self.path))])
            except (OSError, sqlite3.Error) as exc:
                log.warning("partial overwrite of %s on %s not queued for deletion (%s)",
                            self.path, self.slave, exc)
                ops = []
                link.notify(self.slave, m.Delete(req_id=0, path=self.path))
            for op in ops:
                link.send_op(op)
        return ts.Recorded("ok")  # otherwise the slave left the previous file (if any) untouched


def _start_failure(reply: SlaveAnswer) -> ts.Event:
    """The event for a Listen or start request that did not succeed."""
    if isinstance(reply, RequestFailed):
        return ts.Unanswered(reply.reason)
    if isinstance(reply, m.OpResult):
        return ts.Refused(reply.error, reply.errno)
    return ts.Unexpected(type(reply).__name__)


# ---------------------------------------------------------------- the commands

def retr(h: Session, path: str) -> None:
    rest = h.take_restart_position()
    entry = h.fs.lookup(path)
    if entry is None or entry.is_dir:
        h.respond(replies.not_a_file(entry))
        return
    if refusal := rest_refusal(rest, entry):
        h.respond(refusal)
        return
    _dispatch(h, "RETR", path, rest, entry)


def stor(h: Session, path: str, kind: str = "STOR") -> None:
    rest = h.take_restart_position()
    if kind == "APPE" and rest:
        h.respond(replies.APPE_AFTER_REST)
        return
    entry = h.fs.lookup(path)
    parent = h.fs.lookup(posixpath.dirname(path) or "/")
    refusal = check_upload_target(entry, parent, path)
    if not refusal and rest:
        refusal = replies.NO_SUCH_FILE if entry is None else rest_refusal(rest, entry)
    if refusal:
        h.respond(refusal)
        return
    _dispatch(h, kind, path, rest, entry)


def stou(h: Session, arg: str) -> None:
    if h._restart_position:
        h.respond(replies.STOU_AFTER_REST)
        return
    if arg:
        base = h.fs.ftp2fs(arg)
        directory, prefix = posixpath.dirname(base), posixpath.basename(base) + "."
    else:
        directory, prefix = h.fs.cwd, "ftpd."
    for _ in range(10):
        path = posixpath.join(directory, unique_name(prefix))
        if h.fs.lookup(path) is None:
            break
    else:
        h.respond(replies.NO_UNIQUE_NAME)
        return
    if not h.authorizer.has_perm(h.username, "w", path):
        h.respond(replies.NO_PERMISSION)
        return
    stor(h, path, "STOU")


def _dispatch(h: Session, kind: str, path: str, offset: int, entry: Entry | None) -> None:
    from master.relay import Relay

    route = passive.take_route(h)
    if isinstance(route, str):
        h.respond(route)
        return
    if route.kind == "slave":
        assert route.slave is not None
        why = choice.route_refusal(h.cluster, route, kind, path, offset, entry)
        slave: str | None = None if why else route.slave
    else:
        slave, why = choice.plan(h.cluster, kind, path, offset, entry, h.allo_size)
    if slave is None:
        passive.release_route(h, route)
        h.respond(why)
        return
    relay = None
    if route.kind == "relay":
        if h.cluster.config.passive_without_pret == "refuse":
            passive.release_route(h, route)
            h.respond(replies.relay_refused(kind))
            return
        if h.cluster.relayed.open >= h.cluster.config.max_relays:
            passive.release_route(h, route)
            h.respond(replies.too_many_relays(kind))
            return
        info = h.cluster.registry.slaves.get(slave)
        relay = Relay.toward(info.data_host if info is not None else "127.0.0.1", h.cluster.waker,
                             h.cluster.relayed, kind in UPLOADS, float(h.cluster.data_timeout),
                             client_tls=h.data_tls_context(kind in UPLOADS))
        passive.attach_relay(h, route, relay)
    xfer_id = route.xfer_id if route.xfer_id is not None else h.cluster.link.new_xfer_id()
    transfer = Transfer(h, kind, path, slave, xfer_id, offset, relay, ascii=h.current_type() == "a")
    transfer.tls = relay is None and h.data_tls_context(kind in UPLOADS) is not None
    if route.lent is not None:
        transfer.lent, transfer.allowed_ip = route.lent, client_ip(str(h.remote_ip))
    if kind == "STOR" and offset == 0 and entry is not None and not entry.is_dir:
        transfer.old_holders = frozenset(entry.slaves)
    if kind in UPLOADS:
        # Reserved on the slave until its next stats show the space used (placement).
        transfer.reserve_bytes, h.allo_size = h.allo_size, 0
    h.begin_deferred()
    transfer.start(route.addr if route.kind == "port" else None)
