"""Bringing a slave in line with the metadata tree: sending the durable queue of slave
operations (master.opqueue) and driving the paged inventory merge (master.merge).

Owns, per slave, the merge job (REPLAY -> SUMMARY -> LIST -> done) and the ids of queued
operations in flight. Lives in the master's IOLoop and talks to slaves only through
BrokerLink.request; never blocks: each step is one request whose reply schedules the next
(back-pressure: the next page is asked for only once the previous one is merged).

- REPLAY: the slave's queued operations are sent in insertion order, REPLAY_BATCH at a
  time, and the merge waits for every answer, so a file deleted or renamed while the slave
  was away is gone or renamed on its disk before its inventory is read.
- SUMMARY: the slave reports one digest per directory; `full` (forced, or no merge of this
  slave ever finished) marks every directory for listing, else only the changed ones.
- LIST: the marked directories are listed DIRS_PER_SCAN at a time and merged page by page.
- done: unseen replicas are dropped, the digests recorded, the slave marked online.
"""

from __future__ import annotations

import enum
import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import msgspec

from common import messages as m
from master.answers import AnswerCallback, SlaveAnswer, why
from master.opqueue import REPLAY_BATCH, QueuedOp
from master.slaves import SlaveRegistry, SlaveState

if TYPE_CHECKING:
    from master.vfs import VirtualFS


class SlaveRequests(Protocol):
    """What the syncer needs of the broker link (master.link.BrokerLink provides it)."""

    ioloop: Any

    def new_xfer_id(self) -> int: ...

    def request(self, slave: str, cmd: m.SlaveCommand, callback: AnswerCallback,
                timeout: float | None = None) -> int: ...

log = logging.getLogger("master.merge")

INVENTORY_PAGE = 2000
"""Entries per page: about 40 ms of merging, so other sessions wait at most that long."""
SUMMARY_PAGE = 64
"""Directory summaries per page (the slave scans each directory to build its summary)."""
DIRS_PER_SCAN = 256
DIRS_BYTES_PER_SCAN = 512 * 1024
MERGE_RETRY_S = 2.0
MERGE_MAX_ATTEMPTS = 5
FLUSH_EVERY_S = 15.0
"""How often the queues of online slaves are retried (operations that timed out)."""


class Phase(enum.Enum):
    REPLAY = "replay"
    SUMMARY = "summary"
    LIST = "list"


@dataclass(slots=True)
class MergeJob:
    slave: str
    incarnation: str
    attempts: int
    full: bool
    phase: Phase = Phase.REPLAY
    generation: int = 0
    scan: int = 0
    last_op: int = 0
    outstanding: int = 0
    dirs: list[str] | None = None
    to_list: int = 0
    adopted: int = 0
    confirmed: int = 0
    conflicts: int = 0
    updated: int = 0
    dropped: int = 0
    replayed: int = 0


