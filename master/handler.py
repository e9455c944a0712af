"""The master's FTP session: a narrow pyftpdlib FTPHandler subclass built from MasterConfig.

Owns the session's cluster-specific state (PRET, data routes, the deferred-reply queue,
the transfer in progress) and routes commands to the modules that decide them:
master.transfers (RETR/STOR/APPE/STOU), master.passive (PRET/PASV/EPSV/PORT/EPRT and
listings), master.site (SITE SLAVES/STATUS, XCRC), master.ftpfs (metadata commands through
pyftpdlib's stock methods). Protocol decisions live in those modules, not here.
"""

from __future__ import annotations

import collections
import functools
import logging
import socket
import sqlite3
import time
from typing import Any, Callable

from pyftpdlib.exceptions import AuthenticationFailed
from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.handlers.ftp.producers import BufferedIteratorProducer
from pyftpdlib.log import logger as ftplog
from pyftpdlib.utils import strerror

from common import messages as m
from common.config import MasterConfig
from master import answers, guard, mlsx, passive, replies, site, tls, transfers
from master.answers import SlaveAnswer
from master.cluster import Cluster
from master.ftpfs import FtpFilesystem, SlaveCommands
from master.route import NO_ROUTE, DataRoute, RelayWaiting
from master.transfers import RemoteTransfer, Transfer
from master.users import ClusterAuthorizer

log = logging.getLogger(__name__)

# Commands that must act even while an earlier command's reply is still owed (RFC 959 4.1.3).
_UNQUEUED = frozenset({"ABOR", "QUIT", "STAT"})
MAX_QUEUED_COMMANDS = 64
"""Pipelined commands waiting behind an owed reply; one more and the session is closed (421)."""


def _proto_cmds() -> dict[str, dict[str, Any]]:
    cmds = dict(FTPHandler.proto_cmds)
    # PRET and XCRC validate their own arguments: with perm set, pyftpdlib would run the
    # whole argument ("RETR a b", "path 0 10") through ftp2fs.
    cmds["PRET"] = dict(perm=None, auth=True, arg=None,
                        help="Syntax: PRET <SP> command [<SP> path] (prepare transfer).")
    cmds["XCRC"] = dict(perm=None, auth=True, arg=True,
                        help="Syntax: XCRC <SP> path [<SP> start [<SP> end]] (CRC32 of a file).")
    cmds["SITE SLAVES"] = dict(perm=None, auth=True, arg=False,
                               help="Syntax: SITE SLAVES (list storage slaves; admins only).")
    cmds["SITE STATUS"] = dict(perm=None, auth=True, arg=False,
                               help="Syntax: SITE STATUS (cluster counters; admins only).")
    cmds["SITE REMERGE"] = dict(perm=None, auth=True, arg=True,
                                help="Syntax: SITE REMERGE <SP> slave (full inventory merge; admins only).")
    cmds["SITE SLAVESELECT"] = dict(
        perm=None, auth=True, arg=True,
        help="Syntax: SITE SLAVESELECT up|down PATH (placement scores; admins only).")
    cmds["SITE WHO"] = dict(perm=None, auth=True, arg=False,
                            help="Syntax: SITE WHO (sessions and their transfers; admins only).")
    return cmds


PROTO_CMDS = _proto_cmds()


