"""The slave's pooled passive listeners as one table: port -> (listener, state).

Pure: no socket is read or closed here; the listener object is only carried. A port is
FREE (may be lent), LENT to one transfer until that transfer's result is taken, or DIRTY
(its accept queue could not be emptied at the end of a transfer: refused until a ClearPort
empties it). A move the table does not allow raises PoolRefusal with the errno the master
is told.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

L = TypeVar("L")


class PortState(enum.Enum):
    FREE = "free"
    LENT = "lent"
    DIRTY = "dirty"


class PoolRefusal(OSError):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)


@dataclass(slots=True)
class PooledPort(Generic[L]):
    listener: L
    state: PortState = PortState.FREE
    xfer_id: int = 0
    """With LENT: the transfer it is lent to."""


class PortPool(Generic[L]):
    def __init__(self) -> None:
        self._ports: dict[int, PooledPort[L]] = {}

    def __len__(self) -> int:
        return len(self._ports)

    def __contains__(self, port: int) -> bool:
        return port in self._ports

    def ports(self) -> list[int]:
        return sorted(self._ports)

    def listeners(self) -> Iterator[L]:
        return (entry.listener for entry in self._ports.values())

    def state(self, port: int) -> PortState | None:
        entry = self._ports.get(port)
        return entry.state if entry is not None else None

    def add(self, port: int, listener: L) -> None:
        if port in self._ports:
            raise ValueError(f"port {port} is already pooled")
        self._ports[port] = PooledPort(listener)

    def clear(self) -> None:
        self._ports.clear()

    def _entry(self, port: int, missing: int) -> PooledPort[L]:
        entry = self._ports.get(port)
        if entry is None:
            raise PoolRefusal(missing, f"no pooled listener on port {port}")
        return entry

    def check_lendable(self, port: int) -> None:
        """Raise PoolRefusal unless `port` may be lent now."""
        entry = self._entry(port, errno.ENOTCONN)
        if entry.state is PortState.LENT:
            raise PoolRefusal(errno.EBUSY, f"pooled port {port} is in use by transfer {entry.xfer_id}")
        if entry.state is PortState.DIRTY:
            raise PoolRefusal(errno.EBUSY, f"pooled port {port} still holds connections: clear it first")

    def lend(self, port: int, xfer_id: int) -> L:
        """FREE -> LENT to `xfer_id`; the listener to accept on."""
        self.check_lendable(port)
        entry = self._ports[port]
        entry.state, entry.xfer_id = PortState.LENT, xfer_id
        return entry.listener

    def give_back(self, port: int, clean: bool) -> None:
        """LENT -> FREE, or DIRTY when its accept queue could not be emptied."""
        entry = self._ports.get(port)
        if entry is None or entry.state is not PortState.LENT:
            raise PoolRefusal(errno.EINVAL, f"pooled port {port} is not lent")
        entry.state = PortState.FREE if clean else PortState.DIRTY
        entry.xfer_id = 0

    def check_clearable(self, port: int) -> L:
        """The listener of `port` if a ClearPort may empty it now (FREE or DIRTY)."""
        entry = self._entry(port, errno.ENOENT)
        if entry.state is PortState.LENT:
            raise PoolRefusal(errno.EBUSY, f"pooled port {port} is in use by transfer {entry.xfer_id}")
        return entry.listener

    def cleared(self, port: int) -> None:
        """Its accept queue is empty: DIRTY (or FREE) -> FREE."""
        self.check_clearable(port)
        self._ports[port].state = PortState.FREE
