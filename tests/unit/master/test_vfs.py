"""master.vfs: path normalisation, the metadata tree, durability and inventory merges."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from common.messages import InventoryEntry
from common import messages as m
from master.vfs import LISTDIR_BATCH, Entry, MergeStats, VfsError, VirtualFS, normalize

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def vfs() -> Iterator[VirtualFS]:
    fs = VirtualFS(":memory:")
    yield fs
    fs.close()


def upload(fs: VirtualFS, path: str, slave: str = "s1", size: int = 10, crc32: int | None = 7,
           mtime: float = 100.0) -> tuple[Entry, set[str]]:
    return fs.record_upload(path, slave, size, crc32, mtime, "alice", "users")


def mkdir(fs: VirtualFS, path: str) -> Entry:
    return fs.mkdir(path, "alice", "users", 50.0)


def inv(path: str, size: int = 10, is_dir: bool = False, mtime_ms: int = 2500) -> InventoryEntry:
    return InventoryEntry(path=path, is_dir=is_dir, size=size, mtime_ms=mtime_ms)


def names(fs: VirtualFS, path: str) -> list[str]:
    return [e.name for e in fs.listdir(path)]


# ------------------------------------------------------------------ normalize

@pytest.mark.parametrize("path, cwd, expected", [
    ("/", "/", "/"),
    ("", "/a", "/a"),
    (".", "/a", "/a"),
    ("b", "/a", "/a/b"),
    ("b/c", "/a", "/a/b/c"),
    ("/a/b/", "/", "/a/b"),
    ("/a/b//", "/x", "/a/b"),
    ("//a//b", "/", "/a/b"),
    ("/a/./b/.", "/", "/a/b"),
    ("..", "/", "/"),
    ("/../..", "/", "/"),
    ("/a/b/..", "/", "/a"),
    ("../x", "/a/b", "/a/x"),
    ("a/../../..", "/x", "/"),
    ("../../../etc/passwd", "/pub", "/etc/passwd"),
    ("...", "/", "/..."),
    ("a b/ c ", "/", "/a b/ c "),
    ("é/日本", "/", "/é/日本"),
    ("x" * 255, "/", "/" + "x" * 255),
    ("é" * 127 + "x", "/", "/" + "é" * 127 + "x"),  # 255 bytes
    ("b", "/a/../c/", "/c/b"),
])
def test_normalize(path: str, cwd: str, expected: str) -> None:
    assert normalize(path, cwd) == expected


@pytest.mark.parametrize("path, cwd", [
    ("a\x00b", "/"),
    ("/a/\x00", "/"),
    ("\x00", "/"),
    ("/..\x00", "/"),
    ("b", "/a\x00"),
    ("/" + "x" * 256, "/"),
    ("/ok/" + "é" * 128, "/"),  # 256 bytes
    ("/bad\ud800", "/"),  # lone surrogate: not UTF-8
    ("/a\nb", "/"),  # control characters (C0, DEL, C1): no stored name holds one
    ("/a\rb", "/"),
    ("/esc\x1b[31m", "/"),
    ("/tab\t", "/"),
    ("/del\x7f", "/"),
    ("/csi\u009b", "/"),
    ("b", "/a\nb"),
])
def test_normalize_rejects(path: str, cwd: str) -> None:
    with pytest.raises(VfsError) as info:
        normalize(path, cwd)
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value, OSError)


# ------------------------------------------------------------------ basic tree

def test_root_always_exists(vfs: VirtualFS) -> None:
    root = vfs.lookup("/")
    assert root is not None and root.is_dir and root.path == "/" and root.name == "/"
    assert list(vfs.listdir("/")) == []


def test_mkdir_lookup_listdir(vfs: VirtualFS) -> None:
    entry = mkdir(vfs, "/a")
    assert entry == Entry("/a", True, 0, 50.0, "alice", "users", None, frozenset())
    mkdir(vfs, "/a/b")
    new, stale = upload(vfs, "/a/f", size=3, crc32=99, mtime=12.5)
    assert stale == set()
    assert new == Entry("/a/f", False, 3, 12.5, "alice", "users", 99, frozenset({"s1"}))
    assert vfs.lookup("/a/f") == new
    assert vfs.lookup("/a//f/") == new  # inputs are normalised
    assert [e.path for e in vfs.listdir("/a")] == ["/a/b", "/a/f"]
    assert vfs.lookup("/missing") is None
    assert vfs.lookup("/a/f/below") is None  # an ancestor is a file


def test_remove_returns_entry(vfs: VirtualFS) -> None:
    upload(vfs, "/f", slave="s2")
    removed = vfs.remove("/f")
    assert removed.path == "/f" and removed.slaves == {"s2"} and removed.size == 10
    assert vfs.lookup("/f") is None


def test_rmdir(vfs: VirtualFS) -> None:
    mkdir(vfs, "/a")
    mkdir(vfs, "/a/b")
    vfs.rmdir("/a/b")
    assert vfs.lookup("/a/b") is None
    mkdir(vfs, "/a/b")  # the cache forgot the old id
    upload(vfs, "/a/b/f")
    assert names(vfs, "/a/b") == ["f"]


def test_set_mtime_and_drop_slave(vfs: VirtualFS) -> None:
    upload(vfs, "/f", slave="s1")
    vfs.set_mtime("/f", 5.0)
    mkdir(vfs, "/d")
    vfs.set_mtime("/d", 6.0)
    assert vfs.lookup("/f").mtime == 5.0 and vfs.lookup("/d").mtime == 6.0
    gen = vfs.begin_merge("s2")
    vfs.merge_page("s2", gen, [inv("/f")])
    vfs.drop_slave("/f", "s1")
    assert vfs.lookup("/f").slaves == {"s2"}
    vfs.drop_slave("/f", "nobody")
    vfs.drop_slave("/missing", "s2")
    vfs.drop_slave("/d", "s2")
    vfs.drop_slave("/f/x", "s2")
    vfs.drop_slave("/f", "s2")  # last holder: the file goes
    assert vfs.lookup("/f") is None
    assert vfs.lookup("/d") is not None


def test_slaves_under(vfs: VirtualFS) -> None:
    mkdir(vfs, "/a")
    mkdir(vfs, "/a/b")
    mkdir(vfs, "/a/empty")
    upload(vfs, "/a/b/f1", slave="s1")
    upload(vfs, "/a/f2", slave="s2")
    upload(vfs, "/g", slave="s3")
    assert vfs.slaves_under("/a") == {"s1", "s2"}
    assert vfs.slaves_under("/a/b") == {"s1"}
    assert vfs.slaves_under("/a/empty") == set()
    assert vfs.slaves_under("/g") == {"s3"}
    assert vfs.slaves_under("/") == {"s1", "s2", "s3"}
    assert vfs.slaves_under("/missing") == set()
    assert vfs.slaves_under("/g/x") == set()


def test_remove_tree(vfs: VirtualFS) -> None:
    mkdir(vfs, "/a")
    mkdir(vfs, "/a/b")
    mkdir(vfs, "/a/b/c")
    upload(vfs, "/a/b/c/f", slave="s1")
    upload(vfs, "/a/f", slave="s2")
    upload(vfs, "/keep", slave="s3")
    assert vfs.lookup("/a/b/c/f") is not None  # caches /a, /a/b, /a/b/c
    assert vfs.remove_tree("/a") == {"s1", "s2"}
    assert names(vfs, "/") == ["keep"]
    assert vfs.lookup("/a/b/c/f") is None
    assert vfs.slaves_under("/") == {"s3"}
    mkdir(vfs, "/a")
    with pytest.raises(VfsError) as info:
        upload(vfs, "/a/b/c/f")  # a stale cached id would let this through
    assert info.value.errno == errno.ENOENT


# ------------------------------------------------------------------ errors by errno

def _tree(fs: VirtualFS) -> None:
    mkdir(fs, "/d")
    mkdir(fs, "/d/sub")
    mkdir(fs, "/empty")
    upload(fs, "/d/f", slave="s1")
    upload(fs, "/d/sub/g", slave="s2")
    upload(fs, "/top", slave="s1")


def _snapshot(fs: VirtualFS) -> list[Entry]:
    out: list[Entry] = []
    stack = ["/"]
    while stack:
        for entry in fs.listdir(stack.pop()):
            out.append(entry)
            if entry.is_dir:
                stack.append(entry.path)
    return sorted(out, key=lambda e: e.path)


ERROR_CASES: list[tuple[str, Callable[[VirtualFS], object], int]] = [
    ("mkdir existing dir", lambda fs: mkdir(fs, "/d"), errno.EEXIST),
    ("mkdir existing file", lambda fs: mkdir(fs, "/d/f"), errno.EEXIST),
    ("mkdir root", lambda fs: mkdir(fs, "/"), errno.EEXIST),
    ("mkdir no parent", lambda fs: mkdir(fs, "/nope/x"), errno.ENOENT),
    ("mkdir parent is file", lambda fs: mkdir(fs, "/top/x"), errno.ENOTDIR),
    ("mkdir NUL", lambda fs: mkdir(fs, "/a\x00"), errno.EINVAL),
    ("rmdir root", lambda fs: fs.rmdir("/"), errno.EINVAL),
    ("rmdir missing", lambda fs: fs.rmdir("/nope"), errno.ENOENT),
    ("rmdir file", lambda fs: fs.rmdir("/top"), errno.ENOTDIR),
    ("rmdir not empty", lambda fs: fs.rmdir("/d"), errno.ENOTEMPTY),
    ("rmdir below file", lambda fs: fs.rmdir("/top/x"), errno.ENOTDIR),
    ("remove missing", lambda fs: fs.remove("/nope"), errno.ENOENT),
    ("remove dir", lambda fs: fs.remove("/d"), errno.EISDIR),
    ("remove root", lambda fs: fs.remove("/"), errno.EISDIR),
    ("remove_tree root", lambda fs: fs.remove_tree("/"), errno.EINVAL),
    ("remove_tree missing", lambda fs: fs.remove_tree("/nope"), errno.ENOENT),
    ("remove_tree file", lambda fs: fs.remove_tree("/top"), errno.ENOTDIR),
    ("rename missing src", lambda fs: fs.rename("/nope", "/x"), errno.ENOENT),
    ("rename no dst parent", lambda fs: fs.rename("/d", "/nope/x"), errno.ENOENT),
    ("rename dst parent is file", lambda fs: fs.rename("/d", "/top/x"), errno.ENOTDIR),
    ("rename onto dir", lambda fs: fs.rename("/d", "/empty"), errno.EEXIST),
    ("rename onto file", lambda fs: fs.rename("/top", "/d/f"), errno.EEXIST),
    ("rename onto itself", lambda fs: fs.rename("/d", "/d"), errno.EEXIST),
    ("rename into itself", lambda fs: fs.rename("/d", "/d/sub/x"), errno.EINVAL),
    ("rename root", lambda fs: fs.rename("/", "/x"), errno.EINVAL),
    ("rename onto root", lambda fs: fs.rename("/d", "/"), errno.EEXIST),
    ("upload no parent", lambda fs: upload(fs, "/nope/f"), errno.ENOENT),
    ("upload parent is file", lambda fs: upload(fs, "/top/f"), errno.ENOTDIR),
    ("upload onto dir", lambda fs: upload(fs, "/d"), errno.EISDIR),
    ("upload onto root", lambda fs: upload(fs, "/"), errno.EISDIR),
    ("set_mtime missing", lambda fs: fs.set_mtime("/nope", 1.0), errno.ENOENT),
    ("listdir missing", lambda fs: fs.listdir("/nope"), errno.ENOENT),
    ("listdir file", lambda fs: fs.listdir("/top"), errno.ENOTDIR),
    ("listdir below file", lambda fs: fs.listdir("/top/x"), errno.ENOTDIR),
]


@pytest.mark.parametrize("call, code", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors_by_errno(vfs: VirtualFS, call: Callable[[VirtualFS], object], code: int) -> None:
    _tree(vfs)
    before = _snapshot(vfs)
    with pytest.raises(VfsError) as info:
        call(vfs)  # listdir raises on the call itself, not on first iteration
    assert info.value.errno == code
    assert info.value.strerror == os.strerror(code)
    assert _snapshot(vfs) == before  # a failed mutation changes nothing


# ------------------------------------------------------------------ rename

def test_rename_tree_moves_everything(vfs: VirtualFS) -> None:
    for d in ("/a", "/a/b", "/a/b/c", "/other", "/z"):
        mkdir(vfs, d)
    upload(vfs, "/a/b/c/f1", slave="s1", size=1)
    upload(vfs, "/a/f2", slave="s2", size=2)
    upload(vfs, "/a/b/f3", slave="s3", size=3)
    upload(vfs, "/other/f4", slave="s4", size=4)
    assert vfs.lookup("/a/b/c/f1") is not None  # warm the directory cache
    changes = vfs._db.total_changes
    assert vfs.rename("/a", "/z/a2") == set()  # a directory: the caller targets every slave
    # One entries row whatever the tree's size, plus the directory digests recorded for the
    # slaves below it (one per slave and directory holding files, never one per file).
    assert vfs._db.total_changes - changes == 1 + 3
    assert vfs.lookup("/a") is None
    assert vfs.lookup("/a/b/c/f1") is None
    moved = vfs.lookup("/z/a2/b/c/f1")
    assert moved is not None and moved.size == 1 and moved.slaves == {"s1"}
    assert [e.path for e in vfs.listdir("/z/a2")] == ["/z/a2/b", "/z/a2/f2"]
    assert vfs.slaves_under("/z") == {"s1", "s2", "s3"}
    assert names(vfs, "/") == ["other", "z"]
    mkdir(vfs, "/a")  # the old name is free again, with no stale cached children
    assert names(vfs, "/a") == []
    with pytest.raises(VfsError):
        upload(vfs, "/a/b/new")


def test_rename_file_keeps_metadata(vfs: VirtualFS) -> None:
    mkdir(vfs, "/d")
    upload(vfs, "/f", slave="s2", size=5, crc32=42, mtime=9.0)
    assert vfs.rename("/f", "/d/g") == {"s2"}
    assert vfs.lookup("/d/g") == Entry("/d/g", False, 5, 9.0, "alice", "users", 42, frozenset({"s2"}))
    assert vfs.lookup("/f") is None


# ------------------------------------------------------------------ record_upload

def test_record_upload_replace_returns_stale_slaves(vfs: VirtualFS) -> None:
    upload(vfs, "/f", slave="s1", size=5)
    gen = vfs.begin_merge("s2")
    assert vfs.merge_page("s2", gen, [inv("/f", size=5)]).confirmed == 1
    assert vfs.lookup("/f").slaves == {"s1", "s2"}
    entry, stale = vfs.record_upload("/f", "s3", 8, 123, 77.0, "bob", "staff")
    assert stale == {"s1", "s2"}
    assert entry == Entry("/f", False, 8, 77.0, "bob", "staff", 123, frozenset({"s3"}))
    assert vfs.lookup("/f") == entry
    gen = vfs.begin_merge("s1")
    vfs.merge_page("s1", gen, [inv("/f", size=8)])
    _, stale = vfs.record_upload("/f", "s1", 9, None, 78.0, "bob", "staff")  # same slave rewrites
    assert stale == {"s3"}
    assert vfs.lookup("/f").slaves == {"s1"} and vfs.lookup("/f").crc32 is None


# ------------------------------------------------------------------ listdir

def test_listdir_sorted_by_name(vfs: VirtualFS) -> None:
    wanted = ["b", "B", "a", "é", "Z", "a b", "a.txt", "_", "10", "9", "日本"]
    shuffled = wanted[:]
    random.Random(4).shuffle(shuffled)
    for i, name in enumerate(shuffled):
        if i % 2:
            mkdir(vfs, "/" + name)
        else:
            upload(vfs, "/" + name)
    assert names(vfs, "/") == sorted(wanted)


def test_listdir_streams_20000_entries(vfs: VirtualFS) -> None:
    mkdir(vfs, "/big")
    total = 20_000
    order = list(range(total))
    random.Random(1).shuffle(order)
    for i in order:
        vfs.record_upload(f"/big/f{i:06d}", "s1", i, None, 1.0, "u", "g")
    queries: list[str] = []
    vfs._db.set_trace_callback(queries.append)
    try:
        listing = vfs.listdir("/big")
        first = list(itertools.islice(listing, 10))
        assert len(queries) <= 3  # one batch was read, not the whole directory
        rest = list(listing)
    finally:
        vfs._db.set_trace_callback(None)
    entries = first + rest
    assert len(entries) == total
    assert [e.name for e in entries] == [f"f{i:06d}" for i in range(total)]
    assert entries[123].size == 123 and entries[123].slaves == {"s1"}
    batches = [q for q in queries if "LIMIT" in q]
    assert len(batches) == total // LISTDIR_BATCH + 1


def test_listdir_survives_changes_while_streaming(vfs: VirtualFS) -> None:
    mkdir(vfs, "/d")
    for i in range(2000):
        upload(vfs, f"/d/f{i:04d}")
    listing = vfs.listdir("/d")
    head = [e.name for e in itertools.islice(listing, 100)]
    vfs.remove("/d/f1500")  # not reached yet: must not appear
    upload(vfs, "/d/f1500x")  # not reached yet: appears
    upload(vfs, "/d/a-before")  # already passed: does not appear
    vfs.rename("/d/f0050", "/d/zzz")  # passed, and moved ahead: appears once at the end
    rest = [e.name for e in listing]
    seen = head + rest
    assert "f1500" not in seen and "f1500x" in seen and "a-before" not in seen
    assert seen[-1] == "zzz" and len(seen) == len(set(seen)) == 2001
    assert seen == sorted(seen)


# ------------------------------------------------------------------ durability

def test_changes_visible_to_another_connection_without_close(tmp_path: Path) -> None:
    db = str(tmp_path / "meta.db")
    first = VirtualFS(db)
    mkdir(first, "/a")
    upload(first, "/a/f", slave="s9", size=33)
    second = VirtualFS(db)  # a second instance on the same file, the first still open
    assert second.lookup("/a/f").slaves == {"s9"}
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT size FROM entries WHERE name = 'f'").fetchone() == (33,)
    finally:
        raw.close()
    first.rename("/a/f", "/g")
    assert second.lookup("/g") is not None and second.lookup("/a/f") is None
    second.close()
    first.close()


def test_committed_change_survives_a_killed_process(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    script = (
        "import os, signal\n"
        "from master.vfs import VirtualFS\n"
        f"fs = VirtualFS({str(db)!r})\n"
        "fs.mkdir('/d', 'u', 'g', 1.0)\n"
        "fs.record_upload('/d/f', 's1', 5, 1, 2.0, 'u', 'g')\n"
        "gen = fs.begin_merge('s1')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    fs = VirtualFS(str(db))
    try:
        assert fs.lookup("/d/f").slaves == {"s1"}
        assert fs.current_generation("s1") == 1
        assert fs.begin_merge("s1") == 2  # generations persist
    finally:
        fs.close()


# ------------------------------------------------------------------ merge

def test_merge_adopts_unknown(vfs: VirtualFS) -> None:
    gen = vfs.begin_merge("s1")
    stats = vfs.merge_page("s1", gen, [
        inv("/m", is_dir=True, size=0, mtime_ms=1000),
        inv("/m/a", size=5, mtime_ms=2500),
        inv("/n/deep/b", size=6),  # parents not listed: created
        inv("/", is_dir=True, size=0),  # the root itself: nothing to do
    ])
    assert stats == MergeStats(adopted=2, confirmed=0, conflicts=0, dropped=0)
    assert vfs.lookup("/m/a") == Entry("/m/a", False, 5, 2.5, "ftpcluster", "ftpcluster", None,
                                       frozenset({"s1"}))
    deep = vfs.lookup("/n/deep")
    assert deep is not None and deep.is_dir and deep.owner == "ftpcluster"
    assert vfs.lookup("/m").mtime == 1.0
    assert vfs.finish_merge("s1", gen) == MergeStats(0, 0, 0, 0)
    assert vfs.lookup("/m/a") is not None


def test_merge_confirms_equal_size(vfs: VirtualFS) -> None:
    mkdir(vfs, "/d")
    upload(vfs, "/d/f", slave="s1", size=5, crc32=7)
    gen = vfs.begin_merge("s2")
    stats = vfs.merge_page("s2", gen, [inv("/d", is_dir=True, size=0), inv("/d/f", size=5)])
    assert stats == MergeStats(adopted=0, confirmed=1, conflicts=0, dropped=0)
    entry = vfs.lookup("/d/f")
    assert entry.slaves == {"s1", "s2"} and entry.crc32 == 7 and entry.owner == "alice"
    assert vfs.lookup("/d").owner == "alice"  # a known directory is left alone


def test_merge_conflict_keeps_both_copies(vfs: VirtualFS, caplog: pytest.LogCaptureFixture) -> None:
    upload(vfs, "/f", slave="s1", size=5, crc32=7)
    gen = vfs.begin_merge("s2")
    with caplog.at_level(logging.WARNING, logger="master.vfs"):
        stats = vfs.merge_page("s2", gen, [inv("/f", size=6)])
    assert stats == MergeStats(adopted=0, confirmed=0, conflicts=1, dropped=0)
    assert "/f" in caplog.text and "CONFLICT" in caplog.text
    assert vfs.lookup("/f") == Entry("/f", False, 5, 100.0, "alice", "users", 7, frozenset({"s1"}))
    copy = vfs.lookup("/f.conflict-s2")
    assert copy is not None and copy.size == 6 and copy.slaves == {"s2"}
    # The slave is told to rename its copy (queued durably, never replacing a file).
    [op] = vfs.queued_ops("s2")
    assert op.cmd == m.Rename(req_id=0, src="/f", dst="/f.conflict-s2", replace=False)
    assert vfs.finish_merge("s2", gen).dropped == 0


def test_merge_conflict_drops_a_holder_with_the_wrong_size(vfs: VirtualFS) -> None:
    upload(vfs, "/f", slave="s1", size=5)
    gen = vfs.begin_merge("s2")
    vfs.merge_page("s2", gen, [inv("/f", size=5)])
    vfs.finish_merge("s2", gen)
    gen = vfs.begin_merge("s2")  # s2 restarted with another size for /f
    assert vfs.merge_page("s2", gen, [inv("/f", size=6)]).conflicts == 1
    vfs.finish_merge("s2", gen)
    assert vfs.lookup("/f").slaves == {"s1"} and vfs.lookup("/f").size == 5
    assert vfs.lookup("/f.conflict-s2").slaves == {"s2"}


def test_merge_conflict_names_skip_taken_ones(vfs: VirtualFS) -> None:
    upload(vfs, "/f", slave="s1", size=5)
    upload(vfs, "/f.conflict-s2", slave="s1", size=1)
    gen = vfs.begin_merge("s2")
    vfs.merge_page("s2", gen, [inv("/f", size=6)])
    assert vfs.lookup("/f.conflict-s2-2").slaves == {"s2"}
    assert vfs.lookup("/f.conflict-s2").size == 1


def test_merge_sole_holder_updates_size(vfs: VirtualFS) -> None:
    upload(vfs, "/f", slave="s1", size=5, crc32=7)
    gen = vfs.begin_merge("s1")
    stats = vfs.merge_page("s1", gen, [inv("/f", size=9, mtime_ms=3000)])
    assert stats == MergeStats(adopted=0, confirmed=0, conflicts=0, dropped=0, updated=1)
    entry = vfs.lookup("/f")
    assert (entry.size, entry.mtime, entry.crc32, entry.slaves) == (9, 3.0, None, {"s1"})
    assert vfs.finish_merge("s1", gen).dropped == 0


def test_finish_merge_drops_missing_and_removes_orphans(vfs: VirtualFS) -> None:
    mkdir(vfs, "/dir")
    upload(vfs, "/shared", slave="s1")
    upload(vfs, "/dir/only-s1", slave="s1")
    upload(vfs, "/dir/seen", slave="s1")
    upload(vfs, "/s2file", slave="s2")
    gen = vfs.begin_merge("s2")
    vfs.merge_page("s2", gen, [inv("/shared"), inv("/s2file")])
    vfs.finish_merge("s2", gen)

    gen = vfs.begin_merge("s1")  # s1 lost /shared and /dir/only-s1
    assert vfs.merge_page("s1", gen, [inv("/dir", is_dir=True, size=0), inv("/dir/seen")]).confirmed == 1
    assert vfs.finish_merge("s1", gen) == MergeStats(adopted=0, confirmed=0, conflicts=0, dropped=2)
    assert vfs.lookup("/shared").slaves == {"s2"}  # still held elsewhere
    assert vfs.lookup("/dir/only-s1") is None  # no holder left: removed
    assert vfs.lookup("/dir/seen").slaves == {"s1"}
    assert vfs.lookup("/s2file").slaves == {"s2"}  # another slave's files untouched
    gen = vfs.begin_merge("s1")
    vfs.finish_merge("s1", gen)  # s1 now empty
    assert names(vfs, "/dir") == []  # directories stay
    assert names(vfs, "/") == ["dir", "s2file", "shared"]


def test_merge_page_with_dir_file_mismatch_does_not_crash(vfs: VirtualFS) -> None:
    upload(vfs, "/f", slave="s1")
    mkdir(vfs, "/d")
    before = _snapshot(vfs)
    gen = vfs.begin_merge("s2")
    stats = vfs.merge_page("s2", gen, [
        inv("/f", is_dir=True, size=0),  # a file here, a directory there
        inv("/f/inner"),  # below it
        inv("/f/x/y", is_dir=True, size=0),
        inv("/d", size=3),  # a directory here, a file there
        inv("/bad\x00name"),  # not a valid path
        inv("/", size=1),  # a file at the root path
        inv("/new"),  # the rest of the page is still merged
    ])
    assert stats == MergeStats(adopted=1, confirmed=0, conflicts=6, dropped=0)
    assert vfs.lookup("/new").slaves == {"s2"}
    assert [e for e in _snapshot(vfs) if e.path != "/new"] == before


def test_merge_page_is_one_transaction(vfs: VirtualFS) -> None:
    def entries() -> Iterator[InventoryEntry]:
        yield inv("/first")
        raise RuntimeError("connection lost mid-page")

    gen = vfs.begin_merge("s1")
    with pytest.raises(RuntimeError):
        vfs.merge_page("s1", gen, entries())
    assert vfs.lookup("/first") is None
    assert vfs.merge_page("s1", gen, [inv("/first")]).adopted == 1


def test_superseded_generation_is_ignored(vfs: VirtualFS) -> None:
    upload(vfs, "/f", slave="s1")
    old = vfs.begin_merge("s1")
    new = vfs.begin_merge("s1")
    assert new == old + 1 == vfs.current_generation("s1")
    assert vfs.merge_page("s1", old, [inv("/g")]) == MergeStats(0, 0, 0, 0)
    assert vfs.lookup("/g") is None
    assert vfs.finish_merge("s1", old) == MergeStats(0, 0, 0, 0)
    assert vfs.lookup("/f") is not None


def test_upload_during_merge_is_kept(vfs: VirtualFS) -> None:
    gen = vfs.begin_merge("s1")
    vfs.merge_page("s1", gen, [inv("/old")])
    upload(vfs, "/new", slave="s1")  # not in the inventory the slave is sending
    assert vfs.finish_merge("s1", gen).dropped == 0
    assert vfs.lookup("/new").slaves == {"s1"} and vfs.lookup("/old") is not None


def test_merge_of_a_very_deep_tree(vfs: VirtualFS) -> None:
    deep = "/" + "/".join(["d"] * 1500)
    gen = vfs.begin_merge("s1")
    assert vfs.merge_page("s1", gen, [inv(deep + "/f")]).adopted == 1
    assert vfs.lookup(deep + "/f").slaves == {"s1"}
    assert vfs.slaves_under("/d") == {"s1"}
    assert vfs.remove_tree("/d") == {"s1"}
