"""FTP data sockets: passive listeners, accepting only the allowed client, active connects.

Owns: socket options for the data plane (kernel timeouts instead of Python timeouts, so
sockets stay blocking and os.sendfile / recv_into run without a poll per chunk; a large
receive buffer), the passive port range, and the peer-address check.

Must not: touch files or zmq, or decide anything about transfers. Every blocking call here
is woken by `shutdown(SHUT_RDWR)` from another thread (that is how Abort works).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import select
import socket
import struct
import time
from typing import Callable

RCVBUF_BYTES = 4 * 1024 * 1024
"""Requested SO_RCVBUF for upload sockets (the kernel caps it at net.core.rmem_max)."""
LISTEN_BACKLOG = 8
CANCEL_POLL_S = 0.2
"""A worker waiting on a pooled listener (which Abort must not shut down, other transfers
use it later) re-checks for an abort this often."""


class DataTimeout(TimeoutError):
    """A data connection (or a listener) saw no progress for data_timeout seconds."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def set_timeout(sock: socket.socket, seconds: float) -> None:
    """Kernel-side send/receive/accept/connect timeouts on a blocking socket.

    A call that makes no progress for `seconds` fails with EAGAIN (BlockingIOError),
    which `stalled()` turns into DataTimeout.
    """
    seconds = max(seconds, 0.001)
    whole = int(seconds)
    tv = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def stalled(exc: OSError) -> bool:
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT)


def _tune(sock: socket.socket, for_upload: bool) -> None:
    if for_upload:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        except OSError:
            pass


class PortAllocator:
    """Hands out passive ports from an inclusive range, round-robin, or 0 (kernel's choice)."""

    def __init__(self, ports: tuple[int, int] | None) -> None:
        self.ports = ports
        self._cycle = itertools.cycle(range(ports[0], ports[1] + 1)) if ports else None

    def open_listener(self, host: str, for_upload: bool = True) -> socket.socket:
        """A listening socket on `host`; raises OSError(EADDRINUSE) when the range is full."""
        if self.ports is None or self._cycle is None:
            return _listener(host, 0, for_upload)
        for _ in range(self.ports[1] - self.ports[0] + 1):
            try:
                return _listener(host, next(self._cycle), for_upload)
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
        raise OSError(errno.EADDRINUSE, "no free port in passive_ports")


def _listener(host: str, port: int, for_upload: bool) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Set before listen(): accepted sockets inherit it and the window scale is agreed
        # in the handshake, so setting it afterwards would be too late.
        _tune(sock, for_upload)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _normal_ip(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def accept_from(listener: socket.socket, allowed_ip: str, deadline: float,
                on_refused: Callable[[str], None] | None = None,
                cancelled: Callable[[], bool] | None = None) -> socket.socket:
    """Accept the first connection from `allowed_ip` before `deadline` (monotonic seconds).

    Connections from any other address are closed and waiting goes on. Raises
    DataTimeout, or OSError when the listener is shut down (Abort) or `cancelled()` is true
    (checked every CANCEL_POLL_S).
    """
    want = _normal_ip(allowed_ip)
    while True:
        if cancelled is not None and cancelled():
            raise OSError(errno.ECONNABORTED, "aborted")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DataTimeout(errno.ETIMEDOUT, "no data connection from the client in time")
        set_timeout(listener, remaining if cancelled is None else min(remaining, CANCEL_POLL_S))
        try:
            conn, peer = listener.accept()
        except OSError as exc:
            if stalled(exc):
                continue  # loop re-checks the deadline
            raise
        if _normal_ip(peer[0]) == want:
            return conn
        if on_refused is not None:
            on_refused(peer[0])
        conn.close()


def has_pending(listener: socket.socket) -> bool:
    """A connection waits in `listener`'s accept queue."""
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    return bool(poller.poll(0))


def accept_waiting(listener: socket.socket, allowed_ip: str,
                   on_refused: Callable[[str], None] | None = None) -> socket.socket | None:
    """A connection from `allowed_ip` already in `listener`'s accept queue, or None; never
    waits. Connections from other addresses found on the way are closed."""
    want = _normal_ip(allowed_ip)
    while has_pending(listener):
        conn, peer = listener.accept()
        if _normal_ip(peer[0]) == want:
            return conn
        if on_refused is not None:
            on_refused(peer[0])
        conn.close()
    return None


def drain_backlog(listener: socket.socket) -> int:
    """Close every connection waiting in `listener`'s accept queue; returns how many (an
    accept error, say EMFILE, stops early: `has_pending` tells)."""
    closed = 0
    while has_pending(listener):
        try:
            conn, _peer = listener.accept()
        except OSError:
            break
        conn.close()
        closed += 1
    return closed


def connect_socket(bind_host: str, for_upload: bool) -> socket.socket:
    """An unconnected TCP socket bound to (bind_host, any port), ready for connect()."""
    sock = socket.socket(_family(bind_host), socket.SOCK_STREAM)
    try:
        _tune(sock, for_upload)
        sock.bind((bind_host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def connect(sock: socket.socket, address: tuple[str, int], timeout: float) -> None:
    """Active-mode connect with a kernel timeout; raises DataTimeout or OSError."""
    set_timeout(sock, timeout)
    try:
        sock.connect(address)
    except OSError as exc:
        if stalled(exc) or exc.errno == errno.EINPROGRESS:
            raise DataTimeout(errno.ETIMEDOUT, f"connect to {address[0]}:{address[1]} timed out") from None
        raise
