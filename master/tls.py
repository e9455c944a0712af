"""FTPS on the master (RFC 4217 explicit TLS): AUTH TLS, PBSZ, PROT and the tls_control /
tls_data policies (master-wide, overridable per user).

The decisions are pure functions (tested as tables); `TlsSession` is the mixin that
master.handler.build_handler puts in front of ClusterFTPHandler when a certificate is
configured: pyftpdlib's SSLConnectionMixin turns the control connection into TLS on
AUTH TLS, and pyftpdlib's TLS_DTPHandler makes the master's own data connections
(listings) TLS under PROT P. A PROT P file transfer is TLS on its slave (the StartSend /
StartReceive `tls` field) or, relayed, on the master's relay thread (master.relay).
"""

from __future__ import annotations

import logging
from typing import Any

from pyftpdlib.handlers.ftps.data import TLS_DTPHandler
from pyftpdlib.handlers.ftps.ssl import SSLConnectionMixin

from common.config import MasterSection, TlsMode
from common.tlsdata import server_context
from master import replies

log = logging.getLogger(__name__)

DATA_CMDS = frozenset({"RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"})
"""Commands that open a data connection: refused with 521 when PROT does not fit the policy."""
FEATURES = ("AUTH TLS", "PBSZ", "PROT")

PROTO_CMDS: dict[str, dict[str, Any]] = {
    "AUTH": dict(perm=None, auth=False, arg=True,
                 help="Syntax: AUTH <SP> TLS (secure the control connection)."),
    "PBSZ": dict(perm=None, auth=False, arg=True,
                 help="Syntax: PBSZ <SP> 0 (protection buffer size, 0 for TLS)."),
    "PROT": dict(perm=None, auth=False, arg=True,
                 help="Syntax: PROT <SP> C|P (clear or private data connections)."),
}


# ---------------------------------------------------------------- pure decisions

def effective(master: TlsMode, user: TlsMode | None) -> TlsMode:
    """The policy for one user: the user's override, else the master's."""
    return user if user is not None else master


def login_refusal(mode: TlsMode, secured: bool) -> str:
    """USER/PASS under `mode` on a control connection that is (not) TLS: the 530, or ""."""
    if mode == "required" and not secured:
        return replies.TLS_CONTROL_REQUIRED  # RFC 4217 section 6 (530)
    if mode == "off" and secured:
        return replies.TLS_CONTROL_OFF
    return ""


def data_refusal(mode: TlsMode, private: bool) -> str:
    """A data connection command under `mode` with PROT P (or not): the 521, or ""."""
    if mode == "required" and not private:
        return replies.TLS_DATA_REQUIRED  # RFC 4217 section 9 (521)
    if mode == "off" and private:
        return replies.TLS_DATA_OFF
    return ""


def auth_reply(arg: str, control: TlsMode, secured: bool) -> tuple[str, bool]:
    """AUTH's reply and whether to start the TLS handshake after it."""
    mechanism = arg.strip().upper()
    if secured:
        return replies.TLS_ALREADY, False
    if mechanism not in ("TLS", "TLS-C", "SSL"):
        return replies.auth_unsupported(mechanism), False  # RFC 2228: 504 unknown mechanism
    if control == "off":
        return replies.TLS_AUTH_OFF, False
    return replies.TLS_AUTH_OK, True


def pbsz_reply(arg: str, secured: bool) -> tuple[str, bool]:
    """PBSZ's reply and whether it counts (RFC 4217 section 8: TLS needs no buffer, 0)."""
    if not secured:
        return replies.PBSZ_BEFORE_AUTH, False
    if not arg.strip().isdigit():
        return replies.PBSZ_SYNTAX, False
    return replies.PBSZ_OK, True


def prot_reply(arg: str, secured: bool, pbsz: bool, data: TlsMode) -> tuple[str, bool | None]:
    """PROT's reply and the new protection (True: private), None when unchanged."""
    level = arg.strip().upper()
    if not secured:
        return replies.PROT_BEFORE_AUTH, None
    if not pbsz:
        return replies.PROT_BEFORE_PBSZ, None
    if level == "C":
        return replies.PROT_C_OK, False
    if level == "P":
        if data == "off":
            return replies.TLS_PROT_P_OFF, None
        return replies.PROT_P_OK, True
    if level in ("S", "E"):
        return replies.prot_unsupported(level), None  # RFC 4217 section 9: 536
    return replies.prot_unknown(level), None


