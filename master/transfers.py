"""RETR / STOR / APPE / STOU dispatched to slaves, and the proxy that stands in for
pyftpdlib's data channel while a slave moves the bytes.

Owns: which slave serves a transfer (plain functions over the registry), the reply for
every outcome, the Transfer object (one per dispatched command; it outlives its session
so that an upload's outcome is recorded even after the client left) and RemoteTransfer
(the `data_channel` stand-in that STAT, ABOR, QUIT and close() talk to). Data routes
(PORT, PRET+PASV, relay) are resolved by master.passive; byte copying by master.relay.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import logging
import posixpath
import secrets
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from common import messages as m
from master import passive
from master.cluster import LentPort
from master.fs import reserved_name
from master.link import RequestFailed
from master.placement import Selection
from master.vfs import Entry

if TYPE_CHECKING:
    from master.handler import Cluster, ClusterFTPHandler
    from master.relay import Relay

log = logging.getLogger(__name__)

UPLOADS = frozenset({"STOR", "APPE", "STOU"})
METADATA_FAILED = "451 Requested action aborted: local error: metadata store failed."
LATE_DONE_GRACE_S = 120.0
"""How long an upload whose slave became unreachable still waits for its TransferDone
(the slave re-sends it once the broker is back), so the bytes are recorded."""

_DATA_CONN_ERRNOS = frozenset({errno_mod.ECONNREFUSED, errno_mod.ETIMEDOUT, errno_mod.ECONNRESET,
                               errno_mod.EPIPE, errno_mod.EHOSTUNREACH, errno_mod.ENETUNREACH,
                               errno_mod.ECONNABORTED})


# ---------------------------------------------------------------- pure decisions

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
        return None, _refusal(selection, "450 file unavailable: its slaves are too busy, try again later.",
                              "450 file unavailable: its slave is offline.")
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
            unavailable = "450 file unavailable: its slave is offline."
        else:
            unavailable = "450 no storage slave is online, try again later."
        return None, _refusal(selection, "452 no storage slave has room for this upload right now.",
                              unavailable)
    return selection.chosen, ""


def check_upload_target(entry: Entry | None, parent: Entry | None, path: str) -> str:
    """Reply refusing an upload to `path`, or "" if it may go ahead."""
    if reserved_name(path):
        return "553 File name not allowed."  # RFC 959 553
    if path == "/" or (entry is not None and entry.is_dir):
        return "550 Is a directory."
    if parent is None or not parent.is_dir:
        return "550 No such file or directory."
    return ""


def rest_refusal(rest: int, entry: Entry) -> str:
    """Reply refusing a REST offset beyond the end of `entry`, or "" if it is within it."""
    if rest > entry.size:
        # RFC 1123 4.1.3.4: 554 when the file cannot be repositioned as REST asked.
        return f"554 REST position ({rest}) > file size ({entry.size})."
    return ""


TYPE_A_REFUSALS = {
    # RFC 3659 4.2: a size not available in the current TYPE gets 550. Counting the bytes a
    # TYPE A transfer would send means reading the whole file on its slave.
    "SIZE": "550 SIZE not allowed in ASCII mode: the converted size is not known without "
            "reading the whole file; use TYPE I.",
    # RFC 3659 5: a REST marker counts the octets of the transfer in the current TYPE; in TYPE A
    # that offset has no fixed place in the stored file. 501 as in pyftpdlib (RFC 959 REST).
    "REST": "501 Resuming transfers not allowed in ASCII mode: an offset in the converted "
            "stream is no offset in the stored file; use TYPE I.",
    # XCRC (no RFC) covers the stored bytes, which differ from what TYPE A transfers: 550 as SIZE.
    "XCRC": "550 XCRC not allowed in ASCII mode: the CRC covers the stored bytes, not the "
            "converted ones; use TYPE I.",
}


def type_a_refusal(command: str, current_type: str) -> str:
    """The reply refusing SIZE, REST or XCRC in TYPE A (pyftpdlib's "a"), or "" to go ahead."""
    return TYPE_A_REFUSALS.get(command, "") if current_type == "a" else ""


def failure_reply(error: str, errno: int, bytes_moved: int, aborted: bool) -> str:
    """The final reply for a transfer that did not complete."""
    text = f": {error}" if error else ""
    if aborted:
        return f"426 Transfer aborted; {bytes_moved} bytes transmitted."
    if errno in (errno_mod.ENOSPC, errno_mod.EDQUOT):
        return "452 Insufficient storage space on the slave."
    if errno in _DATA_CONN_ERRNOS:
        if bytes_moved == 0:
            return f"425 Can't open data connection{text}."
        return f"426 Connection closed; transfer aborted{text}."
    if errno == errno_mod.ENOENT:
        return "550 No such file or directory."
    return f"451 Requested action aborted: local error in processing{text}."


def done_reply(msg: m.TransferDone) -> str:
    crc = f", CRC32 {msg.crc32:08X}" if msg.crc32 is not None else ""
    return f"226 Transfer complete: {msg.bytes} bytes{crc}."


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

class State(enum.Enum):
    PREPARING = "preparing"
    """Listen (relay) or StartSend/StartReceive sent, no Started yet."""
    STARTED = "started"
    DONE = "done"


class Transfer:
    """RETR/STOR/APPE/STOU on one slave. Watches its xfer_id on the link; replies to its
    session while attached; records uploads whether or not the session is still there."""

    old_holders: frozenset[str] | None = None
    """A plain STOR over an existing file: the slaves holding the old content. A failed
    overwrite records nothing (the old file stays, DESIGN-NOTES)."""
    lent: LentPort | None = None
    """The slave's pooled listener the client connects to (PRET+PASV), until given back."""
    allowed_ip = ""
    """With `lent`: the only address the slave accepts the data connection from."""

    def __init__(self, session: ClusterFTPHandler, kind: str, path: str, slave: str,
                 xfer_id: int, offset: int = 0, relay: Relay | None = None,
                 ascii: bool = False) -> None:
        self.session: ClusterFTPHandler | None = session
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
        self.state = State.PREPARING
        self._counted = False
        self._done: m.TransferDone | None = None
        self.reserve_bytes = 0
        """Upload size announced by ALLO, reserved on the slave for placement."""
        self._relay_result: tuple[bool, str] | None = None
        self._replied = False
        self._announced = False
        self._start_req = 0
        """The start request's req_id while its Started may still come (see on_done)."""
        self._reported = 0
        """Bytes the slave last reported moving (TransferProgress)."""
        self._unrecorded = False
        """The upload's outcome is not recorded yet: the metadata store failed."""

    @property
    def is_upload(self) -> bool:
        return self.kind in UPLOADS

    def progress(self) -> int:
        """Bytes moved so far: the relay's count, else the slave's TransferProgress (about
        once a second), the final count once TransferDone arrived."""
        if self.relay is not None:
            return self.relay.bytes
        if self._done is not None:
            return self._done.bytes
        return self._reported

    def on_progress(self, moved: int) -> None:
        """The link: TransferProgress from this transfer's slave."""
        self._reported = max(self._reported, moved)

    # -- start
    def start(self, connect_to: tuple[str, int] | None) -> None:
        cluster = self.cluster
        cluster.registry.transfer_started(self.slave, self.reserve_bytes)
        self._counted = True
        cluster.link.watch(self.xfer_id, self.slave, self)
        assert self.session is not None
        self.session.attach_transfer(RemoteTransfer(self))
        if self.relay is not None:
            listen = m.Listen(req_id=0, xfer_id=self.xfer_id, allowed_ip=self.relay.source_ip)
            cluster.link.request(self.slave, listen, self._on_listening)
        else:
            self._send_start(connect_to)
            # 150 at once, not on Started: waiting would add a master-slave round trip to
            # every transfer (an upload's client sends nothing before it). A slave that
            # then refuses gets its 4xx/5xx after the 150, as RFC 959 allows.
            self._announce()

    def _on_listening(self, reply: Any) -> None:
        if self.state is not State.PREPARING:
            return
        if not isinstance(reply, m.Listening):
            self._fail_before_start(reply)
            return
        assert self.relay is not None
        info = self.cluster.registry.slaves.get(self.slave)
        host = info.data_host if info is not None else "127.0.0.1"
        self.relay.set_slave_address((host, reply.port))
        if self.session is None:  # aborted while the listener was being opened
            self.cluster.link.notify(self.slave, m.Abort(req_id=0, xfer_id=self.xfer_id))
            self._finish_count()
            self.cluster.link.unwatch(self.xfer_id)
            self.state = State.DONE
            return
        self._send_start(None)

    def _send_start(self, connect_to: tuple[str, int] | None) -> None:
        cmd: m.SlaveCommand
        port = self.lent.port if self.lent is not None else 0
        lazy = self.relay is None  # the relay connects to the slave only after Started
        if self.is_upload:
            cmd = m.StartReceive(req_id=0, xfer_id=self.xfer_id, path=self.path, offset=self.offset,
                                 append=self.kind == "APPE", connect_to=connect_to,
                                 pool_port=port, allowed_ip=self.allowed_ip, lazy_started=lazy,
                                 ascii=self.ascii)
        else:
            cmd = m.StartSend(req_id=0, xfer_id=self.xfer_id, path=self.path, offset=self.offset,
                              connect_to=connect_to, pool_port=port, allowed_ip=self.allowed_ip,
                              lazy_started=lazy, ascii=self.ascii)
        self._start_req = self.cluster.link.request(self.slave, cmd, self._on_started)

    def _on_started(self, reply: Any) -> None:
        self._start_req = 0
        if self.state is not State.PREPARING:
            return
        if not isinstance(reply, m.Started):
            self._fail_before_start(reply)
            return
        self.state = State.STARTED
        self._announce()
        if self.relay is not None:
            self.relay.slave_started(self._on_relay_finished)

    def _announce(self) -> None:
        """The 150 preliminary reply (once), after which the session takes commands again."""
        session = self._live_session()
        if session is None or self._announced:
            return
        self._announced = True
        if self.kind == "STOU":
            session.respond(f"150 FILE: {posixpath.basename(self.path)}")
        else:
            session.respond("150 File status okay. About to open data connection.")
        session.end_deferred()

    def _fail_before_start(self, reply: Any) -> None:
        if isinstance(reply, RequestFailed) and reply.reason == "timeout":
            # The slave may still act on the command: make sure it lets go.
            self.cluster.link.notify(self.slave, m.Abort(req_id=0, xfer_id=self.xfer_id))
        if isinstance(reply, RequestFailed) and self._announced:
            # The 150 is out and the slave may be running it (a lazy Started was still held
            # back): end it as a lost transfer, which still records an upload's late outcome.
            self.on_lost(f"storage slave unavailable ({reply.reason})")
            return
        self.state = State.DONE
        self.cluster.link.unwatch(self.xfer_id)
        self._finish_count()
        self._give_back_port(clear=True)  # a refusal may leave the port busy (EBUSY)
        if isinstance(reply, RequestFailed):
            text = f"451 Requested action aborted: storage slave unavailable ({reply.reason})."
        elif isinstance(reply, m.OpResult):
            text = failure_reply(reply.error, reply.errno, 0, aborted=False)
        else:
            text = f"451 Requested action aborted: unexpected {type(reply).__name__} from slave."
        if self.relay is not None:
            self.relay.abort()
        self._reply(text)

    # -- outcome
    def on_done(self, msg: m.TransferDone) -> bool:
        """The slave's outcome. False while an upload could not be recorded (the metadata
        store failed): the link sends no DoneAck, so the slave re-sends it and the record is
        tried again (the client has had its 451 already)."""
        if self._start_req:
            # A lazy_started transfer that ended quickly gets no Started: this answers it.
            self.cluster.link.cancel(self._start_req)
            self._start_req = 0
        if self._done is not None:
            if self._unrecorded and self.is_upload:
                self._unrecorded = not self._record_upload(msg)
                if not self._unrecorded:
                    log.info("upload of %s on %s recorded on a re-sent outcome", self.path, self.slave)
                return not self._unrecorded
            return True
        self._done = msg
        self._finish_count()
        self._give_back_port(clear=False)  # the slave empties the port's queue before TransferDone
        if self.is_upload:
            self._unrecorded = not self._record_upload(msg)
            if self._unrecorded:  # stop waiting for re-sends after a while (then acked unknown)
                self.cluster.ioloop.call_later(LATE_DONE_GRACE_S, self.cluster.link.unwatch,
                                               self.xfer_id)
        if self.state is State.DONE:  # lost earlier: the late outcome was only worth recording
            return not self._unrecorded
        self.state = State.DONE
        if self.relay is not None and self.relay.running and self.session is not None:
            return not self._unrecorded  # the client has not seen every byte yet: reply when the relay ends
        if self.relay is not None and not self.relay.running:
            self.relay.abort()  # never started (or over): frees its max_relays slot
        self._reply_outcome()
        return not self._unrecorded

    def _on_relay_finished(self, ok: bool, error: str) -> None:
        self._relay_result = (ok, error)
        if not ok and self._done is None:
            # The client side failed first: stop the slave; its TransferDone will follow.
            self.cluster.link.notify(self.slave, m.Abort(req_id=0, xfer_id=self.xfer_id))
        if self._done is not None:
            self._reply_outcome()

    def _reply_outcome(self) -> None:
        msg = self._done
        assert msg is not None
        relay_ok, relay_error = self._relay_result or (True, "")
        if self._unrecorded:
            text = METADATA_FAILED
        elif msg.ok and relay_ok:
            text = done_reply(msg)
        elif msg.ok:
            text = f"426 Connection closed; transfer aborted: {relay_error}."
        else:
            text = failure_reply(msg.error, msg.errno, msg.bytes, msg.aborted)
        session = self._live_session()
        if session is not None:
            session.log_transfer(cmd=self.kind, filename=self.path, receive=self.is_upload,
                                 completed=msg.ok, elapsed=round(time.monotonic() - self.created, 3),
                                 bytes=msg.bytes)
            if msg.ok and relay_ok:
                (session.on_file_received if self.is_upload else session.on_file_sent)(self.path)
        self._reply(text)

    def on_lost(self, reason: str) -> None:
        if self.state is State.DONE:
            return
        self.state = State.DONE
        self._finish_count()
        self._give_back_port(clear=True)
        if self.relay is not None:
            self.relay.abort()
        if self.is_upload:
            # Keep listening a while: a TransferDone re-sent after a broker restart is recorded.
            self.cluster.ioloop.call_later(LATE_DONE_GRACE_S, self.cluster.link.unwatch, self.xfer_id)
        else:
            self.cluster.link.unwatch(self.xfer_id)
        self._reply(f"426 Connection closed; transfer aborted: {reason}.")

    def abort_from_session(self) -> None:
        """ABOR, a new PORT/PASV, or the session closing: the session replies itself."""
        session, self.session = self.session, None
        if self.state is not State.DONE:
            self.cluster.link.notify(self.slave, m.Abort(req_id=0, xfer_id=self.xfer_id))
            if self.relay is not None:
                self.relay.abort()
        if session is not None:
            session.detach_transfer()

    # -- helpers
    def _live_session(self) -> ClusterFTPHandler | None:
        session = self.session
        if session is None or session._closed or session.current_transfer() is not self:
            return None
        return session

    def _reply(self, text: str) -> None:
        session = self._live_session()
        self.session = None
        if session is None or self._replied:
            return
        self._replied = True
        session.respond(text)
        session.log_cmd(self.kind, self.path, int(text[:3]), text[4:])
        session.detach_transfer()

    def _give_back_port(self, clear: bool) -> None:
        lent, self.lent = self.lent, None
        if lent is not None:
            passive.give_back_port(self.cluster, lent, clear)

    def _finish_count(self) -> None:
        if self._counted:
            self._counted = False
            self.cluster.registry.transfer_finished(self.slave)

    def _record_upload(self, msg: m.TransferDone) -> bool:
        """Record the upload's outcome; False if the metadata store failed (retry later)."""
        vfs = self.cluster.vfs
        if not msg.ok and (msg.bytes == 0 or msg.kept_old):
            return True  # the slave left the previous file (if any) untouched
        if not msg.ok and self.old_holders is not None:
            # A failed overwrite on a slave without the old file: the old entry stays, and the
            # partial file that slave kept under the name is not its content.
            if self.slave not in self.old_holders:
                try:
                    with vfs.transaction():
                        ops = vfs.enqueue([(self.slave, m.Delete(req_id=0, path=self.path))])
                except (OSError, sqlite3.Error) as exc:
                    log.warning("partial overwrite of %s on %s not queued for deletion (%s)",
                                self.path, self.slave, exc)
                    ops = []
                    self.cluster.link.notify(self.slave, m.Delete(req_id=0, path=self.path))
                for op in ops:
                    self.cluster.link.send_op(op)
            return True
        mtime = msg.mtime_ms / 1000.0 if msg.mtime_ms else time.time()
        try:
            with vfs.transaction():  # the new record and the stale copies' Deletes, at once
                _entry, stale = vfs.record_upload(self.path, self.slave, msg.size, msg.crc32, mtime,
                                                  self.owner, "ftpcluster")
                stale_ops = vfs.enqueue((other, m.Delete(req_id=0, path=self.path))
                                        for other in sorted(stale))
        except OSError as exc:
            log.warning("upload of %s on %s not recorded (%s): deleting it", self.path, self.slave, exc)
            self.cluster.link.notify(self.slave, m.Delete(req_id=0, path=self.path))
            if msg.ok:
                self._done = m.TransferDone(xfer_id=msg.xfer_id, ok=False, bytes=msg.bytes, size=msg.size,
                                            error=exc.strerror or "cannot record", errno=0)
            return True
        except sqlite3.Error as exc:
            # Transient (disk full, I/O error, locked): the file stays on the slave, which
            # re-sends its TransferDone (no DoneAck) so the record is tried again.
            log.error("upload of %s on %s not recorded: metadata store failed (%s)",
                      self.path, self.slave, exc)
            return False
        for op in stale_ops:
            self.cluster.link.send_op(op)
        return True


# ---------------------------------------------------------------- the commands

def plan(h: ClusterFTPHandler, kind: str, path: str, offset: int,
         entry: Entry | None) -> tuple[str | None, str]:
    """Slave for `kind` on `path` (at PRET time or when the command arrives), or the reply.
    `entry` is what the metadata holds at `path` (the caller has looked it up)."""
    now = h.cluster.clock()
    if kind == "RETR":
        if entry is None or entry.is_dir:
            return None, "550 No such file or directory."
        return pick_download(h.cluster, entry, now)
    if kind == "STOU":
        entry = None
    must_hold = entry is not None and (offset > 0 or kind == "APPE")
    return pick_upload(h.cluster, path, entry, must_hold, now, size_hint=h.allo_size)


def retr(h: ClusterFTPHandler, path: str) -> None:
    rest = h.take_restart_position()
    entry = h.fs.lookup(path)
    if entry is None or entry.is_dir:
        h.respond("550 No such file or directory.")
        return
    if refusal := rest_refusal(rest, entry):
        h.respond(refusal)
        return
    _dispatch(h, "RETR", path, rest, entry)


def stor(h: ClusterFTPHandler, path: str, kind: str = "STOR") -> None:
    rest = h.take_restart_position()
    if kind == "APPE" and rest:
        h.respond("450 Can't APPE while REST request is pending.")
        return
    entry = h.fs.lookup(path)
    parent = h.fs.lookup(posixpath.dirname(path) or "/")
    refusal = check_upload_target(entry, parent, path)
    if not refusal and rest:
        refusal = "550 No such file or directory." if entry is None else rest_refusal(rest, entry)
    if refusal:
        h.respond(refusal)
        return
    _dispatch(h, kind, path, rest, entry)


def stou(h: ClusterFTPHandler, arg: str) -> None:
    if h._restart_position:
        h.respond("450 Can't STOU while REST request is pending.")
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
        h.respond("450 No usable unique file name found.")
        return
    if not h.authorizer.has_perm(h.username, "w", path):
        h.respond("550 Not enough privileges.")
        return
    stor(h, path, "STOU")


def _dispatch(h: ClusterFTPHandler, kind: str, path: str, offset: int, entry: Entry | None) -> None:
    from master.relay import Relay

    route = passive.take_route(h)
    if isinstance(route, str):
        h.respond(route)
        return
    if route.kind == "slave":
        assert route.slave is not None
        slave: str | None = route.slave
        why = ""
        must_hold = kind == "RETR" or offset > 0 or (kind == "APPE" and entry is not None)
        if not h.cluster.registry.is_online(route.slave):
            slave, why = None, "425 Can't open data connection: its slave went offline."
        elif must_hold and (entry is None or route.slave not in entry.slaves):
            slave, why = None, ("425 Can't open data connection: the PRET'd slave does not hold "
                                "this file; send PRET with this command and path first.")
        elif route.lent is not None and not h.cluster.registry.is_current(route.lent):
            slave, why = None, "425 Can't open data connection: its slave restarted; send PASV again."
        elif rule := h.cluster.placement.rule_exclusion(
                "upload" if kind in UPLOADS else "download", path, route.slave):
            # PRET placed the listener for another path: the path rules still apply to this one.
            slave, why = None, (f"425 Can't open data connection: the PRET'd slave may not serve "
                                f"this path ({rule}); send PRET with this command and path first.")
    else:
        slave, why = plan(h, kind, path, offset, entry)
    if slave is None:
        passive.release_route(h, route)
        h.respond(why)
        return
    relay = None
    if route.kind == "relay":
        if h.cluster.config.passive_without_pret == "refuse":
            passive.release_route(h, route)
            h.respond("425 Passive mode without PRET is not supported here: send PRET "
                      f"{kind} <path> before PASV/EPSV, or use PORT/EPRT.")
            return
        if h.cluster.relayed.open >= h.cluster.config.max_relays:
            passive.release_route(h, route)
            h.respond("425 Can't open data connection: too many relayed transfers; use PRET "
                      f"{kind} <path> before PASV/EPSV, or PORT/EPRT.")
            return
        relay = Relay.for_session(h, slave, upload=kind in UPLOADS)
    xfer_id = route.xfer_id if route.xfer_id is not None else h.cluster.link.new_xfer_id()
    transfer = Transfer(h, kind, path, slave, xfer_id, offset, relay, ascii=h.current_type() == "a")
    if route.lent is not None:
        transfer.lent, transfer.allowed_ip = route.lent, passive.client_ip(h)
    if kind == "STOR" and offset == 0 and entry is not None and not entry.is_dir:
        transfer.old_holders = frozenset(entry.slaves)
    if kind in UPLOADS:
        # Reserved on the slave until its next stats show the space used (placement).
        transfer.reserve_bytes, h.allo_size = h.allo_size, 0
    h.begin_deferred()
    transfer.start(route.addr if route.kind == "port" else None)
