"""The master's virtual filesystem: metadata only, stored in SQLite (WAL).

Owns names, types, sizes, mtimes, owners, groups, CRC32s and which slaves hold each
file. Knows nothing of FTP, sockets or zmq. Every mutating method commits before it
returns, so a change the caller acknowledges to a client is already durable.
Paths are virtual, absolute and normalised ("/", "/a", "/a/b"); see `normalize`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Iterable, Iterator

from common.messages import InventoryEntry


class VfsError(OSError):
    """An OSError with an errno (ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, EINVAL)."""


def vfs_error(code: int, path: str) -> VfsError:
    import os
    return VfsError(code, os.strerror(code), path)


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    is_dir: bool
    size: int
    mtime: float
    """Seconds since the epoch."""
    owner: str
    group: str
    crc32: int | None
    slaves: frozenset[str]
    """Slaves holding the file (empty for directories)."""

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1] or "/"


@dataclass(frozen=True, slots=True)
class MergeStats:
    adopted: int
    """Files the master did not know, now recorded with this slave as holder."""
    confirmed: int
    """Known files this slave holds with the same size."""
    conflicts: int
    """Same path, different size than the other holders: not merged (logged)."""
    dropped: int
    """Files this slave no longer has: it lost the file (and files with no holder left are removed)."""


def normalize(path: str, cwd: str = "/") -> str:
    """Absolute, normalised virtual path; `..` never climbs above "/".

    Raises VfsError(EINVAL) for a path containing NUL or a component longer than 255 bytes.
    """
    raise NotImplementedError


class VirtualFS:
    """SQLite-backed metadata tree. One instance per master process, used from its IOLoop only."""

    def __init__(self, db_path: str) -> None:
        """Open (creating if needed) the database; ":memory:" for tests. The root "/" always exists."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- queries
    def lookup(self, path: str) -> Entry | None:
        raise NotImplementedError

    def listdir(self, path: str) -> Iterator[Entry]:
        """Entries of a directory, sorted by name. Raises VfsError ENOENT / ENOTDIR."""
        raise NotImplementedError

    def slaves_under(self, path: str) -> set[str]:
        """Every slave holding the file `path`, or any file below directory `path`."""
        raise NotImplementedError

    # -- mutations (each commits before returning)
    def mkdir(self, path: str, owner: str, group: str, mtime: float) -> Entry:
        """Raises EEXIST, ENOENT (no parent), ENOTDIR (parent is a file)."""
        raise NotImplementedError

    def rmdir(self, path: str) -> None:
        """Raises ENOENT, ENOTDIR, ENOTEMPTY, EINVAL for "/"."""
        raise NotImplementedError

    def remove(self, path: str) -> Entry:
        """Remove a file; returns what was removed (its slaves must delete it). Raises ENOENT, EISDIR."""
        raise NotImplementedError

    def remove_tree(self, path: str) -> set[str]:
        """Remove a directory and everything under it; returns the slaves that held any file."""
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> set[str]:
        """Rename a file or a whole directory tree; returns the slaves holding anything under src.

        Raises ENOENT (src or dst's parent missing), EEXIST (dst exists), EINVAL (dst inside src
        or src is "/").
        """
        raise NotImplementedError

    def record_upload(self, path: str, slave: str, size: int, crc32: int | None, mtime: float,
                      owner: str, group: str) -> tuple[Entry, set[str]]:
        """Create or replace file `path` as held by `slave` only.

        Returns the new entry and the other slaves that held the old content (now stale: the
        caller tells them to delete it). Raises ENOENT (no parent dir), EISDIR (path is a dir).
        """
        raise NotImplementedError

    def set_mtime(self, path: str, mtime: float) -> None:
        raise NotImplementedError

    def drop_slave(self, path: str, slave: str) -> None:
        """`slave` no longer holds file `path` (a file with no holder left is removed)."""
        raise NotImplementedError

    # -- inventory merge (a slave joined)
    def begin_merge(self, slave: str) -> int:
        """Start merging `slave`'s inventory; returns a merge generation for this slave."""
        raise NotImplementedError

    def merge_page(self, slave: str, generation: int, entries: Iterable[InventoryEntry]) -> MergeStats:
        """Merge one page: directories are created as needed; unknown files are adopted
        (owner/group "ftpcluster", crc32 None); a known file with equal size gains `slave`; a
        different size is a conflict, counted and left alone."""
        raise NotImplementedError

    def finish_merge(self, slave: str, generation: int) -> MergeStats:
        """Files `slave` held that were not seen in this merge lose it; files left with no
        holder are removed. Returns counts (only `dropped` is non-zero)."""
        raise NotImplementedError