class ClusterFTPHandler(FTPHandler):
    """One FTP control connection. Class attributes come from build_handler()."""

    cluster: Cluster
    # Set by pyftpdlib's (untyped) FTPHandler; declared for the type checker only.
    data_channel: Any
    _restart_position: Any
    _current_type: str
    _rnfr: Any
    abstracted_fs = FtpFilesystem
    passive_dtp = passive.ParkingPassiveDTP
    proto_cmds = PROTO_CMDS
    use_sendfile = False
    login_timeout: float = 30
    """Seconds from connecting to logging in before the session is closed (421)."""

    def __init__(self, conn: socket.socket, server: Any, ioloop: Any = None) -> None:
        # Set before FTPHandler.__init__, which may call close() on a dead connection.
        self.pret: tuple[str, str] | None = None
        self.route: DataRoute = NO_ROUTE
        """Where the next data connection comes from (master.passive owns its changes)."""
        self.pending_checksum: object | None = None
        self._deferred = False
        self._queued: collections.deque[tuple[str, str, str]] = collections.deque()
        self._replay_call: Any = None
        self._login_timer: Any = None
        self.connected_at = time.monotonic()
        self.allo_size = 0
        """ALLO's byte count, for the next upload's placement (reset when it is dispatched)."""
        super().__init__(conn, server, ioloop=ioloop)
        self._extra_feats += ["PRET", "XCRC"]
        self._available_facts = list(mlsx.AVAILABLE_FACTS)
        self._current_facts = list(mlsx.DEFAULT_FACTS)

    # ------------------------------------------------------------ session lifecycle
    def handle(self) -> None:
        self.cluster.sessions.add(self)
        self._login_timer = self.ioloop.call_later(self.login_timeout, self._login_timed_out,
                                                   _errback=self.handle_error)
        super().handle()

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if not self.authenticated and not self._closed:
            log.info("%s: not logged in after %g s: closing", self.remote_ip, self.login_timeout)
            self._queued.clear()
            self.respond(replies.LOGIN_TIMED_OUT)
            self.close_when_done()

    def close(self) -> None:
        if not self._closed:
            self.cluster.sessions.discard(self)
            if self._login_timer is not None and not self._login_timer.cancelled:
                self._login_timer.cancel()
            self._queued.clear()
            if self._replay_call is not None and not self._replay_call.cancelled:
                self._replay_call.cancel()
            passive.set_route(self, NO_ROUTE)
        super().close()

    def flush_account(self) -> None:
        super().flush_account()
        self.pret = None
        if self.current_transfer() is None:
            passive.drop_stored_route(self)

    # ------------------------------------------------------------ hostile input, deferred replies
    def decode(self, bytes: bytes) -> str:
        return guard.decode(bytes)  # invalid UTF-8 stays visible to guard.refusal

    def respond(self, resp: str, logfun: Any = ftplog.debug) -> None:
        super().respond(guard.one_line(resp), logfun)

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        line, cmd = guard.without_telnet_prefix(line, cmd)
        if (self._deferred or self._queued) and cmd[-4:] not in _UNQUEUED:
            # A reply is still owed: answer this one after it, in order (pipelining).
            if len(self._queued) >= MAX_QUEUED_COMMANDS:
                log.warning("%s: more than %d commands pipelined: closing", self.remote_ip,
                            MAX_QUEUED_COMMANDS)
                self._queued.clear()
                self.respond(f"421 Too many pipelined commands (over {MAX_QUEUED_COMMANDS}); "
                             "closing control connection.")
                self.close_when_done()
                return
            self._queued.append((line, cmd, arg))
            return
        self._run(line, cmd, arg)

    def _run(self, line: str, cmd: str, arg: str) -> None:
        """pyftpdlib's dispatch of one command line, unless master.guard refuses its bytes."""
        if refusal := guard.refusal(cmd, arg):
            shown = "******" if cmd == "PASS" else guard.shown(arg)
            self.log_cmd(guard.shown(cmd), shown, int(refusal[:3]), refusal[4:])
            self.respond(refusal)
            return
        super().pre_process_command(line, cmd, arg)

    def begin_deferred(self) -> None:
        self._deferred = True

    def end_deferred(self) -> None:
        self._deferred = False
        if self._queued and not self._closed and self._replay_call is None:
            self._replay_call = self.ioloop.call_later(0, self._replay, _errback=self.handle_error)

    def _replay(self) -> None:
        self._replay_call = None
        while self._queued and not self._deferred and not self._closed:
            line, cmd, arg = self._queued.popleft()
            self._run(line, cmd, arg)

    def process_command(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        try:
            super().process_command(cmd, *args, **kwargs)
        except sqlite3.Error:
            # The metadata store failed (disk full, I/O error, locked): say so, keep the session.
            log.exception("metadata store failed during %s", cmd)
            self.respond(replies.METADATA_FAILED)
            self.log_cmd(cmd, args[0] if args else "", 451, "metadata store failed")

    # ------------------------------------------------------------ login (scrypt off the loop)
    def ftp_PASS(self, line: str) -> None:
        """Stock PASS, but the scrypt check runs on the authorizer's worker pool: the reply
        is deferred (later commands queue behind it) and comes back through the Waker."""
        check = getattr(self.authorizer, "check_password", None)
        if not self.authenticated and self.username and self._login_banned():
            return
        if self.authenticated or not self.username or check is None:
            super().ftp_PASS(line)
            return
        username = self.username
        post = self.cluster.waker.post
        self.begin_deferred()
        check(username, line, lambda err: post(self._password_checked, username, line, err))

    def _password_checked(self, username: str, password: str, err: Exception | None) -> None:
        if self._closed or self.username != username or self.authenticated:
            return
        if err is None:
            try:
                home = self.authorizer.get_home_dir(username)
                msg_login = self.authorizer.get_msg_login(username)
            except KeyError:  # the user was removed (SIGHUP) while the check ran
                err = AuthenticationFailed("Authentication failed.")
        if err is None and self._login_banned():  # the ban began while this check ran
            self.end_deferred()
            return
        if err is not None:
            self._count_failed_login()
            # pyftpdlib's delay (auth_failed_timeout) and max_login_attempts; the deferral
            # ends in on_login_failed, once the 530 is out.
            self.handle_auth_failed(str(err), password)
            return
        self.handle_auth_success(home, password, msg_login)
        self.end_deferred()

    def _login_banned(self) -> bool:
        """Refuse this login (530, then close) when its source is banned; no password check."""
        source = guard.source_key(self.remote_ip)
        if not self.cluster.logins.banned(source, self.cluster.clock()):
            return False
        self.log_cmd("PASS", "******", 530, f"logins from {source} banned")
        self.username = ""
        self._queued.clear()
        self.respond(replies.LOGIN_BANNED)
        self.close_when_done()
        return True

    def _count_failed_login(self) -> None:
        logins = self.cluster.logins
        source = guard.source_key(self.remote_ip)
        if logins.failed(source, self.cluster.clock()):
            log.warning("%s: %d failed logins within %g s: logins from this address refused "
                        "for %g s", source, logins.limit, logins.window, logins.ban)

    def on_login_failed(self, username: str, password: str) -> None:
        super().on_login_failed(username, password)
        if self.attempted_logins >= self.max_login_attempts:
            self._queued.clear()  # disconnecting: nothing more is answered
        self.end_deferred()

    # ------------------------------------------------------------ transfer plumbing
    def attach_transfer(self, proxy: RemoteTransfer) -> None:
        self.data_channel = proxy
        # The transfer is activity: no idle timeout until it ends (_on_dtp_close re-arms it).
        if self._idler is not None and not self._idler.cancelled:
            self._idler.cancel()

    def detach_transfer(self) -> None:
        if isinstance(self.route, RelayWaiting):
            self.route = NO_ROUTE  # the relay waiting for the client's connection is over
        if isinstance(self.data_channel, RemoteTransfer):
            if self._closed:
                self.data_channel = None
            else:
                self._on_dtp_close()
        self.end_deferred()

    def current_transfer(self) -> Transfer | None:
        channel = self.data_channel
        return channel.transfer if isinstance(channel, RemoteTransfer) else None

    def data_tls_context(self, upload: bool) -> Any:
        """The TLS context of the next data connection (PROT P, master.tls), else None."""
        return None

    def current_type(self) -> str:
        """pyftpdlib's TYPE: "a" (ASCII, the default) or "i" (binary)."""
        return self._current_type

    def take_restart_position(self) -> int:
        rest, self._restart_position = self._restart_position, 0
        return int(rest)

    # ------------------------------------------------------------ data routes
    def _make_epasv(self, extmode: bool = False) -> None:
        passive.make_epasv(self, extmode, super()._make_epasv)

    def _make_eport(self, ip: str, port: int) -> None:
        passive.make_eport(self, ip, port)

    def ftp_PRET(self, line: str) -> None:
        passive.pret(self, line)

    def ftp_LIST(self, path: str) -> Any:
        return passive.listing(self, super().ftp_LIST, path)

    def ftp_NLST(self, path: str) -> Any:
        return passive.listing(self, self._streamed_nlst, path)

    def _streamed_nlst(self, path: str) -> Any:
        """Stock NLST joins every name in memory; a directory's names are streamed instead."""
        if not self.fs.isdir(path):
            return super().ftp_NLST(path)
        try:
            names = self.fs.listdir(path)
        except (OSError, FilesystemError) as err:
            self.respond(f"550 {strerror(err)}.")
            return None
        lines = (f"{name}\r\n".encode(self.encoding, self.unicode_errors) for name in names)
        self.push_dtp_data(BufferedIteratorProducer(lines), isproducer=True, cmd="NLST")
        return path

    def ftp_MLSD(self, path: str) -> Any:
        entry = self.fs.lookup(path)
        if entry is None or not entry.is_dir:
            self.respond(replies.not_a_directory(entry, "MLSD"))  # RFC 3659 7.2.1
            return None
        return passive.listing(self, super().ftp_MLSD, path)

    def ftp_ABOR(self, line: str) -> None:
        passive.cancel_pending_listen(self)
        dropped = passive.drop_stored_route(self)
        if dropped and self._dtp_acceptor is None and self._dtp_connector is None \
                and self.data_channel is None:
            self.respond("225 ABOR command successful; data channel closed.")
            return
        super().ftp_ABOR(line)

    # ------------------------------------------------------------ transfers
    def ftp_RETR(self, file: str) -> None:
        transfers.retr(self, file)

    def ftp_STOR(self, file: str, mode: str = "w") -> None:
        transfers.stor(self, file, "APPE" if "a" in mode else "STOR")

    def ftp_APPE(self, file: str) -> None:
        transfers.stor(self, file, "APPE")

    def ftp_STOU(self, line: str) -> None:
        transfers.stou(self, line)

    def ftp_ALLO(self, line: str) -> None:
        # RFC 959 ALLO <SP> <decimal-integer> [<SP> R <SP> <decimal-integer>]: the size lets
        # placement skip slaves without room and reserve it until the slave's next stats.
        word = line.split()[0] if line.split() else ""
        if not word.isdigit():
            self.respond("501 Syntax: ALLO <SP> bytes.")
            return
        self.allo_size = int(word)
        self.respond(f"200 ALLO: {self.allo_size} bytes will be reserved for the next upload.")

    def ftp_REST(self, line: str) -> None:
        # In TYPE I a REST offset is a byte offset of the stored file; TYPE A is refused
        # (master.replies.TYPE_A_REFUSALS says why), as stock pyftpdlib does.
        if refusal := replies.type_a_refusal("REST", self._current_type):
            self.respond(refusal)
            return
        try:
            marker = int(line)
            if marker < 0:
                raise ValueError
        except (ValueError, OverflowError):
            self.respond("501 Invalid parameter.")
            return
        self._restart_position = marker
        self.respond(f"350 Restarting at position {marker}.")

    # ------------------------------------------------------------ metadata changes
    def ftp_DELE(self, path: str) -> None:
        self._change_metadata(self.fs.remove, (path,), "250 File removed.")

    def ftp_RMD(self, path: str) -> None:
        if path == "/":
            self.respond(replies.CANNOT_REMOVE_ROOT)
            return
        self._change_metadata(self.fs.rmdir, (path,), "250 Directory removed.")

    def ftp_RNTO(self, path: str) -> None:
        if not self._rnfr:
            self.respond("503 Bad sequence of commands: use RNFR first.")
            return
        src, self._rnfr = self._rnfr, None
        self._change_metadata(self.fs.rename, (src, path), "250 Renaming ok.")

    def _change_metadata(self, change: Callable[..., SlaveCommands], args: tuple[str, ...],
                         ok_reply: str) -> None:
        """Commit a change to the VFS, then reply once the slaves concerned have acted on it
        (or failed to: the VFS is authoritative), so a client never sees stale disks."""
        try:
            commands = change(*args)
        except (OSError, FilesystemError) as err:
            self.respond(f"550 {strerror(err)}.")
            return
        except sqlite3.Error:
            log.exception("metadata store failed: %s%r not done", change.__name__, args)
            self.respond(replies.METADATA_FAILED)
            return
        if not commands:
            self.respond(ok_reply)
            return
        remaining = [len(commands)]
        self.begin_deferred()

        def on_reply(slave: str, cmd: m.SlaveCommand, reply: SlaveAnswer) -> None:
            if not (isinstance(reply, m.OpResult) and reply.ok):
                log.warning("%s on %s failed: %s", type(cmd).__name__, slave, answers.why(reply))
            remaining[0] -= 1
            if remaining[0] == 0 and not self._closed:
                self.respond(ok_reply)
                self.end_deferred()

        for op in commands:  # queued durably with the change: sent now, replayed if unanswered
            self.cluster.link.send_op(op, functools.partial(on_reply, op.slave, op.cmd))

    def ftp_SIZE(self, path: str) -> None:
        # The VFS knows the exact stored size, which is the transfer size in TYPE I only:
        # TYPE A is refused (master.replies.TYPE_A_REFUSALS), as stock pyftpdlib does.
        if refusal := replies.type_a_refusal("SIZE", self._current_type):
            self.respond(refusal)
            return
        entry = self.fs.lookup(path)
        if entry is None or entry.is_dir:
            self.respond(replies.not_a_file(entry))
        else:
            self.respond(f"213 {entry.size}")

    # ------------------------------------------------------------ cluster commands
    def ftp_XCRC(self, line: str) -> None:
        site.xcrc(self, line)

    def ftp_SITE_SLAVES(self, line: str) -> None:
        site.site_slaves(self)

    def ftp_SITE_STATUS(self, line: str) -> None:
        site.site_status(self)

    def ftp_SITE_REMERGE(self, line: str) -> None:
        site.site_remerge(self, line)

    def ftp_SITE_SLAVESELECT(self, line: str) -> None:
        site.site_slaveselect(self, line)

    def ftp_SITE_WHO(self, line: str) -> None:
        site.site_who(self)


def build_handler(config: MasterConfig, cluster: Cluster,
                  authorizer: ClusterAuthorizer | None = None) -> type[ClusterFTPHandler]:
    """A handler class configured once from `config`; never mutated afterwards."""
    section = config.master
    ports = section.passive_ports
    attrs: dict[str, Any] = dict(
        cluster=cluster,
        authorizer=authorizer if authorizer is not None else ClusterAuthorizer(list(config.users)),
        banner=section.banner,
        timeout=section.idle_timeout,
        login_timeout=section.login_timeout,
        passive_ports=list(range(ports[0], ports[1] + 1)) if ports else None,
        masquerade_address=section.masquerade_address or None,
        permit_foreign_addresses=False,
        permit_privileged_ports=False,
    )
    bases: tuple[type, ...] = (ClusterFTPHandler,)
    if section.tls_certfile:
        attrs.update(tls.handler_attrs(section, PROTO_CMDS))
        bases = (tls.TlsSession, ClusterFTPHandler)
    return type("ConfiguredClusterFTPHandler", bases, attrs)