class SlaveSync:
    """Queued-operation delivery and inventory merges for every slave of one master."""

    def __init__(self, link: SlaveRequests, vfs: VirtualFS, registry: SlaveRegistry) -> None:
        self.link = link
        self.vfs = vfs
        self.registry = registry
        self.jobs: dict[str, MergeJob] = {}
        self._inflight: set[int] = set()
        self._next_flush = 0.0

    # ------------------------------------------------------------ queued operations
    def send_op(self, op: QueuedOp, callback: Callable[[Any], None] | None = None) -> None:
        """Send a queued operation; it leaves the queue once the slave answered (a refusal
        included: then the directories it touched are re-listed at the next merge). Without
        an answer (slave offline, timeout) it stays queued for the next replay."""
        self._inflight.add(op.op_id)
        self.link.request(op.slave, op.cmd, functools.partial(self._on_op_reply, op, callback))

    def _on_op_reply(self, op: QueuedOp, callback: AnswerCallback | None, reply: SlaveAnswer) -> None:
        self._inflight.discard(op.op_id)
        if isinstance(reply, m.OpResult):
            if not reply.ok:
                log.warning("%s on %s refused: %s", type(op.cmd).__name__, op.slave, reply.error)
            self.vfs.op_done(op.op_id, failed=not reply.ok)
        else:
            log.info("%s on %s stays queued: %s", type(op.cmd).__name__, op.slave,
                     why(reply))
        if callback is not None:
            callback(reply)

    def flush(self, slave: str) -> int:
        """Send `slave`'s queued operations that are not in flight (oldest first, one batch);
        returns how many were sent."""
        ops = [op for op in self.vfs.queued_ops(slave) if op.op_id not in self._inflight]
        for op in ops:
            self.send_op(op)
        return len(ops)

    def tick(self, now: float) -> None:
        """Retry the queues of online slaves now and then (operations that timed out)."""
        if now < self._next_flush:
            return
        self._next_flush = now + FLUSH_EVERY_S
        for name, info in sorted(self.registry.slaves.items()):
            if info.state is SlaveState.ONLINE and name not in self.jobs:
                self.flush(name)

    # ------------------------------------------------------------ merge jobs
    def start(self, slave: str, incarnation: str, attempts: int = 0, full: bool = False) -> None:
        """(Re)start bringing `slave` in line; supersedes a job already running for it."""
        job = MergeJob(slave, incarnation, attempts, full)
        self.jobs[slave] = job
        self._replay(job)

    def cancel(self, slave: str) -> None:
        self.jobs.pop(slave, None)

    def cancel_all(self) -> None:
        self.jobs.clear()

    def _current(self, job: MergeJob) -> bool:
        return self.jobs.get(job.slave) is job

    def _fail(self, job: MergeJob, why: str) -> None:
        del self.jobs[job.slave]
        log.warning("merge of %s (%s phase) failed: %s", job.slave, job.phase.value, why)
        info = self.registry.slaves.get(job.slave)
        if (info is not None and info.incarnation == job.incarnation
                and info.state is not SlaveState.OFFLINE and job.attempts < MERGE_MAX_ATTEMPTS):
            self.link.ioloop.call_later(MERGE_RETRY_S, self._retry, job)

    def _retry(self, job: MergeJob) -> None:
        info = self.registry.slaves.get(job.slave)
        if (info is None or info.incarnation != job.incarnation or job.slave in self.jobs
                or info.state is SlaveState.OFFLINE or (info.merged and not job.full)):
            return
        self.start(job.slave, job.incarnation, job.attempts + 1, job.full)

    # -- REPLAY
    def _replay(self, job: MergeJob) -> None:
        ops = [op for op in self.vfs.queued_ops(job.slave, after=job.last_op, limit=REPLAY_BATCH)
               if op.op_id not in self._inflight]
        if not ops:
            if job.replayed:
                log.info("slave %s: %d queued operations replayed", job.slave, job.replayed)
            self._begin_summary(job)
            return
        job.last_op = ops[-1].op_id
        job.outstanding = len(ops)
        for op in ops:
            self.send_op(op, functools.partial(self._on_replayed, job))

    def _on_replayed(self, job: MergeJob, reply: SlaveAnswer) -> None:
        if not self._current(job):
            return
        if not isinstance(reply, m.OpResult):
            self._fail(job, f"replay: {why(reply)}")
            return
        job.replayed += 1
        job.outstanding -= 1
        if job.outstanding == 0:
            self._replay(job)

    # -- SUMMARY
    def _begin_summary(self, job: MergeJob) -> None:
        job.phase = Phase.SUMMARY
        job.full = job.full or not self.vfs.has_summaries(job.slave)
        job.generation = self.vfs.begin_merge(job.slave)
        job.scan = self.link.new_xfer_id()
        self._request(job, m.InventoryRequest(req_id=0, scan=job.scan, limit=SUMMARY_PAGE,
                                              mode="summary"))

    def _request(self, job: MergeJob, cmd: m.InventoryRequest) -> None:
        self.link.request(job.slave, cmd, functools.partial(self._on_page, job, cmd))

    def _on_page(self, job: MergeJob, cmd: m.InventoryRequest, reply: SlaveAnswer) -> None:
        if not self._current(job):
            return
        if not isinstance(reply, m.InventoryPage):
            self._fail(job, f"inventory: {why(reply)}")
            return
        if job.phase is Phase.SUMMARY:
            job.to_list += self.vfs.stage_summaries(job.slave, job.generation, reply.summaries, job.full)
        else:
            stats = self.vfs.merge_page(job.slave, job.generation, reply.entries)
            job.adopted += stats.adopted
            job.confirmed += stats.confirmed
            job.conflicts += stats.conflicts
            job.updated += stats.updated
            if stats.conflicts:
                self.flush(job.slave)  # the conflict renames
        if not reply.last:
            # Same scan: the next page (the slave read `dirs` when the scan started).
            self._request(job, msgspec.structs.replace(cmd, dirs=[]) if cmd.dirs else cmd)
            return
        if job.phase is Phase.LIST and job.dirs is not None:
            job.dropped += self.vfs.finish_dirs(job.slave, job.generation, job.dirs)
        self._list_next(job)

    # -- LIST
    def _list_next(self, job: MergeJob) -> None:
        job.phase = Phase.LIST
        dirs: list[str] = []
        size = 0
        for path in self.vfs.dirs_to_list(job.slave, limit=DIRS_PER_SCAN):
            size += len(path.encode("utf-8", "surrogatepass")) + 8
            if dirs and size > DIRS_BYTES_PER_SCAN:
                break
            dirs.append(path)
        if not dirs:
            self._finish(job)
            return
        job.dirs = dirs
        job.scan = self.link.new_xfer_id()
        self._request(job, m.InventoryRequest(req_id=0, scan=job.scan, limit=INVENTORY_PAGE,
                                              mode="dirs", dirs=dirs))

    def _finish(self, job: MergeJob) -> None:
        if job.full:
            final = self.vfs.finish_merge(job.slave, job.generation)
        else:
            final = self.vfs.finish_partial(job.slave, job.generation)
        job.dropped += final.dropped
        del self.jobs[job.slave]
        self.registry.mark_online(job.slave)
        self.flush(job.slave)
        log.info("slave %s online (%s merge, %d directories listed): adopted=%d confirmed=%d "
                 "updated=%d conflicts=%d dropped=%d replayed=%d", job.slave,
                 "full" if job.full else "partial", job.to_list, job.adopted, job.confirmed,
                 job.updated, job.conflicts, job.dropped, job.replayed)
