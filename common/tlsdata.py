"""TLS on a blocking FTP data connection (RFC 4217 PROT P), on pyOpenSSL.

Used by the slave's worker threads and the master's relay threads: the data socket stays
a blocking socket with kernel send/receive timeouts (slave.dataconn.set_timeout), and
`TlsStream` makes the TLS connection over it look like that socket to the copy loops: a
call that would block raises BlockingIOError(EAGAIN), end of stream is a 0-byte read, and
`shutdown(SHUT_WR)` sends close_notify before the TCP FIN. The server side is always the
TLS server (RFC 4217 section 7), in passive and in active mode alike.

No kTLS: pyOpenSSL (and Python 3.11's ssl) expose no SSL_sendfile, and this kernel has no
"tls" upper-layer protocol (setsockopt TCP_ULP "tls" fails with ENOENT), so a PROT P
download reads the file into a large buffer and writes it through SSL_write
(docs/benchmarks.md has the cost). `ktls_available()` says whether the kernel would allow it.
No session resumption is required of clients: a slave cannot resume the master's session.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from typing import Any

from OpenSSL import SSL

READ_STEP = 64 * 1024
MIN_READ = 16 * 1024
"""recv_into stops filling the caller's buffer when less than one TLS record would fit."""
TCP_ULP = 31
"""Linux setsockopt option naming a socket's upper-layer protocol ("tls" for kTLS)."""


class TlsFileError(ValueError):
    """A certificate or key file that cannot be used; `key` names the config key."""

    def __init__(self, key: str, text: str) -> None:
        super().__init__(text)
        self.key = key


DATA_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(certfile: str, keyfile: str = "", for_uploads: bool = False) -> SSL.Context:
    """A TLS server context (TLS 1.2 and newer) with this certificate chain and key.
    Raises TlsFileError naming the file that is missing, unreadable or does not match.

    `for_uploads`: for data connections the server receives on, TLS 1.2 only, without
    session tickets (downloads and the control connection keep TLS 1.3). A TLS 1.3 server
    sends its session tickets after the handshake; an uploading client never reads them,
    and closing a socket with unread bytes sends a TCP RST, which makes the server's
    kernel drop the upload's last bytes still in flight (seen with lftp: the tail of every
    active-mode upload lost). TLS 1.2 sends nothing after the handshake; pyOpenSSL cannot
    set a TLS 1.3 server's ticket count (SSL_CTX_set_num_tickets) to 0."""
    keyfile = keyfile or certfile
    for key, path in (("tls_certfile", certfile), ("tls_keyfile", keyfile)):
        if not os.path.isfile(path):
            raise TlsFileError(key, f"no such file: {path}")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # A peer's FIN without close_notify ends a data connection as a clean EOF would (FTP
    # stream mode ends at EOF; vsftpd's default strict_ssl_read_eof=NO does the same).
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
                    | getattr(SSL, "OP_IGNORE_UNEXPECTED_EOF", 0))
    if for_uploads:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_cipher_list(DATA_CIPHERS)
    try:
        ctx.use_certificate_chain_file(certfile)
    except SSL.Error as exc:
        raise TlsFileError("tls_certfile", f"not a PEM certificate: {certfile} ({_first(exc)})") from None
    try:
        ctx.use_privatekey_file(keyfile)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise TlsFileError("tls_keyfile", f"not the PEM private key of the certificate: {keyfile} "
                                          f"({_first(exc)})") from None
    return ctx


def _first(exc: SSL.Error) -> str:
    """The first OpenSSL reason in an error (its args are a list of (lib, func, reason))."""
    try:
        return str(exc.args[0][0][2])
    except (IndexError, TypeError):
        return str(exc)


def ktls_available() -> bool:
    """Whether this kernel accepts the "tls" upper-layer protocol on a TCP socket (the
    precondition of kTLS and of SSL_sendfile)."""
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client.connect(listener.getsockname())
        conn, _ = listener.accept()
        with conn:
            try:
                client.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
            except OSError:
                return False
    return True


def set_blocking_timeout(sock: socket.socket, seconds: float) -> None:
    """Make `sock` blocking with kernel send/receive timeouts of `seconds` (what TlsStream
    needs: Python's own socket timeout would make the descriptor non-blocking)."""
    sock.settimeout(None)
    seconds = max(seconds, 0.001)
    whole = int(seconds)
    tv = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