# ---------------------------------------------------------------- the session mixin

class TlsSession(SSLConnectionMixin):
    """AUTH TLS / PBSZ / PROT and the policies on a ClusterFTPHandler (see module doc).
    Class attributes come from master.handler.build_handler."""

    ssl_context: Any
    """The control connection's, listings' (pyftpdlib's TLS_DTPHandler) and relayed
    downloads'."""
    upload_ssl_context: Any
    """Relayed uploads' (common.tlsdata.server_context for_uploads: TLS 1.2, no tickets)."""
    tls_control: TlsMode = "allowed"
    tls_data: TlsMode = "allowed"
    _pbsz = False
    _prot = False

    def __init__(self, conn: Any, server: Any, ioloop: Any = None) -> None:
        super().__init__(conn, server, ioloop)
        if self.tls_control != "off":
            self._extra_feats += list(FEATURES)

    # -- the policy for this session's user
    def _modes(self, username: str) -> tuple[TlsMode, TlsMode]:
        control, data = self.authorizer.tls_override(username)
        return effective(self.tls_control, control), effective(self.tls_data, data)

    @property
    def control_secured(self) -> bool:
        return bool(self._ssl_requested)

    def data_tls_context(self, upload: bool) -> Any:
        """The TLS context of this session's next data connection, None for PROT C."""
        if not self._prot:
            return None
        return self.upload_ssl_context if upload else self.ssl_context

    def process_command(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        refusal = ""
        if cmd in ("USER", "PASS"):
            name = str(args[0]) if cmd == "USER" and args else str(self.username or "")
            refusal = login_refusal(self._modes(name)[0], self.control_secured)
        elif cmd in DATA_CMDS:
            refusal = data_refusal(self._modes(str(self.username or ""))[1], self._prot)
        if refusal:
            self.respond(refusal)
            self.log_cmd(cmd, str(args[0]) if args and cmd != "PASS" else "", int(refusal[:3]),
                         refusal[4:])
            return
        super().process_command(cmd, *args, **kwargs)

    def flush_account(self) -> None:
        super().flush_account()
        self._pbsz = False  # REIN, or USER after a login: PBSZ and PROT again (as pyftpdlib)
        self._prot = False

    # -- the commands
    def ftp_AUTH(self, line: str) -> None:
        reply, start = auth_reply(line, self.tls_control, self.control_secured)
        self.respond(reply)
        if start:
            self.secure_connection(self.ssl_context)

    def ftp_PBSZ(self, line: str) -> None:
        reply, ok = pbsz_reply(line, self.control_secured)
        self.respond(reply)
        if ok:
            self._pbsz = True

    def ftp_PROT(self, line: str) -> None:
        data = self._modes(str(self.username or ""))[1]
        reply, private = prot_reply(line, self.control_secured, self._pbsz, data)
        self.respond(reply)
        if private is not None:
            self._prot = private

    # -- TLS plumbing (as pyftpdlib's TLS_FTPHandler, without bypassing our handler)
    def handle_failed_ssl_handshake(self) -> None:
        log.info("%s: TLS handshake on the control connection failed", self.remote_ip)
        self.close()

    def handle_timeout(self) -> None:
        if self._ssl_accepting:
            self.close()  # no reply can go out in the middle of a handshake
        else:
            super().handle_timeout()

    def close(self) -> None:
        SSLConnectionMixin.close(self)
        super(SSLConnectionMixin, self).close()


def handler_attrs(section: MasterSection, proto_cmds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The class attributes of a TLS-capable handler (build_handler, with tls_certfile set)."""
    return dict(
        ssl_context=server_context(section.tls_certfile, section.tls_keyfile),
        upload_ssl_context=server_context(section.tls_certfile, section.tls_keyfile, for_uploads=True),
        tls_control=section.tls_control,
        tls_data=section.tls_data,
        proto_cmds={**proto_cmds, **PROTO_CMDS},
        dtp_handler=TLS_DTPHandler,
    )
