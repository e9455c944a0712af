"""RFC 3659 machine listings (MLSD lines, MLST facts) from the master's metadata entries.

Pure: an Entry, the user's pyftpdlib permissions and the facts the session asked for
(OPTS MLST) in, one fact line out. Only RFC 3659 letters appear in `perm`, `unix.mode` is
octal as the RFC's examples and every client read it (`0644`, not Python's `0o644`), and
the owner and group the master records are given by name, both as `unix.owner`/`unix.group`
(what lftp, ncftp and FluentFTP read as the owner) and as `unix.ownername`/`unix.groupname`
(ProFTPD's names); numeric ids (`unix.uid`, `unix.gid`) are left out: the cluster has none.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable, Iterable

from master.vfs import Entry

FILE_MODE_BITS = 0o644
DIR_MODE_BITS = 0o755

AVAILABLE_FACTS = ("type", "size", "modify", "perm", "unique", "unix.mode",
                   "unix.owner", "unix.group", "unix.ownername", "unix.groupname")
"""What FEAT offers and OPTS MLST may select (pyftpdlib lower-cases the client's list)."""
DEFAULT_FACTS = ("type", "size", "modify", "perm", "unique")

# pyftpdlib permission letters -> RFC 3659 7.5.5 letters. Files: a APPE, d DELE, f RNFR,
# r RETR, w STOR. Directories: c create files in it (STOR/STOU/APPE), d RMD, e CWD,
# f RNFR, l LIST/NLST/MLSD, m MKD in it, p delete entries in it.
_FILE_PERMS = (("a", "a"), ("d", "d"), ("f", "f"), ("r", "r"), ("w", "w"))
_DIR_PERMS = (("w", "c"), ("d", "d"), ("e", "e"), ("f", "f"), ("l", "l"), ("m", "m"), ("d", "p"))


def perm_fact(user_perms: str, is_dir: bool) -> str:
    """The `perm` fact for a user holding pyftpdlib permissions `user_perms` ("elradfmwMT").

    >>> perm_fact("elradfmwMT", False), perm_fact("elradfmwMT", True)
    ('adfrw', 'cdeflmp')
    """
    table = _DIR_PERMS if is_dir else _FILE_PERMS
    return "".join(rfc for ours, rfc in table if ours in user_perms)


def stable_ino(path: str) -> int:
    """Inode number for the `unique` fact (RFC 3659 7.5.2): stable for a path across restarts."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogatepass"),
                                          digest_size=7).digest(), "big")


def _plain(value: str) -> bool:
    """A fact value that cannot break the line's syntax (RFC 3659 7.2: no ';', '=', SP, CTLs)."""
    return bool(value) and not any(c in ";= " or ord(c) < 0x20 or c == "\x7f" for c in value)


def facts_line(entry: Entry, name: str, user_perms: str, facts: Iterable[str],
               timefunc: Callable[[float], time.struct_time] = time.gmtime,
               kind: str | None = None) -> str:
    """One MLSD line (`fact=value;...; name` without CRLF) for `entry` shown as `name`.

    `kind` overrides the `type` fact (RFC 3659 7.5.1: "cdir" for the listed directory).
    """
    wanted = set(facts)
    out: list[str] = []
    if "modify" in wanted:
        try:
            out.append("modify=" + time.strftime("%Y%m%d%H%M%S", timefunc(entry.mtime)))
        except (ValueError, OverflowError, OSError):
            pass  # a time before 1900 or beyond the platform's range: the fact is optional
    if "perm" in wanted:
        out.append("perm=" + perm_fact(user_perms, entry.is_dir))
    if "size" in wanted:
        out.append(f"size={0 if entry.is_dir else entry.size}")
    if "type" in wanted:
        out.append("type=" + (kind or ("dir" if entry.is_dir else "file")))
    if "unique" in wanted:
        out.append(f"unique={stable_ino(entry.path):x}")
    group, owner = _plain(entry.group), _plain(entry.owner)
    if "unix.group" in wanted and group:
        out.append("unix.group=" + entry.group)
    if "unix.groupname" in wanted and group:
        out.append("unix.groupname=" + entry.group)
    if "unix.mode" in wanted:
        out.append(f"unix.mode=0{DIR_MODE_BITS if entry.is_dir else FILE_MODE_BITS:o}")
    if "unix.owner" in wanted and owner:
        out.append("unix.owner=" + entry.owner)
    if "unix.ownername" in wanted and owner:
        out.append("unix.ownername=" + entry.owner)
    return "".join(f + ";" for f in out) + " " + name
