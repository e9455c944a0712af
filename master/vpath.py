"""Virtual paths and the value types of the metadata tree, shared by master.vfs and the
modules that extend it (master.merge, master.opqueue). Pure: no SQLite, no I/O.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

MAX_NAME_BYTES = 255
CONTROL_CHARACTERS = "\x00-\x1f\x7f-\x9f"
"""What no name may hold, as a regex character range: C0, DEL and C1."""
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")
ROOT_ID = 1
ADOPTED_OWNER = "ftpcluster"
"""Owner and group of files and directories learnt from a slave's inventory."""


class VfsError(OSError):
    """An OSError with an errno (ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, EINVAL)."""


def vfs_error(code: int, path: str) -> VfsError:
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


def normalize(path: str, cwd: str = "/") -> str:
    """Absolute, normalised virtual path; `..` never climbs above "/".

    Raises VfsError(EINVAL) for a path containing NUL or another control character (C0, DEL,
    C1: no stored name holds one, whether it comes from a client or a slave's inventory), a
    component longer than 255 bytes, and a component that is not encodable as UTF-8 (a lone
    surrogate).

    >>> normalize("b/../c//d/", "/a")
    '/a/c/d'
    """
    if "\x00" in path or "\x00" in cwd:
        raise vfs_error(errno.EINVAL, path.replace("\x00", "\\0"))
    if not path.startswith("/"):
        path = f"{cwd}/{path}"
    if _CONTROL.search(path):
        raise vfs_error(errno.EINVAL, _CONTROL.sub(lambda m: ascii(m.group())[1:-1], path))
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        try:
            size = len(part.encode("utf-8"))
        except UnicodeEncodeError:
            raise vfs_error(errno.EINVAL, path.encode("utf-8", "backslashreplace").decode()) from None
        if size > MAX_NAME_BYTES:
            raise vfs_error(errno.EINVAL, path)
        parts.append(part)
    return "/" + "/".join(parts)


def split(path: str) -> tuple[str, str]:
    """"/a/b" -> ("/a", "b"); "/a" -> ("/", "a")."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def conflict_name(name: str, slave: str, attempt: int = 0) -> str:
    """The name under which a slave's conflicting copy of `name` is adopted:
    `<name>.conflict-<slave>` (then `-2`, `-3`, ... if taken), cut to 255 UTF-8 bytes by
    shortening `name`, never the suffix.

    >>> conflict_name("a.iso", "s2")
    'a.iso.conflict-s2'
    >>> conflict_name("a.iso", "s2", 2)
    'a.iso.conflict-s2-2'
    """
    suffix = f".conflict-{slave}" + (f"-{attempt}" if attempt >= 2 else "")
    room = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    base = name.encode("utf-8")[:max(room, 1)].decode("utf-8", "ignore")
    return base + suffix
