"""Upload outcomes that arrive together are recorded in one durable commit.

Each STOR's outcome used to cost one SQLite commit with synchronous=FULL (an fsync) on the
master's loop. The recorder collects the outcomes that arrive in one turn of the loop (the
TransferDones of one drain of the broker link) and records them with the queued Deletes of
their stale copies in one transaction (VirtualFS.record_uploads), then answers each transfer.
The 226 of each upload still goes out only after its record is durable.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Callable

from common import messages as m
from master.opqueue import QueuedOp
from master.transfer_state import Recorded
from master.vfs import Entry, UploadRecord, VirtualFS

log = logging.getLogger(__name__)

OnRecorded = Callable[[Recorded], None]


def settle(record: UploadRecord, result: tuple[Entry, list[QueuedOp]] | OSError,
           send_op: Callable[[QueuedOp], None],
           notify: Callable[[str, m.SlaveCommand], None]) -> Recorded:
    """What a committed record means for its upload: the stale copies' Deletes go out, or
    (the tree refused the name) the slave's file is deleted and the upload fails."""
    if isinstance(result, OSError):
        log.warning("upload of %s on %s not recorded (%s): deleting it", record.path,
                    record.slave, result)
        notify(record.slave, m.Delete(req_id=0, path=record.path))
        return Recorded("refused", result.strerror or "cannot record")
    _entry, ops = result
    for op in ops:
        send_op(op)
    return Recorded("ok")


def record_now(vfs: VirtualFS, record: UploadRecord, send_op: Callable[[QueuedOp], None],
               notify: Callable[[str, m.SlaveCommand], None]) -> Recorded:
    """Record one upload in a commit of its own (no recorder batching)."""
    try:
        [result] = vfs.record_uploads([record])
    except sqlite3.Error as exc:
        # Transient (disk full, I/O error, locked): the file stays on the slave, which
        # re-sends its TransferDone (no DoneAck) so the record is tried again.
        log.error("upload of %s on %s not recorded: metadata store failed (%s)", record.path,
                  record.slave, exc)
        return Recorded("retry")
    return settle(record, result, send_op, notify)


class UploadRecorder:
    def __init__(self, vfs: VirtualFS, ioloop: Any, send_op: Callable[[QueuedOp], None],
                 notify: Callable[[str, m.SlaveCommand], None]) -> None:
        self.vfs = vfs
        self.ioloop = ioloop
        self.send_op = send_op
        self.notify = notify
        self._pending: list[tuple[UploadRecord, OnRecorded]] = []
        self._scheduled = False
        self.commits = 0
        """Batches committed (for tests and SITE STATUS-like counters)."""

    def add(self, record: UploadRecord, on_recorded: OnRecorded) -> None:
        """Record `record` with the next batch; `on_recorded` gets the Recorded for it."""
        self._pending.append((record, on_recorded))
        if not self._scheduled:
            self._scheduled = True
            self.ioloop.call_later(0, self.flush, _errback=self._flush_failed)

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        self._scheduled = False
        if not batch:
            return
        try:
            results = self.vfs.record_uploads([record for record, _ in batch])
        except Exception as exc:  # never leave a transfer waiting for its answer
            # sqlite3.Error is transient (disk full, I/O error, locked): the files stay on their
            # slaves, which re-send their TransferDones (no DoneAck), so the records are tried
            # again.
            if isinstance(exc, sqlite3.Error):
                log.error("%d upload(s) not recorded: metadata store failed (%s)", len(batch), exc)
            else:
                log.exception("%d upload(s) not recorded", len(batch))
            for _, on_recorded in batch:
                self._answer(on_recorded, Recorded("retry"))
            return
        self.commits += 1
        for (record, on_recorded), result in zip(batch, results, strict=True):
            self._answer(on_recorded, settle(record, result, self.send_op, self.notify))

    def _flush_failed(self) -> None:
        log.exception("error while recording uploads")

    @staticmethod
    def _answer(on_recorded: OnRecorded, recorded: Recorded) -> None:
        try:
            on_recorded(recorded)
        except Exception:
            log.exception("error answering a recorded upload")
