"""Transfers: which may start, and on which listener (one per Listen, or a pooled one lent
by the master), and their results.

Owns: the table of open listeners and running transfers (main-thread only), the
max_transfers limit, the pooled listeners (slave.pool), and opening files for send/receive
(in the main loop, so errors become an OpResult before Started). Moving the bytes is the
worker side's (slave.workers): a started transfer goes to a worker thread, or, for a small
download whose client is already connected, is sent inline from the main loop. A pooled
listener is never closed by its transfer, which empties its accept queue at the end.

Threads: the main loop calls every public method; a worker touches only its own Transfer
and the Outbox.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

from common import messages as m
from common.config import SlaveSection
from slave import dataconn
from slave.outbox import Outbox
from slave.pool import PortPool, PortState
from slave.storage import Storage
from slave.workers import NO_TLS_CERTIFICATE, DataMover, Kind, Listener, Transfer, WorkerPool

log = logging.getLogger(__name__)


class TransferManager:
    """Listeners and transfers of one slave (see the module docstring for threading)."""

    def __init__(self, storage: Storage, config: SlaveSection, outbox: Outbox) -> None:
        self.storage = storage
        self.config = config
        self.outbox = outbox
        self.ports = dataconn.PortAllocator(config.passive_ports)
        self.listeners: dict[int, Listener] = {}
        self.pooled: PortPool[socket.socket] = PortPool()
        """Pooled passive listeners by port (open_pool), open for the slave's lifetime, each
        free, lent to one transfer until its result is taken, or dirty (its accept queue
        could not be emptied: refused until a ClearPort, which the master sends)."""
        self.transfers: dict[int, Transfer] = {}
        self.ended: dict[int, threading.Event] = {}
        """Set by the worker once the transfer's descriptors are closed and its result posted."""
        self.mover = DataMover(config, outbox)
        self.pool = WorkerPool(self.mover.work)
        self._moved_done = {Kind.SEND: 0, Kind.RECEIVE: 0}
        """Bytes moved by the transfers already taken out of `transfers` (main loop only)."""

    # ------------------------------------------------------------ counts

    def active(self, kind: Kind) -> int:
        return sum(1 for t in self.transfers.values() if t.kind is kind)

    def moved(self) -> tuple[int, int]:
        """(sent, received): bytes this slave's data connections moved since it started,
        the transfers that ended plus the running ones so far. Never decreases. No lock:
        each worker counts only its own transfer's bytes (Transfer.bytes), read here."""
        sent, received = self._moved_done[Kind.SEND], self._moved_done[Kind.RECEIVE]
        for t in self.transfers.values():
            if t.kind is Kind.SEND:
                sent += t.bytes
            else:
                received += t.bytes
        return sent, received

    def _check_capacity(self, xfer_id: int) -> None:
        if xfer_id in self.transfers:
            raise OSError(errno.EEXIST, f"transfer {xfer_id} already running")
        if len(self.transfers) + len(self.listeners) >= self.config.max_transfers:
            raise OSError(errno.EBUSY, f"too many transfers (max_transfers={self.config.max_transfers})")

    # ------------------------------------------------------------ commands (main loop)

    def open_pool(self) -> list[int]:
        """Open the pooled passive listeners (config passive_pool, at most half of
        passive_ports); returns their ports, which the master lends to PASV routes."""
        count = self.config.passive_pool
        if self.config.passive_ports is not None:
            first, last = self.config.passive_ports
            count = min(count, (last - first + 1) // 2)
        while len(self.pooled) < count:
            try:
                sock = self.ports.open_listener(self.config.data_bind)
            except OSError as exc:
                log.warning("passive pool: %d of %d listeners opened (%s)", len(self.pooled), count, exc)
                break
            self.pooled.add(int(sock.getsockname()[1]), sock)
        return self.pooled.ports()

    def clear_port(self, port: int) -> None:
        """Close the connections waiting on pooled listener `port`. Raises OSError if there
        is no such listener or a running transfer has it."""
        sock = self.pooled.check_clearable(port)
        if dropped := dataconn.drain_backlog(sock):
            log.info("pooled port %d: closed %d connection(s) nobody claimed", port, dropped)
        if dataconn.has_pending(sock):
            raise OSError(errno.EAGAIN, f"pooled port {port}: could not empty its accept queue")
        self.pooled.cleared(port)

    def refused(self, msg: m.StartSend | m.StartReceive) -> None:
        """A start refused: a client connection already waiting on its pooled port goes."""
        if msg.pool_port:
            with contextlib.suppress(OSError):
                self.clear_port(msg.pool_port)

    def listen(self, xfer_id: int, allowed_ip: str, now: float) -> int:
        """Open a passive listener; returns its port. Raises OSError."""
        if xfer_id in self.listeners:
            raise OSError(errno.EEXIST, f"transfer {xfer_id} already has a listener")
        self._check_capacity(xfer_id)
        sock = self.ports.open_listener(self.config.data_bind)
        self.listeners[xfer_id] = Listener(sock, allowed_ip, now + self.config.data_timeout)
        return int(sock.getsockname()[1])

    def start_send(self, msg: m.StartSend) -> None:
        """Open the file and start the worker; raises OSError (nothing is left open)."""
        with self._drop_listener_on_error(msg):
            self._start_send(msg)

    def start_receive(self, msg: m.StartReceive) -> None:
        """Open (or create) the target and start the worker; raises OSError."""
        with self._drop_listener_on_error(msg):
            self._start_receive(msg)

    @contextlib.contextmanager
    def _drop_listener_on_error(self, msg: m.StartSend | m.StartReceive) -> Iterator[None]:
        """A refused start ends the transfer: its passive listener is closed (a pooled one
        emptied) too."""
        try:
            yield
        except OSError:
            if msg.xfer_id not in self.transfers:
                if listener := self.listeners.pop(msg.xfer_id, None):
                    listener.sock.close()
                self.refused(msg)
            raise

    def _start_send(self, msg: m.StartSend) -> None:
        self._need_listener(msg)
        real = self.storage.real(msg.path, allow_root=False)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file")
            if msg.offset < 0 or msg.offset > st.st_size:
                raise OSError(errno.EINVAL, "offset beyond the end of the file")
        except BaseException:
            os.close(fd)
            raise
        self._launch(msg, Kind.SEND, fd, msg.offset, real, None)

    def _start_receive(self, msg: m.StartReceive) -> None:
        self._need_listener(msg)
        real = self.storage.real(msg.path, allow_root=False)
        self.storage.ensure_parent(real)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC  # RDWR: CRC of the prefix
        temp: Path | None = None
        overwrite = False
        if msg.append or msg.offset:
            fd = os.open(real, flags, 0o644)
        else:
            if real.is_dir() and not real.is_symlink():
                raise IsADirectoryError(errno.EISDIR, "target is a directory")
            overwrite = os.path.lexists(real)
            temp = self.storage.temp_for(real)
            fd = os.open(temp, flags | os.O_EXCL, 0o644)
        try:
            size = os.fstat(fd).st_size
            if msg.append:
                start = size
            else:
                if msg.offset < 0 or msg.offset > size:
                    raise OSError(errno.EINVAL, "offset beyond the end of the file")
                os.ftruncate(fd, msg.offset)
                start = msg.offset
            os.lseek(fd, start, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            if temp is not None:
                temp.unlink(missing_ok=True)
            raise
        self._launch(msg, Kind.RECEIVE, fd, start, real, temp, overwrite)

    def abort(self, xfer_id: int) -> bool:
        """Stop a transfer or close a listener; True if there was something to stop."""
        if (listener := self.listeners.pop(xfer_id, None)) is not None:
            listener.sock.close()
            return True
        if (transfer := self.transfers.get(xfer_id)) is not None:
            transfer.abort()
            return True
        return False

    def finished(self, xfer_id: int) -> None:
        """The main loop took this transfer's TransferDone out of the outbox (posted after
        the transfer closed its descriptors: nothing to wait for)."""
        transfer = self.transfers.pop(xfer_id, None)
        if transfer is not None:
            self._moved_done[transfer.kind] += transfer.bytes  # its worker is done with it
        if transfer is not None and transfer.pool_port \
                and self.pooled.state(transfer.pool_port) is PortState.LENT:  # not after shutdown()
            self.pooled.give_back(transfer.pool_port, clean=not transfer.unclean)
        self.ended.pop(xfer_id, None)

    def expire_listeners(self, now: float) -> list[int]:
        """Close listeners nobody claimed within data_timeout; returns their xfer_ids."""
        gone = [x for x, listener in self.listeners.items() if listener.expires <= now]
        for xfer_id in gone:
            self.listeners.pop(xfer_id).sock.close()
        return gone

    def shutdown(self, timeout: float) -> None:
        """Abort everything and wait (bounded) for the workers to post their results."""
        for xfer_id in list(self.listeners):
            self.abort(xfer_id)
        for transfer in list(self.transfers.values()):
            transfer.abort()
        deadline = time.monotonic() + timeout
        for ended in list(self.ended.values()):
            ended.wait(max(0.0, deadline - time.monotonic()))
        self.pool.close()
        for sock in self.pooled.listeners():
            sock.close()
        self.pooled.clear()

    # ------------------------------------------------------------ internals

    def _need_listener(self, msg: m.StartSend | m.StartReceive) -> None:
        xfer_id, connect_to, port = msg.xfer_id, msg.connect_to, msg.pool_port
        if xfer_id in self.transfers:
            raise OSError(errno.EEXIST, f"transfer {xfer_id} already running")
        if msg.tls and not self.mover.tls:
            raise OSError(errno.EPROTONOSUPPORT, NO_TLS_CERTIFICATE)
        if port:
            self.pooled.check_lendable(port)
            if connect_to is not None or not msg.allowed_ip:
                raise OSError(errno.EINVAL, "a pooled port needs allowed_ip and no connect_to")
            self._check_capacity(xfer_id)
            return
        if connect_to is None and xfer_id not in self.listeners:
            raise OSError(errno.ENOTCONN, f"no passive listener for transfer {xfer_id}")
        if connect_to is not None and xfer_id not in self.listeners:
            self._check_capacity(xfer_id)

    def _launch(self, msg: m.StartSend | m.StartReceive, kind: Kind, fd: int, start: int,
                real: Path, temp: Path | None, overwrite: bool = False) -> None:
        xfer_id, connect_to, port = msg.xfer_id, msg.connect_to, msg.pool_port
        listener = self.listeners.pop(xfer_id, None)
        if (connect_to is not None or port) and listener is not None:
            listener.sock.close()  # active mode or a pooled port wins over a stale PRET listener
            listener = None
        if port:
            listener = Listener(self.pooled.lend(port, xfer_id), msg.allowed_ip, 0.0, pooled=True)
        transfer = Transfer(xfer_id, kind, fd, start, real, temp, listener, connect_to, overwrite,
                            ascii=msg.ascii, tls=msg.tls)
        transfer.pool_port = port
        self.transfers[xfer_id] = transfer
        self.ended[xfer_id] = transfer.ended
        if kind is Kind.SEND and listener is not None and not transfer.ascii and not transfer.tls \
                and self.mover.send_inline(transfer):
            return
        try:
            self.pool.submit(transfer)
        except RuntimeError as exc:
            if port:
                self.pooled.give_back(port, clean=True)
            del self.transfers[xfer_id], self.ended[xfer_id]
            self._moved_done[kind] += transfer.bytes  # an inline send may have begun
            transfer.close_all()
            if temp is not None:
                temp.unlink(missing_ok=True)
            raise OSError(errno.EAGAIN, f"cannot start a worker: {exc}") from None

    # ------------------------------------------------------------ worker threads
