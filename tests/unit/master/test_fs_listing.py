"""master.fs listings: streamed names, stat served from the batch, LIST lines identical to
pyftpdlib's own format_list."""

from __future__ import annotations

import time
from typing import Iterator

import pytest
from pyftpdlib.filesystems import AbstractedFS

from common import messages as m
from master.fs import Listing, VirtualFilesystem
from master.vfs import LISTDIR_BATCH, VirtualFS


class _Cluster:
    def __init__(self, vfs: VirtualFS) -> None:
        self.vfs = vfs

    def online_slaves(self) -> list[str]:
        return []


class _Channel:
    use_gmt_times = True
    encoding = "utf8"
    unicode_errors = "replace"
    username = "alice"

    def __init__(self, vfs: VirtualFS) -> None:
        self.cluster = _Cluster(vfs)


@pytest.fixture
def fs() -> Iterator[VirtualFilesystem]:
    vfs = VirtualFS(":memory:")
    gen = vfs.begin_merge("s1")
    vfs.merge_page("s1", gen, [m.InventoryEntry(path=f"/big/e{i:05d}", is_dir=False, size=i,
                                                mtime_ms=1_700_000_000_000) for i in range(3000)])
    vfs.mkdir("/big/sub", "alice", "users", 1.5e9)
    vfs.record_upload("/big/zz", "s1", 123456789, None, time.time() - 60, "bob", "staff")
    yield VirtualFilesystem("/", _Channel(vfs))
    vfs.close()


def test_listing_streams_and_stat_needs_no_query(fs: VirtualFilesystem) -> None:
    listing = fs.listdir("/big")
    assert isinstance(listing, Listing)
    listing.sort()  # pyftpdlib calls it; already in order
    seen = 0
    for name in listing:
        before = fs.vfs._db.total_changes
        st = fs.stat(f"/big/{name}")  # from the batch just read
        assert fs.vfs._db.total_changes == before
        seen += 1
        assert len(fs._cache) <= 2 * LISTDIR_BATCH
        if name == "e00007":
            assert st.st_size == 7
    assert seen == 3002


def test_list_lines_match_pyftpdlib(fs: VirtualFilesystem) -> None:
    mine = list(fs.format_list("/big", fs.listdir("/big")))
    names = [line.decode().rstrip("\r\n").split(" ")[-1] for line in mine]
    assert mine == list(AbstractedFS.format_list(fs, "/big", names))
    assert mine[-1].startswith(b"-rw-r--r--   1 bob      staff    123456789 ")


def test_listing_cache_ends_with_the_listing(fs: VirtualFilesystem) -> None:
    """MLST/STAT after a listing read the VFS: another session may have changed the entry."""
    names = iter(fs.listdir("/big"))
    assert next(names) == "e00000"
    assert fs.stat("/big/e00000").st_size == 0  # served from the listing's batch
    for _ in names:
        pass
    assert fs._cache == {}
    # Another session replaces the file right after the listing ended.
    fs.vfs.record_upload("/big/e00001", "s1", 4242, None, time.time(), "bob", "staff")
    assert fs.stat("/big/e00001").st_size == 4242


def test_listing_cache_dropped_when_listing_is_abandoned(fs: VirtualFilesystem) -> None:
    names = iter(fs.listdir("/big"))
    next(names)
    next(names)
    assert fs._cache
    names.close()  # an aborted LIST/MLSD: the producer and its generator are dropped
    assert fs._cache == {}
    fs.vfs.record_upload("/big/e00000", "s1", 77, None, time.time(), "bob", "staff")
    assert fs.stat("/big/e00000").st_size == 77
