"""master.recorder: upload outcomes of one loop turn recorded in one commit, each answered."""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

import pytest

from common import messages as m
from master.opqueue import QueuedOp
from master.recorder import UploadRecorder
from master.transfer_state import Recorded
from master.vfs import UploadRecord, VirtualFS


class _Loop:
    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []

    def call_later(self, delay: float, fn: Callable[[], None], **kw: Any) -> None:
        assert delay == 0
        self.calls.append(fn)

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for fn in calls:
            fn()


def record(path: str, slave: str = "s1", size: int = 5) -> UploadRecord:
    return UploadRecord(path, slave, size, 7, 1.7e9, "alice", "ftpcluster")


@pytest.fixture
def vfs() -> Any:
    fs = VirtualFS(":memory:")
    fs.mkdir("/d", "alice", "ftpcluster", 1.0)
    yield fs
    fs.close()


def test_outcomes_of_one_turn_share_one_commit(vfs: VirtualFS) -> None:
    loop = _Loop()
    sent: list[QueuedOp] = []
    notified: list[tuple[str, m.SlaveCommand]] = []
    recorder = UploadRecorder(vfs, loop, sent.append, lambda s, c: notified.append((s, c)))
    vfs.record_upload("/d/old", "s2", 1, None, 1.0, "bob", "ftpcluster")  # held by s2 until now
    answers: dict[str, Recorded] = {}
    for path in ("/d/a", "/missing/b", "/d/old"):
        recorder.add(record(path), lambda r, path=path: answers.__setitem__(path, r))
    assert answers == {} and len(loop.calls) == 1  # nothing answered before the commit
    loop.run()
    assert recorder.commits == 1
    assert answers == {"/d/a": Recorded("ok"), "/d/old": Recorded("ok"),
                       "/missing/b": Recorded("refused", answers["/missing/b"].error)}
    assert answers["/missing/b"].error
    assert notified == [("s1", m.Delete(req_id=0, path="/missing/b"))]  # its bytes go
    assert [(op.slave, op.cmd) for op in sent] == [("s2", m.Delete(req_id=0, path="/d/old"))]
    entry = vfs.lookup("/d/old")
    assert entry is not None and entry.slaves == frozenset({"s1"}) and entry.size == 5
    assert vfs.lookup("/d/a") is not None and vfs.lookup("/missing/b") is None


def test_a_failed_commit_answers_retry_to_all(vfs: VirtualFS, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = _Loop()
    recorder = UploadRecorder(vfs, loop, lambda op: None, lambda s, c: None)

    def full(uploads: list[UploadRecord]) -> list[Any]:
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(vfs, "record_uploads", full)
    answers: list[Recorded] = []
    recorder.add(record("/d/a"), answers.append)
    recorder.add(record("/d/b"), answers.append)
    loop.run()
    assert answers == [Recorded("retry"), Recorded("retry")] and recorder.commits == 0


def test_an_empty_flush_does_nothing(vfs: VirtualFS) -> None:
    recorder = UploadRecorder(vfs, _Loop(), lambda op: None, lambda s, c: None)
    recorder.flush()
    assert recorder.commits == 0
