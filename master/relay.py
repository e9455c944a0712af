"""Relayed transfers: PASV/EPSV without PRET, where the client's data connection ends at
the master and the master copies the bytes to or from the slave.

Owns one worker thread per relayed transfer (blocking sockets, large buffers); completions
come back to the IOLoop through the Waker (master.loop). The FTP replies stay with
master.transfers.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Callable

from common.tlsdata import TlsStream, set_blocking_timeout
from master.addresses import local_address_toward
from master.loop import Waker

log = logging.getLogger(__name__)

BUFFER_BYTES = 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


class RelayCounter:
    """Bytes relayed by this master since it started (SITE STATUS)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self.active = 0
        self.open = 0
        """Relays created and not finished (each may own a copying thread): capped by
        the master's max_relays (loop thread only)."""

    def add(self, n: int) -> None:
        with self._lock:
            self._total += n

    @property
    def total(self) -> int:
        with self._lock:
            return self._total


class Relay:
    """Copies one transfer's bytes between the client's data socket (accepted by the master)
    and the slave's listener. Starts once both the client socket and the slave's Started are
    there; reports (ok, error) once, in the loop thread."""

    def __init__(self, waker: Waker, counter: RelayCounter, upload: bool, source_ip: str,
                 data_timeout: float, client_tls: Any = None) -> None:
        self.waker = waker
        self.client_tls = client_tls
        """PROT P: the master is the TLS server on the client's data connection (this
        context); the connection to the slave stays plain TCP inside the cluster."""
        self.counter = counter
        self.upload = upload
        self.source_ip = source_ip
        self.data_timeout = data_timeout
        self.bytes = 0
        self._client: socket.socket | None = None
        self._slave_sock: socket.socket | None = None
        self._slave_addr: tuple[str, int] | None = None
        self._on_finished: Callable[[bool, str], None] | None = None
        self._thread: threading.Thread | None = None
        self._aborted = False
        self._result: tuple[bool, str] | None = None
        self._holds_slot = False

    @classmethod
    def toward(cls, slave_host: str, waker: Waker, counter: RelayCounter, upload: bool,
               data_timeout: float, client_tls: Any = None) -> Relay:
        """A relay to a slave at `slave_host`, holding one of the max_relays slots."""
        relay = cls(waker, counter, upload, local_address_toward(slave_host), data_timeout,
                    client_tls)
        relay._holds_slot = True
        relay.counter.open += 1
        return relay

    # -- called in the loop thread
    def set_client(self, sock: socket.socket) -> None:
        if self._aborted:
            _close(sock)
            return
        self._client = sock
        self._maybe_run()

    def client_failed(self, reason: str) -> None:
        self._finish(False, reason)

    def set_slave_address(self, addr: tuple[str, int]) -> None:
        self._slave_addr = addr

    def slave_started(self, on_finished: Callable[[bool, str], None]) -> None:
        self._on_finished = on_finished
        if self._result is not None:
            on_finished(*self._result)
        else:
            self._maybe_run()

    @property
    def running(self) -> bool:
        """The copy thread runs (or ran) and has not reported yet."""
        return self._thread is not None and self._result is None

    def abort(self) -> None:
        self._aborted = True
        for sock in (self._client, self._slave_sock):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is None and self._client is not None:
            _close(self._client)
            self._client = None
        if self._thread is None:
            self._release_slot()  # no copy thread will ever start

    def _release_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.counter.open -= 1

    def _maybe_run(self) -> None:
        if (self._thread is not None or self._client is None or self._on_finished is None
                or self._result is not None or self._slave_addr is None or self._aborted):
            return
        self.counter.active += 1
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def _finish(self, ok: bool, error: str) -> None:
        if self._result is not None:
            return
        self._result = (ok, error)
        self._release_slot()
        if self._thread is not None:
            self.counter.active -= 1
        if self._on_finished is not None:
            self._on_finished(ok, error)

    # -- worker thread
    def _run(self) -> None:
        client = self._client
        assert client is not None and self._slave_addr is not None
        ok, error = False, ""
        try:
            slave = socket.create_connection(self._slave_addr, timeout=CONNECT_TIMEOUT_S,
                                             source_address=(self.source_ip, 0))
            self._slave_sock = slave
            if self._aborted:
                raise OSError("aborted")
            for sock in (client, slave):
                sock.setblocking(True)
                sock.settimeout(self.data_timeout)
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
                    except OSError:
                        pass
            near: socket.socket | TlsStream = client
            if self.client_tls is not None:
                set_blocking_timeout(client, self.data_timeout)
                near = TlsStream(self.client_tls, client)
                near.handshake(time.monotonic() + self.data_timeout)
            src, dst = (near, slave) if self.upload else (slave, near)
            self._copy(src, dst)
            ok = not self._aborted
            error = "" if ok else "aborted"
        except OSError as exc:
            error = "aborted" if self._aborted else (exc.strerror or str(exc))
        finally:
            _close(client)
            if self._slave_sock is not None:
                _close(self._slave_sock)
        self.waker.post(self._finish, ok, error)

    def _copy(self, src: socket.socket | TlsStream, dst: socket.socket | TlsStream) -> None:
        buf = bytearray(BUFFER_BYTES)
        view = memoryview(buf)
        while True:
            n = src.recv_into(buf)
            if n == 0:
                break
            dst.sendall(view[:n])
            self.bytes += n
            self.counter.add(n)
        # Half-close so the receiver sees end-of-file (RFC 959 stream mode ends with EOF).
        dst.shutdown(socket.SHUT_WR)
        if isinstance(src, TlsStream):
            src.answer_close()  # our close_notify answers the client's (TLS upload)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