class TlsStream:
    """A server-side TLS connection over a connected blocking socket (see module doc).

    The socket stays the caller's: closing it, and shutting it down from another thread
    to abort a blocked call, work as they do without TLS.
    """

    def __init__(self, ctx: SSL.Context, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = SSL.Connection(ctx, sock)
        self.conn.set_accept_state()

    def handshake(self, deadline: float) -> None:
        """Complete the TLS handshake before `deadline` (monotonic); raises OSError
        (ETIMEDOUT, or ECONNABORTED for a failed handshake)."""
        while True:
            try:
                self.conn.do_handshake()
                return
            except (SSL.WantReadError, SSL.WantWriteError):
                if time.monotonic() >= deadline:
                    raise OSError(errno.ETIMEDOUT, "TLS handshake timed out") from None
            except SSL.SysCallError as exc:
                raise _syscall_error(exc, "TLS handshake") from None
            except SSL.Error as exc:
                raise OSError(errno.ECONNABORTED, f"TLS handshake failed: {_first(exc)}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: Any) -> int:
        """SSL_write; returns how much went out (pyOpenSSL allows partial writes: at least
        one TLS record). BlockingIOError when the kernel send timeout ran out."""
        try:
            return int(self.conn.send(data))
        except SSL.WantWriteError:
            raise BlockingIOError(errno.EAGAIN, "TLS write would block") from None
        except SSL.WantReadError:
            raise BlockingIOError(errno.EAGAIN, "TLS write waits for the peer") from None
        except SSL.SysCallError as exc:
            raise _syscall_error(exc, "TLS write") from None
        except SSL.Error as exc:
            raise OSError(errno.EPROTO, f"TLS write failed: {_first(exc)}") from None

    def sendall(self, data: Any) -> None:
        """send() until all of `data` is out; BlockingIOError as send()'s (a stall of the
        whole kernel send timeout)."""
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        """Decrypted bytes into `buffer`; 0 at the end of the stream (the peer's
        close_notify, or its FIN without one: FTP stream mode ends at EOF). Waits only for
        the first bytes, then takes what is already there, READ_STEP bytes per SSL_read
        (pyOpenSSL allocates a buffer of the size asked for on every call)."""
        view = memoryview(buffer)[:nbytes or len(buffer)]
        got = self._read(view[:READ_STEP])
        if got == 0:
            return 0
        while len(view) - got >= MIN_READ and (self.conn.pending() or self._readable()):
            try:
                n = self._read(view[got:got + READ_STEP])
            except BlockingIOError:
                break
            if n == 0:
                break  # the end comes again with the next call
            got += n
        return got

    def _readable(self) -> bool:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def _read(self, view: memoryview) -> int:
        try:
            return int(self.conn.recv_into(view, len(view)))
        except (SSL.WantReadError, SSL.WantWriteError):
            raise BlockingIOError(errno.EAGAIN, "TLS read would block") from None
        except SSL.ZeroReturnError:
            return 0
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] == -1:  # "Unexpected EOF": the peer closed without close_notify
                return 0
            raise _syscall_error(exc, "TLS read") from None
        except SSL.Error as exc:
            raise OSError(errno.EPROTO, f"TLS read failed: {_first(exc)}") from None

    def recv(self, size: int) -> bytes:
        buf = bytearray(size)
        n = self.recv_into(buf, size)
        return bytes(buf[:n])

    def shutdown(self, how: int) -> None:
        """Writing side: close_notify, then the socket's shutdown(how). Never waits for the
        peer's close_notify (RFC 4217 12.6 lets the data connection end at EOF)."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            try:
                self.conn.shutdown()
            except (SSL.Error, OSError):
                pass
        self.sock.shutdown(how)


    def answer_close(self) -> None:
        """After the peer's end of stream (an upload): our close_notify, best effort (the
        peer may have closed already; the bytes are in either way)."""
        try:
            self.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _syscall_error(exc: SSL.SysCallError, what: str) -> OSError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) and exc.args[0] > 0 else 0
    if code:
        return OSError(code, f"{what}: {os.strerror(code)}")
    return OSError(errno.ECONNRESET, f"{what}: the peer closed the connection")
