"""The durable queue of operations a slave still owes the metadata tree (a mixin of
master.vfs.VirtualFS, sharing its SQLite connection and transactions).

Owns the `pending_ops` table: every Delete, Rename or RemoveDir that follows a committed
change (DELE, RNTO, RMD, the stale copies after an overwrite, a merge conflict's rename)
is inserted in the same transaction as the change, before the client hears the reply,
and removed only when the slave has answered it. A slave that is offline (or a master
that crashed before sending) therefore gets it later: the master replays a slave's queue,
in insertion order, before merging that slave's inventory. No sockets, no clock.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Iterable

import msgspec

from common import messages as m

log = logging.getLogger(__name__)

REPLAY_BATCH = 200
"""Queued operations loaded (and sent) at a time."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(m.SlaveCommand)


@dataclass(frozen=True, slots=True)
class QueuedOp:
    op_id: int
    slave: str
    cmd: m.SlaveCommand
    """With req_id 0: the sender allocates one."""


def _op_paths(cmd: m.SlaveCommand) -> list[str]:
    if isinstance(cmd, m.Rename):
        return [cmd.src, cmd.dst]
    return [getattr(cmd, "path", "/")]


class OpQueueMixin:
    """Needs `_db` (sqlite3.Connection) and `_tx()` from VirtualFS."""

    _db: sqlite3.Connection

    def enqueue(self, ops: Iterable[tuple[str, m.SlaveCommand]]) -> list[QueuedOp]:
        """Queue (slave, command) pairs durably, in order; returns them with their ids."""
        queued: list[QueuedOp] = []
        with self._tx() as db:  # type: ignore[attr-defined]
            for slave, cmd in ops:
                cmd = msgspec.structs.replace(cmd, req_id=0)
                op_id = db.execute(
                    "INSERT INTO pending_ops(slave, kind, path, body) VALUES (?, ?, ?, ?)",
                    (slave, type(cmd).__name__, _op_paths(cmd)[0], _encoder.encode(cmd))).lastrowid
                queued.append(QueuedOp(op_id, slave, cmd))
        return queued

    def queued_ops(self, slave: str, after: int = 0, limit: int = REPLAY_BATCH) -> list[QueuedOp]:
        """The oldest queued operations of `slave` with an id above `after`."""
        rows = self._db.execute(
            "SELECT id, body FROM pending_ops WHERE slave = ? AND id > ? ORDER BY id LIMIT ?",
            (slave, after, limit)).fetchall()
        out = []
        for op_id, body in rows:
            try:
                out.append(QueuedOp(op_id, slave, _decoder.decode(body)))
            except msgspec.DecodeError:
                log.error("queued operation %d for %s is unreadable: dropped", op_id, slave)
                self.op_done(op_id, failed=True)
        return out

    def queued_count(self, slave: str) -> int:
        count: int = self._db.execute("SELECT count(*) FROM pending_ops WHERE slave = ?",
                                      (slave,)).fetchone()[0]
        return count

    def op_done(self, op_id: int, failed: bool = False) -> None:
        """The slave answered operation `op_id`: forget it. `failed` (the slave refused it):
        the directories it touched are marked for a full listing at that slave's next merge,
        so the tree is reconciled with what the slave really has."""
        with self._tx() as db:  # type: ignore[attr-defined]
            row = db.execute("SELECT slave, body FROM pending_ops WHERE id = ?", (op_id,)).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM pending_ops WHERE id = ?", (op_id,))
            if failed:
                try:
                    cmd = _decoder.decode(row[1])
                except msgspec.DecodeError:
                    return
                for path in _op_paths(cmd):
                    self.invalidate_summary(row[0], path)  # type: ignore[attr-defined]
                    parent = path.rpartition("/")[0] or "/"
                    self.invalidate_summary(row[0], parent)  # type: ignore[attr-defined]

    def _queued_sources(self, slave: str) -> frozenset[str]:
        """Paths that `slave`'s queued Deletes and Renames will take away (usually none)."""
        return frozenset(p for (p,) in self._db.execute(
            "SELECT path FROM pending_ops WHERE slave = ? AND kind IN ('Delete', 'Rename')", (slave,)))

    def known_slaves(self) -> list[str]:
        """Every slave whose inventory was ever merged."""
        return [s for (s,) in self._db.execute("SELECT slave FROM slave_gens ORDER BY slave")]

    def _cancel_queued_deletes(self, slave: str, path: str) -> None:
        """`slave` now holds fresh content at `path`: an older queued Delete of that path
        must not remove it when replayed."""
        self._db.execute("DELETE FROM pending_ops WHERE slave = ? AND kind = 'Delete' AND path = ?",
                         (slave, path))
