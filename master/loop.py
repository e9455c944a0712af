"""The master's helpers for pyftpdlib's IOLoop: callbacks posted from other threads (the
Waker) and zmq sockets watched by the loop (ZmqReader).

pyftpdlib's scheduler is not thread-safe and its loop has no wake-up of its own, so worker
threads (relays, password checks) and signal handlers never touch the loop directly: they
post to the Waker, whose self-pipe wakes the loop.
"""

from __future__ import annotations

import logging
import os
import queue
from typing import Any, Callable

import zmq

log = logging.getLogger(__name__)


class Waker:
    """A self-pipe registered in the IOLoop: `post(fn, *args)` from any thread (or a signal
    handler) runs fn(*args) in the loop thread soon after."""

    def __init__(self, ioloop: Any) -> None:
        self.ioloop = ioloop
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._fileno = self._r
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.SimpleQueue()
        self._closed = False
        ioloop.register(self._r, self, ioloop.READ)

    @property
    def write_fd(self) -> int:
        return self._w

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        self._queue.put((fn, args))
        try:
            os.write(self._w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full or closed: a wake-up is already pending

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self.run_pending()

    def run_pending(self) -> None:
        while True:
            try:
                fn, args = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                fn(*args)
            except Exception:
                log.exception("error in a callback posted to the loop")

    def handle_write_event(self) -> None:  # pragma: no cover - never registered for write
        pass

    def handle_close(self) -> None:
        pass

    def handle_error(self) -> None:
        log.exception("error in the loop waker")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.ioloop.unregister(self._r)
            os.close(self._r)
            os.close(self._w)


class ZmqReader:
    """Registers a zmq socket's FD in pyftpdlib's IOLoop (the interface asyncore.read needs)."""

    def __init__(self, ioloop: Any, sock: zmq.SyncSocket, on_readable: Callable[[], None]) -> None:
        self.ioloop = ioloop
        self.sock = sock
        self._on_readable = on_readable
        self._fileno = sock.getsockopt(zmq.FD)
        self._closed = False
        ioloop.register(self._fileno, self, ioloop.READ)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        self._on_readable()

    def handle_write_event(self) -> None:  # pragma: no cover - never registered for write
        pass

    def handle_close(self) -> None:
        log.warning("zmq fd %s reported an error condition", self._fileno)

    def handle_error(self) -> None:
        log.exception("error while handling a zmq socket")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.ioloop.unregister(self._fileno)
            self.sock.close(linger=0)
