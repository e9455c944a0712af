"""The slave's worker side: the threads that move a transfer's bytes and what they use.

A pooled worker thread per data connection (WorkerPool) runs DataMover.work: it accepts or
connects the data connection, moves the bytes with os.sendfile (TYPE I) or a read, convert
and send loop (TYPE A, slave/ascii.py), or recv_into a reusable 1 MiB buffer with CRC32 on
the fly (a helper thread takes the CRC over past CRC_HELPER_AFTER), fsyncs, and hands a
TransferDone to the Outbox. A small download whose client is already connected is sent from
the main loop when non-blocking sendfile takes it all (send_inline). Which transfer may
start, on which listener, is decided by slave.transfers.TransferManager; nothing here
decides that.

Threads: a worker touches only its own Transfer and the Outbox. Abort shuts the worker's
sockets down (waking any blocked call) but never closes them: only the worker closes its
file descriptors, so a number is never reused under a thread still using it.

Uploads with offset 0 and no append go to a temp file renamed over the target at the end
(a concurrent download of the old file is not disturbed). A failed or aborted upload to a
new name keeps what arrived under that name (FTP convention, so REST can resume) and
reports its size and CRC; one that failed before any byte arrived leaves the target
untouched (size 0, crc None). A failed overwrite (the target existed when the upload
started) removes the temp file and leaves the old file intact: TransferDone(ok=False,
kept_old=True, size=the old file's size, crc32=None, bytes=what arrived).
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import queue
import socket
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

from OpenSSL import SSL

from common import messages as m
from common.config import SlaveSection
from common.tlsdata import TlsStream, server_context
from slave import ascii, dataconn
from slave.outbox import CHUNK, Outbox, crc_range

log = logging.getLogger(__name__)

SENDFILE_CHUNK = 8 * 1024 * 1024
WRITEBACK_BYTES = 8 * 1024 * 1024
"""With fsync on, an upload starts the disk write-back of every 8 MiB it has written, so
the final fsync waits for the last few MiB instead of the whole file (receiving and
writing to disk overlap)."""
CRC_HELPER_AFTER = 8 * 1024 * 1024
"""An upload past this size hands its CRC32 to a helper thread that reads the written bytes
back from the page cache, so checksumming overlaps receiving instead of adding to it."""
INLINE_SEND_MAX = 256 * 1024
"""A download of at most this many bytes whose client is already connected starts in the
main loop with non-blocking sendfile: when the socket takes it all (most small files) no
worker thread is involved at all; what would block goes on in a worker."""
ASCII_CHUNK = 4 * 1024 * 1024
"""A TYPE A download reads, converts (LF -> CRLF) and sends this much at a time; TYPE I
never goes through Python (sendfile)."""
TLS_CHUNK = 4 * 1024 * 1024
"""A PROT P download reads and SSL_writes this much at a time (one reused buffer)."""
NO_TLS_CERTIFICATE = "PROT P refused: this slave has no TLS certificate (slave.tls_certfile)"
PROGRESS_WAIT_S = 0.5
"""A send waits at most this long in one sendfile call, so its byte count stays fresh."""
WORKER_IDLE_S = 60.0
"""A pooled worker thread with no transfer to run for this long exits."""


class WorkerPool:
    """Reusable worker threads, one per concurrent transfer.

    Starting a thread per transfer (clone, an 8 MiB stack mapped and unmapped, a GIL
    hand-over before Started can go out) cost more than a small file's whole transfer;
    a worker that finishes waits for the next one instead, and exits after WORKER_IDLE_S.
    `submit` never queues behind a busy worker: with no idle worker it starts a new one.
    """

    def __init__(self, run: Callable[[Transfer], None], idle_s: float = WORKER_IDLE_S) -> None:
        self._run = run
        self._idle_s = idle_s
        self._jobs: queue.SimpleQueue[Transfer | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.idle = 0
        self.threads = 0

    def submit(self, job: Transfer) -> None:
        """Run `job` on a worker; raises RuntimeError when no thread can be started."""
        with self._lock:
            if self.idle > 0:
                self.idle -= 1
                self._jobs.put(job)  # under the lock: see _next()
                return
            self.threads += 1
        try:
            threading.Thread(target=self._loop, args=(job,), daemon=True, name="xfer-worker").start()
        except BaseException:
            with self._lock:
                self.threads -= 1
            raise

    def close(self) -> None:
        """Let the idle workers exit (busy ones exit after their transfer)."""
        with self._lock:
            for _ in range(self.idle):
                self._jobs.put(None)

    def _loop(self, job: Transfer | None) -> None:
        while job is not None:
            self._run(job)
            job = self._next()

    def _next(self) -> Transfer | None:
        with self._lock:
            self.idle += 1
        try:
            job = self._jobs.get(timeout=self._idle_s)
        except queue.Empty:
            pass
        else:
            if job is None:  # close()
                with self._lock:
                    self.idle -= 1
                    self.threads -= 1
            return job
        with self._lock:
            # A submit may have counted on this worker (idle -= 1) and queued its job
            # just before the timeout: that job is in the queue now, so take it.
            try:
                return self._jobs.get_nowait()
            except queue.Empty:
                self.idle -= 1
                self.threads -= 1
                return None


def _writeback_starter() -> Callable[[int, int, int], None] | None:
    """Linux sync_file_range(SYNC_FILE_RANGE_WRITE): start writing a range to disk without
    waiting (a hint; errors surface at the final fsync). None where unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    func.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        func(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; ctypes releases the GIL

    return start


_start_writeback = _writeback_starter()


class _CrcHelper:
    """CRC32 of an upload's bytes [pos, end), computed by its own thread from the file (pread)
    as the receiving thread reports how far it has written."""

    def __init__(self, fd: int, crc: int, pos: int) -> None:
        self._fd = fd
        self._crc = crc
        self._pos = self._end = pos
        self._failed = False
        self._closed = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True, name="upload-crc")
        self._thread.start()

    def written_to(self, end: int) -> None:
        with self._cv:
            self._end = end
            self._cv.notify()

    def finish(self) -> int | None:
        """Wait for the CRC of everything reported; None if reading the file back failed."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()
        return None if self._failed else self._crc

    def _run(self) -> None:
        buf = memoryview(bytearray(CHUNK))
        while True:
            with self._cv:
                while self._pos >= self._end and not self._closed:
                    self._cv.wait()
                if self._pos >= self._end:
                    return
                end = self._end
            try:
                self._crc, read = crc_range(self._fd, self._pos, end, buf, crc=self._crc)
            except OSError:
                read = -1
            if read != end - self._pos:
                self._failed = True
                return
            self._pos = end


class Kind(enum.Enum):
    SEND = "send"
    RECEIVE = "receive"


class Aborted(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ECONNABORTED, "aborted")


class Listener:
    """A passive listener for one transfer: opened by Listen (closed once the connection is
    accepted, or when nobody claims it), or a pooled one lent for the transfer."""

    def __init__(self, sock: socket.socket, allowed_ip: str, expires: float,
                 pooled: bool = False) -> None:
        self.sock = sock
        self.allowed_ip = allowed_ip
        self.expires = expires
        self.pooled = pooled
        """Pooled: other transfers use it later, so the transfer never closes or shuts it
        down; it empties the accept queue when it ends instead."""


class Transfer:
    """One running transfer; its sockets are shared with the main loop only for abort()."""

    def __init__(self, xfer_id: int, kind: Kind, fd: int, start: int, real: Path,
                 temp: Path | None, listener: Listener | None,
                 connect_to: tuple[str, int] | None, overwrite: bool = False,
                 ascii: bool = False, tls: bool = False) -> None:
        self.xfer_id = xfer_id
        self.ascii = ascii
        self.tls = tls
        """PROT P: this slave is the TLS server on the data connection (common.tlsdata)."""
        """TYPE A: line endings are converted (slave/ascii.py); `bytes` counts the bytes on
        the data connection, the reported size and CRC are the stored file's."""
        self.overwrite = overwrite
        """A temp-file upload whose target existed at the start: a failure keeps the old file."""
        self.kind = kind
        self.fd = fd
        self.start = start
        self.real = real
        self.temp = temp
        self.listener = listener
        self.connect_to = connect_to
        self.bytes = 0
        self.unclean = False
        """Its pooled listener's accept queue could not be emptied at the end (see _post)."""
        self.conn: socket.socket | None = None
        """The data connection once accepted or connected."""
        self.pool_port = 0
        """The pooled listener's port when the transfer borrowed one."""
        self.aborted = False
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [listener.sock] if listener and not listener.pooled else []

    def adopt(self, sock: socket.socket) -> None:
        """Register a new socket so abort() can reach it; raises Aborted if too late."""
        with self._lock:
            self._sockets.append(sock)
            if self.aborted:
                raise Aborted()

    def accepted(self, conn: socket.socket) -> None:
        """`conn` came in on the listener: Abort can reach it, and a Listen listener (unlike
        a pooled one) has served its purpose."""
        self.adopt(conn)
        self.conn = conn
        if self.listener is not None and not self.listener.pooled:
            self.close_socket(self.listener.sock)

    def log_refused(self, ip: str) -> None:
        log.warning("xfer %d: refused data connection from %s", self.xfer_id, ip)

    def abort(self) -> None:
        """Main loop: wake the worker out of accept/connect/recv/sendfile."""
        with self._lock:
            self.aborted = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close_socket(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._sockets:
                self._sockets.remove(sock)
            sock.close()

    def close_all(self) -> None:
        """Worker only, at the end."""
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
        os.close(self.fd)


def _os_error(exc: BaseException) -> tuple[str, int]:
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)), (exc.errno or 0)
    return str(exc) or type(exc).__name__, 0


