"""pyftpdlib's AbstractedFS over the master's metadata tree (master.vfs.VirtualFS).

Owns the mapping between FTP paths and virtual paths (identity: every session's root
is "/"), stat results built from VFS entries, and which slave commands follow a delete
or rename that the VFS has committed (returned, not sent: the handler sends them).
Never touches the master's own disk: open() raises, since file bytes only ever live on
slaves.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat as stat_mod
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pyftpdlib.filesystems import AbstractedFS, FilesystemError

from common import messages as m
from master import mlsx
from master.opqueue import QueuedOp
from master.vfs import Entry

if TYPE_CHECKING:
    from master.vfs import VirtualFS

log = logging.getLogger(__name__)

DIR_MODE = stat_mod.S_IFDIR | 0o755
FILE_MODE = stat_mod.S_IFREG | 0o644
DEFAULT_GROUP = "ftpcluster"

SlaveCommands = list[QueuedOp]
"""What the slaves must do after a metadata change, already queued durably in the same
transaction as the change (the caller sends them; each leaves the queue once answered)."""


PART_PREFIX = ".ftpc-part."
"""Slaves write uploads under this prefix and rename at the end: such names are reserved."""


def reserved_name(path: str) -> bool:
    return posixpath.basename(path).startswith(PART_PREFIX)


def has_nul(path: str) -> bool:
    return "\x00" in path


def virtual_norm(path: str, cwd: str = "/") -> str:
    """Absolute normalised virtual path; ".." never climbs above "/" and nothing raises.

    >>> virtual_norm("../../etc", "/a")
    '/etc'
    """
    joined = path if path.startswith("/") else posixpath.join(cwd or "/", path)
    norm = posixpath.normpath(joined)
    while norm.startswith("//"):
        norm = norm[1:]
    return norm if norm.startswith("/") else "/"


def _oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


class FtpFilesystem(AbstractedFS):
    """One per logged-in session; `cmd_channel.cluster` supplies the VFS and slave notifier."""

    def __init__(self, root: str, cmd_channel: Any) -> None:
        super().__init__("/", cmd_channel)
        cluster = cmd_channel.cluster
        self.vfs: VirtualFS = cluster.vfs
        self._online: Callable[[], list[str]] = cluster.online_slaves
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        """Made-up ids for owner and group names, so that stat() results format as LIST does."""
        home = virtual_norm(root or "/")
        if home != "/" and self.isdir(home):
            self._cwd = home

    # -- path translation (identity on virtual paths)
    def ftpnorm(self, ftppath: str) -> str:
        return virtual_norm(ftppath, self.cwd)

    def ftp2fs(self, ftppath: str) -> str:
        return self.ftpnorm(ftppath)

    def fs2ftp(self, fspath: str) -> str:
        return virtual_norm(fspath, self.cwd)

    def validpath(self, path: str) -> bool:
        return path.startswith("/") and not has_nul(path)

    def realpath(self, path: str) -> str:
        return virtual_norm(path, self.cwd)

    # -- lookups
    def _entry(self, path: str) -> Entry:
        if has_nul(path):
            raise _oserror(errno.EINVAL, path)
        entry = self.vfs.lookup(path)
        if entry is None:
            raise _oserror(errno.ENOENT, path)
        return entry

    def lookup(self, path: str) -> Entry | None:
        try:
            return self._entry(path)
        except OSError:
            return None

    def isdir(self, path: str) -> bool:
        entry = self.lookup(path)
        return entry is not None and entry.is_dir

    def isfile(self, path: str) -> bool:
        entry = self.lookup(path)
        return entry is not None and not entry.is_dir

    def islink(self, path: str) -> bool:
        return False

    def lexists(self, path: str) -> bool:
        return self.lookup(path) is not None

    def chdir(self, path: str) -> None:
        if not self._entry(path).is_dir:
            raise _oserror(errno.ENOTDIR, path)
        self.cwd = path

    def listdir(self, path: str) -> Listing:
        """The names in directory `path`, streamed (see Listing). Raises OSError at once."""
        return Listing(self.vfs.listdir(path, with_slaves=False))

    def format_list(self, basedir: str, listing: Any, ignore_err: bool = True) -> Iterator[bytes]:
        """`ls -l` lines as pyftpdlib makes them, built straight from the entries (no
        stat_result per entry: a 10,000-entry LIST costs a few tens of ms)."""
        return self._ls_lines(self._entries_of(basedir, listing, ignore_err))

    def format_mlsx(self, basedir: str, listing: Any, perms: str, facts: Any,
                    ignore_err: bool = True) -> Iterator[bytes]:
        """RFC 3659 fact lines (see master.mlsx) for MLSD (a Listing) and MLST (one name)."""
        channel = self.cmd_channel
        timefunc = time.gmtime if channel.use_gmt_times else time.localtime
        encoding, errors = channel.encoding, channel.unicode_errors
        for entry in self._entries_of(basedir, listing, ignore_err):
            line = mlsx.facts_line(entry, entry.name, perms, facts, timefunc)
            yield f"{line}\r\n".encode(encoding, errors)

    def _entries_of(self, basedir: str, listing: Any, ignore_err: bool) -> Iterator[Entry]:
        """The entries of a streamed Listing, or of the names pyftpdlib passes for STAT/MLST."""
        if isinstance(listing, Listing):
            yield from listing.entries()
            return
        for name in listing:
            entry = self.lookup(posixpath.join(basedir, name))
            if entry is None:
                if ignore_err:
                    continue
                raise _oserror(errno.ENOENT, name)
            yield entry

    def _ls_lines(self, entries: Iterator[Entry]) -> Iterator[bytes]:
        channel = self.cmd_channel
        timefunc = time.gmtime if channel.use_gmt_times else time.localtime
        encoding, errors = channel.encoding, channel.unicode_errors
        now = time.time()
        dates: dict[int, str] = {}
        for entry in entries:
            second = int(entry.mtime)
            date = dates.get(second)
            if date is None:
                if len(dates) > 4096:
                    dates.clear()
                date = dates[second] = _ls_date(entry.mtime, now, timefunc)
            if entry.is_dir:
                head = f"drwxr-xr-x   2 {entry.owner:<8} {entry.group:<8} {0:>8}"
            else:
                head = f"-rw-r--r--   1 {entry.owner:<8} {entry.group:<8} {entry.size:>8}"
            yield f"{head} {date} {entry.name}\r\n".encode(encoding, errors)

    def _id(self, name: str) -> int:
        ident = self._ids.get(name)
        if ident is None:
            ident = 1000 + len(self._ids)
            self._ids[name] = ident
            self._names[ident] = name
        return ident

    def get_user_by_uid(self, uid: int) -> str:
        return self._names.get(uid, "owner")

    def get_group_by_gid(self, gid: int) -> str:
        return self._names.get(gid, "group")

    def stat(self, path: str) -> os.stat_result:
        entry = self._entry(path)
        mode = DIR_MODE if entry.is_dir else FILE_MODE
        size = 0 if entry.is_dir else entry.size
        mtime = entry.mtime
        return os.stat_result((mode, mlsx.stable_ino(entry.path), 0, 2 if entry.is_dir else 1,
                               self._id(entry.owner), self._id(entry.group), size,
                               mtime, mtime, mtime))

    lstat = stat

    def getsize(self, path: str) -> int:
        entry = self._entry(path)
        if entry.is_dir:
            raise _oserror(errno.EISDIR, path)
        return entry.size

    def getmtime(self, path: str) -> float:
        return self._entry(path).mtime

    def readlink(self, path: str) -> str:
        raise _oserror(errno.EINVAL, path)

    # -- mutations: the VFS commits; the caller sends the returned commands to the slaves
    def _owner(self) -> str:
        return getattr(self.cmd_channel, "username", "") or "ftpcluster"

    def mkdir(self, path: str) -> None:
        if reserved_name(path):
            raise FilesystemError("File name not allowed.")
        self.vfs.mkdir(path, self._owner(), DEFAULT_GROUP, time.time())

    def _every_slave(self) -> set[str]:
        """Slaves that may have a directory on disk without holding a file under it."""
        return set(self.vfs.known_slaves()) | set(self._online())

    def rmdir(self, path: str) -> SlaveCommands:
        if path == "/":
            raise FilesystemError("Can't remove root directory.")
        with self.vfs.transaction():
            self.vfs.rmdir(path)
            # An empty directory has no holders, but slaves (offline ones too) may still
            # have it on disk: a merge would bring it back.
            return self.vfs.enqueue((slave, m.RemoveDir(req_id=0, path=path))
                                    for slave in sorted(self._every_slave()))

    def remove(self, path: str) -> SlaveCommands:
        with self.vfs.transaction():
            entry = self.vfs.remove(path)
            return self.vfs.enqueue((slave, m.Delete(req_id=0, path=path))
                                    for slave in sorted(entry.slaves))

    def rename(self, src: str, dst: str) -> SlaveCommands:
        if src == "/" or dst == "/":
            raise _oserror(errno.EINVAL, src)
        if reserved_name(dst):
            raise FilesystemError("File name not allowed.")
        with self.vfs.transaction():
            before = self.vfs.lookup(src)
            holders = self.vfs.rename(src, dst)
            if before is not None and before.is_dir:
                holders |= self._every_slave()
            return self.vfs.enqueue((slave, m.Rename(req_id=0, src=src, dst=dst))
                                    for slave in sorted(holders))

    def utime(self, path: str, timeval: float) -> None:
        self._entry(path)
        self.vfs.set_mtime(path, timeval)

    def chmod(self, path: str, mode: int) -> None:
        raise FilesystemError("SITE CHMOD is not supported by this server.")

    def open(self, filename: str, mode: str) -> Any:
        raise FilesystemError("file data lives on the slaves; the master never opens files")

    def mkstemp(self, suffix: str = "", prefix: str = "", dir: str | None = None,
                mode: str = "wb") -> Any:
        raise FilesystemError("STOU is handled by the cluster handler")

    def symlink(self, src: str, dst: str) -> None:
        raise FilesystemError("symbolic links are not supported")


class Listing:
    """A directory's entries for LIST/NLST/MLSD, streamed from the VFS in batches.

    pyftpdlib calls sort() (the VFS already yields names in order), then format_list or
    format_mlsx pulls lines 20 at a time per producer call, each built from its entry:
    nothing holds the whole listing and no entry is looked up twice.
    """

    def __init__(self, entries: Iterator[Entry]) -> None:
        self._entries = entries

    def sort(self) -> None:
        """Already sorted by name (the VFS order)."""

    def __iter__(self) -> Iterator[str]:
        return (entry.name for entry in self._entries)

    def entries(self) -> Iterator[Entry]:
        return self._entries


_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
SIX_MONTHS = 180 * 24 * 60 * 60


def _ls_date(mtime: float, now: float, timefunc: Callable[..., time.struct_time]) -> str:
    """pyftpdlib's LIST date: "Mon dd HH:MM", or "Mon dd  YYYY" when older than six months."""
    fmt = "%d  %Y" if now - mtime > SIX_MONTHS else "%d %H:%M"
    try:
        t = timefunc(mtime)
        return f"{_MONTHS[t.tm_mon]} {time.strftime(fmt, t)}"
    except (ValueError, OverflowError, OSError):
        t = timefunc()
        return f"{_MONTHS[t.tm_mon]} {time.strftime('%d %H:%M', t)}"
