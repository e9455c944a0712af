"""master.ftpfs listings: streamed names, stat served from the batch, LIST lines identical to
pyftpdlib's own format_list."""

from __future__ import annotations

import time
from typing import Iterator

import pytest
from pyftpdlib.filesystems import AbstractedFS

from common import messages as m
from master.ftpfs import Listing, FtpFilesystem
from master.vfs import VirtualFS


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
def fs() -> Iterator[FtpFilesystem]:
    vfs = VirtualFS(":memory:")
    gen = vfs.begin_merge("s1")
    vfs.merge_page("s1", gen, [m.InventoryEntry(path=f"/big/e{i:05d}", is_dir=False, size=i,
                                                mtime_ms=1_700_000_000_000) for i in range(3000)])
    vfs.mkdir("/big/sub", "alice", "users", 1.5e9)
    vfs.record_upload("/big/zz", "s1", 123456789, None, time.time() - 60, "bob", "staff")
    yield FtpFilesystem("/", _Channel(vfs))
    vfs.close()


def test_listing_streams_names_in_order(fs: FtpFilesystem) -> None:
    listing = fs.listdir("/big")
    assert isinstance(listing, Listing)
    listing.sort()  # pyftpdlib calls it; already in order
    names = list(listing)
    assert len(names) == 3002
    assert names[:2] == ["e00000", "e00001"] and names[-2:] == ["sub", "zz"]


def test_list_lines_match_pyftpdlib(fs: FtpFilesystem) -> None:
    mine = list(fs.format_list("/big", fs.listdir("/big")))
    names = [line.decode().rstrip("\r\n").split(" ")[-1] for line in mine]
    assert mine == list(AbstractedFS.format_list(fs, "/big", names))
    assert mine[-1].startswith(b"-rw-r--r--   1 bob      staff    123456789 ")


def test_mlsd_lines_are_rfc3659(fs: FtpFilesystem) -> None:
    lines = [line.decode() for line in fs.format_mlsx(
        "/big", fs.listdir("/big"), "elradfmwMT",
        ["type", "size", "modify", "perm", "unix.mode", "unix.ownername", "unix.groupname"])]
    assert len(lines) == 3002
    assert lines[-2] == ("modify=20170714024000;perm=cdeflmp;size=0;type=dir;unix.groupname=users;"
                         "unix.mode=0755;unix.ownername=alice; sub\r\n")
    assert lines[-1].startswith("modify=")
    assert lines[-1].endswith(";perm=adfrw;size=123456789;type=file;unix.groupname=staff;"
                              "unix.mode=0644;unix.ownername=bob; zz\r\n")


def test_mlst_reads_the_current_entry(fs: FtpFilesystem) -> None:
    """MLST after a listing reads the VFS: another session may have changed the entry."""
    names = iter(fs.listdir("/big"))
    assert next(names) == "e00000"
    fs.vfs.record_upload("/big/e00001", "s1", 4242, None, time.time(), "bob", "staff")
    [line] = fs.format_mlsx("/big", ["e00001"], "r", ["size"], ignore_err=False)
    assert line == b"size=4242; e00001\r\n"
    with pytest.raises(OSError):
        list(fs.format_mlsx("/big", ["missing"], "r", ["size"], ignore_err=False))
    assert list(fs.format_mlsx("/big", ["missing"], "r", ["size"], ignore_err=True)) == []