class DataMover:
    """What the worker threads (and the main loop's inline send) do with a started transfer."""

    def __init__(self, config: SlaveSection, outbox: Outbox) -> None:
        self.config = config
        self.outbox = outbox
        self.tls: dict[Kind, SSL.Context] = {}
        """This slave's certificate for PROT P data connections (slave.tls_certfile), for
        sends (TLS 1.2 or 1.3) and receives (TLS 1.2 without session tickets: tlsdata)."""
        if config.tls_certfile:
            cert, key = config.tls_certfile, config.tls_keyfile
            self.tls = {Kind.SEND: server_context(cert, key),
                        Kind.RECEIVE: server_context(cert, key, for_uploads=True)}
        self._probe = bytearray(INLINE_SEND_MAX)
        """Main loop only: send_inline's page-cache probe."""

    def send_inline(self, t: Transfer) -> bool:
        """Main loop: send a small download at once if its client is connected and the
        socket takes every byte without blocking; True if it ended here (result posted).
        False: a worker must run (or continue) it."""
        assert t.listener is not None
        size = os.fstat(t.fd).st_size - t.start
        if size > INLINE_SEND_MAX or not self._cached(t.fd, t.start, size):
            return False
        listener = t.listener
        try:
            conn = dataconn.accept_waiting(listener.sock, listener.allowed_ip, t.log_refused)
        except OSError:
            conn = None  # the worker's accept deals with it
        if conn is None:
            return False
        t.accepted(conn)
        error: OSError | None = None
        conn.setblocking(False)
        try:
            while n := os.sendfile(conn.fileno(), t.fd, t.start, INLINE_SEND_MAX):
                t.start += n
                t.bytes += n
            conn.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            conn.setblocking(True)
            return False  # the worker goes on from t.start
        except OSError as exc:
            error = exc
        self._post(t, self._outcome(t, lambda t: self._done(t, error, os.fstat(t.fd), None)))
        return True

    def _cached(self, fd: int, offset: int, size: int) -> bool:
        """The file's bytes [offset, offset+size) are in the page cache, so sending them cannot
        block the main loop on the disk (RWF_NOWAIT reads only cached pages)."""
        if size <= 0:
            return True
        try:
            return os.preadv(fd, [memoryview(self._probe)[:size]], offset, os.RWF_NOWAIT) == size
        except (OSError, AttributeError):  # not cached (EAGAIN), or no RWF_NOWAIT here
            return False

    def work(self, t: Transfer) -> None:
        self._post(t, self._outcome(t, self._send if t.kind is Kind.SEND else self._receive))

    def _outcome(self, t: Transfer, run: Callable[[Transfer], m.TransferDone]) -> m.TransferDone:
        try:
            return run(t)
        except BaseException as exc:  # never lose a completion
            log.exception("transfer %d crashed", t.xfer_id)
            text, code = _os_error(exc)
            if t.overwrite and t.temp is not None:
                t.temp.unlink(missing_ok=True)  # the old file stays
            return m.TransferDone(xfer_id=t.xfer_id, ok=False, bytes=t.bytes, size=0,
                                  aborted=t.aborted, error=text, errno=code,
                                  kept_old=t.overwrite and t.temp is not None)

    def _post(self, t: Transfer, done: m.TransferDone) -> None:
        """Close the transfer's descriptors, then hand its result to the main loop."""
        try:
            t.close_all()
        except OSError:
            pass
        if t.listener is not None and t.listener.pooled:
            # A connection that arrived after ours (a client retrying) must not become
            # the next transfer's; the master lends the port again after TransferDone.
            try:
                dataconn.drain_backlog(t.listener.sock)
                t.unclean = dataconn.has_pending(t.listener.sock)
            except OSError:
                t.unclean = True
        self.outbox.put(done)
        t.ended.set()

    def _connect(self, t: Transfer) -> socket.socket | TlsStream:
        """The data connection: accept on the listener or connect out, then (PROT P) the
        TLS handshake as the server. Raises OSError."""
        timeout = float(self.config.data_timeout)
        upload = t.kind is Kind.RECEIVE
        if t.listener is not None:
            conn = dataconn.accept_from(
                t.listener.sock, t.listener.allowed_ip, time.monotonic() + timeout,
                on_refused=t.log_refused,
                cancelled=(lambda: t.aborted) if t.listener.pooled else None)
            t.accepted(conn)
        else:
            assert t.connect_to is not None
            conn = dataconn.connect_socket(self.config.data_bind, upload)
            t.adopt(conn)
            dataconn.connect(conn, (t.connect_to[0], int(t.connect_to[1])), timeout)
            if t.aborted:
                raise Aborted()
        if t.tls:
            if not self.tls:
                raise OSError(errno.EPROTONOSUPPORT, NO_TLS_CERTIFICATE)
            dataconn.set_timeout(conn, min(timeout, PROGRESS_WAIT_S))  # an abort is seen this often
            stream = TlsStream(self.tls[t.kind], conn)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    stream.handshake(min(deadline, time.monotonic() + PROGRESS_WAIT_S))
                    break
                except OSError as exc:
                    if exc.errno != errno.ETIMEDOUT or t.aborted or time.monotonic() >= deadline:
                        raise
            dataconn.set_timeout(conn, timeout)
            return stream
        dataconn.set_timeout(conn, timeout)
        return conn

    def _send(self, t: Transfer) -> m.TransferDone:
        error: BaseException | None = None
        try:
            conn: socket.socket | TlsStream = t.conn or self._connect(t)
            pos = t.start
            # A short send timeout: a slow client's sendfile returns what it sent within
            # PROGRESS_WAIT_S, so t.bytes (TransferProgress) moves about once a second; a
            # stall is data_timeout seconds without a single byte.
            limit = float(self.config.data_timeout)
            dataconn.set_timeout(conn.sock if isinstance(conn, TlsStream) else conn,
                                 min(limit, PROGRESS_WAIT_S))
            if t.ascii:
                self._send_ascii(t, conn, limit)
                conn.shutdown(socket.SHUT_WR)
                return self._done(t, None, os.fstat(t.fd), None)
            if isinstance(conn, TlsStream):
                self._send_tls(t, conn, limit)
                conn.shutdown(socket.SHUT_WR)
                return self._done(t, None, os.fstat(t.fd), None)
            out = conn.fileno()
            last_progress = time.monotonic()
            while True:
                try:
                    n = os.sendfile(out, t.fd, pos, SENDFILE_CHUNK)
                except OSError as exc:
                    _go_on_if_only_stalled(t, exc, last_progress, limit)
                    continue
                if n == 0:
                    break
                pos += n
                t.bytes += n
                last_progress = time.monotonic()
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            error = exc
        st = os.fstat(t.fd)
        return self._done(t, error, st, None)

    def _send_tls(self, t: Transfer, conn: TlsStream, limit: float) -> None:
        """PROT P, TYPE I: no sendfile through TLS here (common.tlsdata: no kTLS), so read
        TLS_CHUNK bytes at a time into one buffer and SSL_write them. The same stall rule as
        sendfile. Raises OSError."""
        buf = bytearray(TLS_CHUNK)
        pos, last_progress = t.start, time.monotonic()
        while n := os.preadv(t.fd, [buf], pos):
            pos += n
            view = memoryview(buf)[:n]
            while view:
                try:
                    sent = conn.send(view)  # SSL_write: whole TLS records, retried after a stall
                except OSError as exc:
                    _go_on_if_only_stalled(t, exc, last_progress, limit)
                    continue
                view = view[sent:]
                t.bytes += sent
                last_progress = time.monotonic()

    def _send_ascii(self, t: Transfer, conn: socket.socket | TlsStream, limit: float) -> None:
        """TYPE A: read the file from t.start, convert LF -> CRLF, send it. The same stall
        rule as sendfile: data_timeout seconds without a byte accepted. Raises OSError."""
        pos, after_cr = t.start, False
        last_progress = time.monotonic()
        while data := os.pread(t.fd, ASCII_CHUNK, pos):
            pos += len(data)
            out, after_cr = ascii.encode_chunk(data, after_cr)
            view = memoryview(out)
            while view:
                try:
                    n = conn.send(view)
                except OSError as exc:
                    _go_on_if_only_stalled(t, exc, last_progress, limit)
                    continue
                view = view[n:]
                t.bytes += n
                last_progress = time.monotonic()

    def _receive(self, t: Transfer) -> m.TransferDone:
        view = memoryview(bytearray(CHUNK))
        error: BaseException | None = None
        crc: int | None = None
        helper: _CrcHelper | None = None
        try:
            crc, _ = crc_range(t.fd, 0, t.start, view, lambda: t.aborted)
            conn = self._connect(t)
            writeback = _start_writeback if self.config.fsync else None
            pos = flushed = t.start
            held_cr = False  # TYPE A: a CR that ended the last chunk, not written yet
            while True:
                try:
                    n = conn.recv_into(view)
                except OSError as exc:
                    if dataconn.stalled(exc):
                        raise dataconn.DataTimeout(errno.ETIMEDOUT, "data connection stalled") from None
                    raise
                if n == 0:
                    if isinstance(conn, TlsStream):
                        conn.answer_close()  # our close_notify answers the client's
                    break
                chunk = view[:n]
                if t.ascii:
                    stored, held_cr = ascii.decode_chunk(chunk, held_cr)
                    chunk = memoryview(stored)
                size = len(chunk)
                try:
                    written = 0
                    while written < size:
                        written += os.write(t.fd, chunk[written:])
                except OSError:
                    crc = None  # the file now holds bytes the CRC does not cover
                    raise
                t.bytes += n
                pos += size
                if helper is not None:
                    helper.written_to(pos)
                else:
                    crc = zlib.crc32(chunk, crc)
                    if t.bytes >= CRC_HELPER_AFTER:
                        try:
                            helper = _CrcHelper(t.fd, crc, pos)
                        except RuntimeError:
                            pass  # no thread: keep checksumming here
                if writeback is not None and pos - flushed >= WRITEBACK_BYTES:
                    writeback(t.fd, flushed, pos - flushed)
                    flushed = pos
        except InterruptedError:
            error = Aborted()
        except OSError as exc:
            error = exc
        finally:
            if helper is not None:
                helper_crc = helper.finish()  # before the fd can be closed
        if helper is not None and crc is not None:
            crc = helper_crc
        return self._finish_upload(t, error, crc)

    def _finish_upload(self, t: Transfer, error: BaseException | None,
                       crc: int | None) -> m.TransferDone:
        failed = error is not None or t.aborted
        if t.temp is not None and failed and t.overwrite:
            # A failed overwrite: the old file stays as it was (DESIGN-NOTES), the bytes go.
            t.temp.unlink(missing_ok=True)
            try:
                old: os.stat_result | None = os.stat(t.real, follow_symlinks=False)
            except OSError:
                old = None
            return self._done(t, error or Aborted(), old, None, kept_old=True)
        if t.temp is not None and failed and t.bytes == 0:
            t.temp.unlink(missing_ok=True)  # nothing arrived: leave the target untouched
            return self._done(t, error or Aborted(), None, None)
        try:
            if self.config.fsync:
                os.fsync(t.fd)
            st = os.fstat(t.fd)
            if t.temp is not None:
                os.rename(t.temp, t.real)
            if self.config.fsync:
                _fsync_dir(t.real.parent)
        except OSError as exc:
            return self._done(t, error or exc, None, None)
        return self._done(t, error, st, crc)

    def _done(self, t: Transfer, error: BaseException | None, st: os.stat_result | None,
              crc: int | None, kept_old: bool = False) -> m.TransferDone:
        if t.aborted:
            error = Aborted()
        text, code = _os_error(error) if error is not None else ("", 0)
        if error is not None and not t.aborted:
            log.info("xfer %d %s failed after %d bytes: %s", t.xfer_id, t.kind.value, t.bytes, text)
        return m.TransferDone(
            xfer_id=t.xfer_id, ok=error is None, bytes=t.bytes,
            size=st.st_size if st is not None else 0,
            crc32=crc if st is not None else None,
            mtime_ms=st.st_mtime_ns // 1_000_000 if st is not None else 0,
            aborted=t.aborted, error=text, errno=code, kept_old=kept_old)


def _go_on_if_only_stalled(t: Transfer, exc: OSError, last_progress: float, limit: float) -> None:
    """Called from the `except` of a send: returns when the socket only would block (try
    again); re-raises any other error; raises DataTimeout when the transfer was aborted or
    no byte went out for `limit` seconds."""
    if not dataconn.stalled(exc):
        raise exc
    if t.aborted or time.monotonic() - last_progress >= limit:
        raise dataconn.DataTimeout(errno.ETIMEDOUT, "data connection stalled") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
