"""The one way worker threads talk to the slave's main loop, plus the checksum job pool.

Owns: a thread-safe queue of finished results (wire messages) and a socketpair whose read
end the main zmq.Poller watches, so a worker's result wakes the loop at once. Workers
never touch zmq sockets; only the main loop sends what it takes out of the outbox.

Must not: encode or send wire messages, or hold transfer state.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import zlib
from typing import Callable

from common import messages as m

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class Outbox:
    """Worker threads put results; the main loop polls `fileno()` and calls `drain()`."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[m.Message] = queue.SimpleQueue()
        self._rx, self._tx = socket.socketpair()
        self._rx.setblocking(False)
        self._tx.setblocking(False)

    def fileno(self) -> int:
        return self._rx.fileno()

    def put(self, msg: m.Message) -> None:
        """Thread-safe: queue `msg` and wake the main loop."""
        self._queue.put(msg)
        self.wake()

    def wake(self) -> None:
        """Wake the main loop without a result (also safe from a signal handler)."""
        try:
            self._tx.send(b"\0")
        except OSError:
            pass  # buffer full: a wake-up is already pending

    def drain(self) -> list[m.Message]:
        """Everything queued so far (main loop only). Wake bytes are consumed first, so a
        result queued after this call always leaves a byte behind for the next poll."""
        while True:
            try:
                if not self._rx.recv(4096):
                    break
            except OSError:
                break
        out: list[m.Message] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._rx.close()
        self._tx.close()


def crc_range(fd: int, start: int, end: int | None, buf: memoryview,
              stop: Callable[[], bool] = lambda: False, crc: int = 0) -> tuple[int, int]:
    """(CRC32, bytes read) of fd's bytes [start, end) read in chunks with pread, continuing
    from `crc` (the CRC of the bytes before `start`, when the caller has it).

    `end` None means to the end of the file. Raises InterruptedError when `stop()` turns
    true between chunks (an aborted transfer), OSError from the reads.
    """
    pos = start
    while end is None or pos < end:
        if stop():
            raise InterruptedError("stopped")
        want = len(buf) if end is None else min(len(buf), end - pos)
        n = os.preadv(fd, [buf[:want]], pos)
        if n == 0:
            break
        crc = zlib.crc32(buf[:n], crc)
        pos += n
    return crc, pos - start


class JobPool:
    """A few daemon threads running short file jobs (Checksum) off the main loop."""

    def __init__(self, outbox: Outbox, workers: int = 2) -> None:
        self._outbox = outbox
        self._jobs: queue.SimpleQueue[Callable[[], m.Message] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"job-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], m.Message]) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._outbox.put(job())
            except Exception:  # a job must turn its own errors into replies
                log.exception("job failed")

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


def checksum_job(req_id: int, real: str, start: int, end: int | None) -> m.Message:
    """Run in a JobPool thread: ChecksumResult (size = the file's size) or OpResult error."""
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return m.OpResult(req_id=req_id, ok=False, error=exc.strerror or str(exc), errno=exc.errno or 0)
    try:
        size = os.fstat(fd).st_size
        crc, _ = crc_range(fd, start, end, memoryview(bytearray(CHUNK)))
        return m.ChecksumResult(req_id=req_id, crc32=crc, size=size)
    except OSError as exc:
        return m.OpResult(req_id=req_id, ok=False, error=exc.strerror or str(exc), errno=exc.errno or 0)
    finally:
        os.close(fd)
