"""The slave's storage root: virtual paths -> real paths, and the tree operations on them.

Owns: the rule that nothing outside the root is ever touched (NUL, "..", relative paths,
symlinks whose target leaves the root, and the reserved temp-file prefix are refused
with PathRefused), delete / rename / mkdir / rmdir with the idempotent semantics of the
wire contract, temp names for uploads, and the inventory walk.

Must not: open sockets, start threads, log, or know about the wire beyond InventoryEntry.
Everything here is synchronous and may block on the disk; callers decide which thread.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import sys
import uuid
from pathlib import Path
from typing import Iterator

from common.messages import DirSummary, InventoryEntry

TEMP_PREFIX = ".ftpc-part."
"""Name prefix of upload temp files; such names are hidden from the inventory and refused."""


class PathRefused(OSError):
    """A virtual path that is malformed or would leave the storage root."""

    def __init__(self, vpath: str, why: str) -> None:
        super().__init__(errno.EACCES, f"path refused: {why}")
        self.vpath = vpath


def _mtime_ms(st: os.stat_result) -> int:
    return st.st_mtime_ns // 1_000_000


class StorageRootMissing(Exception):
    def __init__(self, root: str, problem: str) -> None:
        super().__init__(f"{root} {problem}")
        self.root, self.problem = root, problem


class Storage:
    """One storage root. Virtual paths are absolute ("/a/b"); "/" is the root itself."""

    def __init__(self, root: str | os.PathLike[str], create: bool = True) -> None:
        path = Path(root)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.is_dir():
            raise StorageRootMissing(str(path), "not a directory" if path.exists()
                                     else "does not exist")
        self.root = Path(os.path.realpath(path))

    # ------------------------------------------------------------ path mapping

    def parts(self, vpath: str) -> list[str]:
        """Components of `vpath`; raises PathRefused for anything that could escape."""
        if not isinstance(vpath, str) or not vpath.startswith("/"):
            raise PathRefused(str(vpath), "not an absolute virtual path")
        if "\x00" in vpath:
            raise PathRefused(vpath, "NUL in path")
        parts = [p for p in vpath.split("/") if p not in ("", ".")]
        for part in parts:
            if part == "..":
                raise PathRefused(vpath, "'..' in path")
            if part.startswith(TEMP_PREFIX):
                raise PathRefused(vpath, "reserved name")
        return parts

    def real(self, vpath: str, *, allow_root: bool = True) -> Path:
        """The real path for `vpath`, checked to stay under the root after resolving symlinks.

        The last component itself is not resolved (it may be a symlink that callers open
        with O_NOFOLLOW or remove as a link), but its parent chain is. Raises PathRefused.
        """
        parts = self.parts(vpath)
        if not parts:
            if not allow_root:
                raise PathRefused(vpath, "the root itself")
            return self.root
        parent = Path(os.path.realpath(self.root.joinpath(*parts[:-1])))
        if parent != self.root and self.root not in parent.parents:
            raise PathRefused(vpath, "leaves the storage root")
        return parent / parts[-1]

    def virtual(self, real: Path) -> str:
        return "/" + real.relative_to(self.root).as_posix()

    def temp_for(self, real: Path, tag: str = "") -> Path:
        """A fresh temp name next to `real` (same directory, so a rename is atomic).

        Fixed length (`.ftpc-part.<32 hex>`), whatever the target's name: a 255-byte
        multibyte name cannot make it too long."""
        return real.with_name(f"{TEMP_PREFIX}{tag or uuid.uuid4().hex}")

    # ------------------------------------------------------------ tree operations

    def delete(self, vpath: str) -> None:
        """Delete a file, a symlink (not its target) or a whole tree; missing is success."""
        path = self.real(vpath, allow_root=False)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            # rmtree never follows symlinks inside the tree (it unlinks them).
            if sys.version_info >= (3, 12):
                shutil.rmtree(path, onexc=_ignore_missing)
            else:
                shutil.rmtree(path, onerror=lambda f, p, info: _ignore_missing(f, p, info[1]))
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def rename(self, src: str, dst: str, replace: bool = True) -> None:
        """Rename a file or tree, creating dst's parents; missing src is success.

        An existing destination file is replaced (FileExistsError instead when `replace` is
        False); an existing destination directory is an error (IsADirectoryError), as is
        moving a directory into itself.
        """
        rsrc = self.real(src, allow_root=False)
        rdst = self.real(dst, allow_root=False)
        try:
            st = os.lstat(rsrc)
        except FileNotFoundError:
            return
        if rsrc == rdst:
            return
        if stat.S_ISDIR(st.st_mode) and rsrc in rdst.parents:
            raise OSError(errno.EINVAL, "cannot move a directory into itself")
        try:
            dst_st = os.lstat(rdst)
        except FileNotFoundError:
            dst_st = None
        if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "destination is a directory")
        if dst_st is not None and not replace:
            raise FileExistsError(errno.EEXIST, "destination exists")
        self._makedirs(rdst.parent)
        os.rename(rsrc, rdst)

    def mkdir(self, vpath: str) -> None:
        """mkdir -p; an existing directory is success, an existing file is an error."""
        path = self.real(vpath)
        self._makedirs(path)

    def rmdir(self, vpath: str) -> None:
        """Remove an empty directory; missing is success (OSError ENOTEMPTY if not empty)."""
        path = self.real(vpath, allow_root=False)
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass

    def _makedirs(self, path: Path) -> None:
        if path == self.root:
            return
        if self.root not in path.parents:
            raise PathRefused(self.virtual(path), "leaves the storage root")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._makedirs(path.parent)
            try:
                os.mkdir(path)
            except FileExistsError:
                if not path.is_dir() or path.is_symlink():
                    raise
            return
        if stat.S_ISLNK(st.st_mode):
            raise PathRefused(self.virtual(path), "a symlink in the directory chain")
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"not a directory: {self.virtual(path)}")

    def ensure_parent(self, real: Path) -> None:
        """Create the parents of a checked real path (uploads into new directories)."""
        self._makedirs(real.parent)

    def clean_temp(self) -> int:
        """Remove leftover upload temp files (a crash mid-upload); returns how many."""
        count = 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    try:
                        os.unlink(os.path.join(dirpath, name))
                        count += 1
                    except OSError:
                        pass
        return count

    # ------------------------------------------------------------ inventory

    def inventory(self) -> Iterator[InventoryEntry]:
        """Every directory and regular file under the root, pre-order (a directory before
        its contents), names sorted within a directory. Symlinks, temp files and special
        files are skipped; the root itself is not listed. Vanishing entries are skipped."""
        stack: list[Iterator[tuple[str, os.stat_result, str]]] = [self._listdir(str(self.root), "")]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            real, st, vpath = item
            if stat.S_ISDIR(st.st_mode):
                yield InventoryEntry(path=vpath, is_dir=True, size=0, mtime_ms=_mtime_ms(st))
                stack.append(self._listdir(real, vpath))
            else:
                yield InventoryEntry(path=vpath, is_dir=False, size=st.st_size,
                                     mtime_ms=_mtime_ms(st))

    def summaries(self) -> Iterator[DirSummary]:
        """One DirSummary per directory, the root "/" first, then pre-order (a directory
        before its subdirectories, names sorted). The digest covers each direct entry's name
        and type, and for files size and mtime_ns: a file added, removed, renamed, resized or
        rewritten changes its directory's digest."""
        stack: list[tuple[str, str]] = [(str(self.root), "/")]
        while stack:
            real, vpath = stack.pop()
            # A tight loop (no _listdir): one lstat per file is the whole cost of a summary.
            try:
                with os.scandir(real) as it:
                    found = sorted(it, key=_by_name)
            except OSError:
                found = []
            parts: list[str] = []
            subdirs: list[tuple[str, str]] = []
            files = 0
            prefix = "" if vpath == "/" else vpath
            for entry in found:
                name = entry.name
                if name.startswith(TEMP_PREFIX):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    parts.append(f"d\0{name}\n")
                    subdirs.append((entry.path, f"{prefix}/{name}"))
                elif stat.S_ISREG(st.st_mode):
                    files += 1
                    parts.append(f"f\0{name}\0{st.st_size}\0{st.st_mtime_ns}\n")
            digest = hashlib.blake2b("".join(parts).encode("utf-8", "surrogateescape"), digest_size=8)
            # 63 bits: fits SQLite's signed INTEGER.
            yield DirSummary(path=vpath, digest=int.from_bytes(digest.digest(), "big") >> 1,
                             files=files, dirs=len(subdirs))
            stack.extend(reversed(subdirs))

    def list_dirs(self, vdirs: list[str]) -> Iterator[InventoryEntry]:
        """The direct entries (directories and regular files) of each directory in `vdirs`,
        in that order, names sorted; a missing or refused directory lists nothing."""
        for vdir in vdirs:
            try:
                real = self.real(vdir)
            except OSError:
                continue
            base = "" if vdir == "/" else vdir.rstrip("/")
            for _real, st, vpath in self._listdir(str(real), base):
                if stat.S_ISDIR(st.st_mode):
                    yield InventoryEntry(path=vpath, is_dir=True, size=0, mtime_ms=_mtime_ms(st))
                else:
                    yield InventoryEntry(path=vpath, is_dir=False, size=st.st_size,
                                         mtime_ms=_mtime_ms(st))

    @staticmethod
    def _listdir(real: str, vdir: str) -> Iterator[tuple[str, os.stat_result, str]]:
        try:
            with os.scandir(real) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                yield entry.path, st, f"{vdir}/{entry.name}"


def _by_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _ignore_missing(func: object, path: str, exc: BaseException) -> None:
    """rmtree error hook: an entry removed by someone else meanwhile is fine."""
    if not isinstance(exc, FileNotFoundError):
        raise exc
