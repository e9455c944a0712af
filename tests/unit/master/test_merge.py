"""master.merge (partial merges, conflicts), master.opqueue (the durable queue) and
master.syncer (replay before merge), without sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from common import messages as m
from master.slaves import SlaveRegistry, SlaveState
from master.merge import UNKNOWN_DIGEST
from master.syncer import Phase, SlaveSync
from master.vfs import VirtualFS
from master.vpath import MAX_NAME_BYTES, conflict_name


@pytest.fixture
def vfs() -> Iterator[VirtualFS]:
    fs = VirtualFS(":memory:")
    yield fs
    fs.close()


def inv(path: str, size: int = 1, is_dir: bool = False) -> m.InventoryEntry:
    return m.InventoryEntry(path=path, is_dir=is_dir, size=size, mtime_ms=1000)


def summary(path: str, digest: int) -> m.DirSummary:
    return m.DirSummary(path=path, digest=digest)


def full_merge(vfs: VirtualFS, slave: str, dirs: dict[str, int], entries: list[m.InventoryEntry]) -> None:
    gen = vfs.begin_merge(slave)
    vfs.stage_summaries(slave, gen, [summary(p, d) for p, d in dirs.items()], full=True)
    vfs.merge_page(slave, gen, entries)
    vfs.finish_dirs(slave, gen, vfs.dirs_to_list(slave))
    vfs.finish_merge(slave, gen)


# ------------------------------------------------------------------ conflict names

def test_conflict_name_table() -> None:
    assert conflict_name("f", "s1") == "f.conflict-s1"
    assert conflict_name("f", "s1", 1) == "f.conflict-s1"
    assert conflict_name("f", "s1", 3) == "f.conflict-s1-3"
    long = conflict_name("é" * 200, "slave7")
    assert len(long.encode()) <= MAX_NAME_BYTES and long.endswith(".conflict-slave7")
    long.encode("utf-8")  # never a cut multi-byte character


# ------------------------------------------------------------------ partial merge decisions

def test_unchanged_directories_are_not_listed(vfs: VirtualFS) -> None:
    full_merge(vfs, "s1", {"/": 1, "/a": 2, "/b": 3},
               [inv("/a", is_dir=True), inv("/a/x"), inv("/b", is_dir=True), inv("/b/y")])
    assert vfs.has_summaries("s1")
    gen = vfs.begin_merge("s1")
    changed = vfs.stage_summaries("s1", gen, [summary("/", 1), summary("/a", 2), summary("/b", 4),
                                              summary("/c", 5)], full=False)
    assert changed == 2
    assert vfs.dirs_to_list("s1") == ["/b", "/c"]
    vfs.merge_page("s1", gen, [inv("/b/z"), inv("/c", is_dir=True), inv("/c/w")])
    assert vfs.finish_dirs("s1", gen, ["/b", "/c"]) == 1  # /b/y is gone from the slave
    vfs.finish_partial("s1", gen)
    assert vfs.lookup("/a/x").slaves == {"s1"}  # unchanged, never compared
    assert vfs.lookup("/b/y") is None and vfs.lookup("/b/z") is not None
    assert vfs.lookup("/c/w") is not None
    gen = vfs.begin_merge("s1")  # the new digests were recorded
    assert vfs.stage_summaries("s1", gen, [summary("/", 1), summary("/a", 2), summary("/b", 4),
                                           summary("/c", 5)], full=False) == 0


def test_names_with_control_characters_on_a_slave_are_not_adopted(vfs: VirtualFS) -> None:
    full_merge(vfs, "s1", {"/": 1, "/d\nx": 2},
               [inv("/ok"), inv("/a\nb"), inv("/esc\x1b[31m"), inv("/d\nx", is_dir=True),
                inv("/d\nx/f")])
    assert [e.path for e in vfs.listdir("/")] == ["/ok"]


def test_a_vanished_directory_loses_the_slave(vfs: VirtualFS) -> None:
    full_merge(vfs, "s1", {"/": 1, "/a": 2}, [inv("/a", is_dir=True), inv("/a/x")])
    full_merge(vfs, "s2", {"/": 1, "/a": 7}, [inv("/a", is_dir=True), inv("/a/x")])
    gen = vfs.begin_merge("s1")
    vfs.stage_summaries("s1", gen, [summary("/", 9)], full=False)  # /a no longer on s1
    vfs.finish_dirs("s1", gen, vfs.dirs_to_list("s1"))
    assert vfs.finish_partial("s1", gen).dropped == 1
    assert vfs.lookup("/a/x").slaves == {"s2"}


def test_uploads_and_refused_ops_force_a_listing(vfs: VirtualFS) -> None:
    full_merge(vfs, "s1", {"/": 1, "/a": 2}, [inv("/a", is_dir=True), inv("/a/x")])
    vfs.mkdir("/n", "u", "g", 1.0)
    vfs.record_upload("/n/new", "s1", 3, None, 1.0, "u", "g")
    gen = vfs.begin_merge("s1")
    # /n was never reported by s1 (say it vanished): the upload's placeholder makes it "gone".
    vfs.stage_summaries("s1", gen, [summary("/", 1), summary("/a", 2)], full=False)
    assert vfs.finish_partial("s1", gen).dropped == 1
    assert vfs.lookup("/n/new") is None
    [op] = vfs.enqueue([("s1", m.Delete(req_id=0, path="/a/x"))])
    vfs.op_done(op.op_id, failed=True)
    gen = vfs.begin_merge("s1")
    assert vfs.stage_summaries("s1", gen, [summary("/", 1), summary("/a", 2)], full=False) == 1
    assert vfs.dirs_to_list("s1") == ["/a"]  # same digest, but the refused Delete touched it


def test_directory_rename_moves_recorded_digests(vfs: VirtualFS) -> None:
    full_merge(vfs, "s1", {"/": 1, "/a": 2, "/a/b": 3, "/ab": 4},
               [inv("/a/b/x"), inv("/ab/y")])
    vfs.rename("/a", "/z")
    gen = vfs.begin_merge("s1")
    assert vfs.stage_summaries("s1", gen, [summary("/", 5), summary("/z", 2), summary("/z/b", 3),
                                           summary("/ab", 4)], full=False) == 1  # only "/"
    vfs.finish_dirs("s1", gen, vfs.dirs_to_list("s1"))
    vfs.finish_partial("s1", gen)
    assert vfs.lookup("/z/b/x").slaves == {"s1"} and vfs.lookup("/ab/y").slaves == {"s1"}


def test_a_superseded_generation_stages_nothing(vfs: VirtualFS) -> None:
    old = vfs.begin_merge("s1")
    vfs.begin_merge("s1")
    assert vfs.stage_summaries("s1", old, [summary("/", 1)], full=True) == 0
    assert vfs.dirs_to_list("s1") == []


# ------------------------------------------------------------------ the queue

def test_queue_keeps_order_and_survives_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "q.db")
    fs = VirtualFS(db)
    fs.record_upload("/f", "s1", 1, None, 1.0, "u", "g")
    with fs.transaction():
        fs.remove("/f")
        fs.enqueue([("s1", m.Delete(req_id=5, path="/f")),
                    ("s1", m.Rename(req_id=0, src="/a", dst="/b")),
                    ("s2", m.RemoveDir(req_id=0, path="/d"))])
    fs.close()
    fs = VirtualFS(db)
    ops = fs.queued_ops("s1")
    assert [op.cmd for op in ops] == [m.Delete(req_id=0, path="/f"), m.Rename(req_id=0, src="/a", dst="/b")]
    assert fs.queued_ops("s1", after=ops[0].op_id) == ops[1:]
    fs.op_done(ops[0].op_id)
    assert fs.queued_count("s1") == 1 and fs.queued_count("s2") == 1
    fs.close()


def test_a_failed_transaction_queues_nothing(vfs: VirtualFS) -> None:
    with pytest.raises(OSError):
        with vfs.transaction():
            vfs.enqueue([("s1", m.Delete(req_id=0, path="/x"))])
            vfs.remove("/missing")
    assert vfs.queued_count("s1") == 0


def test_a_new_upload_cancels_a_queued_delete_of_that_path(vfs: VirtualFS) -> None:
    vfs.enqueue([("s1", m.Delete(req_id=0, path="/f")), ("s2", m.Delete(req_id=0, path="/f"))])
    vfs.record_upload("/f", "s1", 1, None, 1.0, "u", "g")
    assert vfs.queued_count("s1") == 0 and vfs.queued_count("s2") == 1


# ------------------------------------------------------------------ syncer: replay, then merge

class FakeLink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Callable[[Any], None]]] = []
        self.ioloop = self
        self._id = 0

    def new_xfer_id(self) -> int:
        self._id += 1
        return self._id

    def request(self, slave: str, cmd: Any, callback: Callable[[Any], None]) -> int:
        self.sent.append((slave, cmd, callback))
        return self.new_xfer_id()

    def call_later(self, *_a: Any, **_k: Any) -> None:
        pass

    def answer(self, reply: Callable[[Any], Any]) -> None:
        slave, cmd, callback = self.sent.pop(0)
        callback(reply(cmd))


def test_syncer_replays_the_queue_before_reading_the_inventory(vfs: VirtualFS) -> None:
    registry = SlaveRegistry()
    registry.on_up(m.SlaveUp(name="s1", incarnation="i", data_host="h", max_transfers=1), 0.0)
    vfs.record_upload("/f", "s1", 1, None, 1.0, "u", "g")
    with vfs.transaction():
        vfs.remove("/f")
        vfs.enqueue([("s1", m.Delete(req_id=0, path="/f"))])
    link = FakeLink()
    sync = SlaveSync(link, vfs, registry)  # type: ignore[arg-type]
    sync.start("s1", "i")
    assert [type(c).__name__ for _, c, _ in link.sent] == ["Delete"]
    assert sync.jobs["s1"].phase is Phase.REPLAY
    link.answer(lambda c: m.OpResult(req_id=c.req_id, ok=True))
    assert vfs.queued_count("s1") == 0
    [(_, cmd, _)] = link.sent
    assert isinstance(cmd, m.InventoryRequest) and cmd.mode == "summary"
    link.answer(lambda c: m.InventoryPage(req_id=0, scan=c.scan, entries=[], last=True,
                                          summaries=[summary("/", 1)]))
    [(_, cmd, _)] = link.sent
    assert cmd.mode == "dirs" and cmd.dirs == ["/"]
    link.answer(lambda c: m.InventoryPage(req_id=0, scan=c.scan, entries=[inv("/g")], last=True))
    assert "s1" not in sync.jobs and registry.slaves["s1"].state is SlaveState.ONLINE
    assert vfs.lookup("/f") is None and vfs.lookup("/g").slaves == {"s1"}


def test_syncer_keeps_an_unanswered_op_queued(vfs: VirtualFS) -> None:
    from master.answers import RequestFailed
    [op] = vfs.enqueue([("s1", m.Delete(req_id=0, path="/f"))])
    link = FakeLink()
    sync = SlaveSync(link, vfs, SlaveRegistry())  # type: ignore[arg-type]
    sync.send_op(op)
    link.answer(lambda c: RequestFailed("undeliverable"))
    assert vfs.queued_count("s1") == 1
    assert sync.flush("s1") == 1
    link.answer(lambda c: m.OpResult(req_id=c.req_id, ok=False, error="EACCES"))
    assert vfs.queued_count("s1") == 0  # refused: dropped, its directory re-listed next time
    gen = vfs.begin_merge("s1")
    assert vfs.stage_summaries("s1", gen, [summary("/", UNKNOWN_DIGEST + 5)], full=False) == 1


def test_a_page_does_not_bring_back_a_file_whose_delete_is_on_its_way(vfs: VirtualFS) -> None:
    vfs.record_upload("/f", "s1", 1, None, 1.0, "u", "g")
    gen = vfs.begin_merge("s1")
    with vfs.transaction():  # DELE while the page listing /f was on its way
        vfs.remove("/f")
        vfs.enqueue([("s1", m.Delete(req_id=0, path="/f"))])
    vfs.merge_page("s1", gen, [inv("/f"), inv("/g")])
    assert vfs.lookup("/f") is None and vfs.lookup("/g") is not None
