"""The master's virtual filesystem: metadata only, stored in SQLite (WAL).

Owns names, types, sizes, mtimes, owners, groups, CRC32s and which slaves hold each
file. Knows nothing of FTP, sockets or zmq. Every mutating method commits before it
returns, so a change the caller acknowledges to a client is already durable.
Paths are virtual, absolute and normalised ("/", "/a", "/a/b"); see `normalize`.

Storage: one row per file or directory in `entries` (a parent pointer plus a name, so
renaming a directory touches one row), one row per (file, slave) in `replicas`, and a
merge generation per slave in `slave_gens`. The inventory merge (master.merge) adds
`dir_summaries` and `merge_stage`; the durable queue of slave operations (master.opqueue)
adds `pending_ops`. Both are mixins of VirtualFS sharing its one connection.

Durability: WAL; client-facing changes commit with synchronous=FULL (the WAL is fsynced
before the method returns: a change survives a crash of the process and of the host);
merge pages commit with synchronous=NORMAL (survives a crash of the process; a lost page
is merged again from the slave). One connection, used from one thread; invariant: every
file has at least one replica. Memory: a bounded LRU of directory ids, nothing else.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections import OrderedDict
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Iterator, NamedTuple

from common import messages as m
from master.merge import MergeMixin, MergeStats
from master.opqueue import OpQueueMixin, QueuedOp
from master.vpath import (
    ADOPTED_OWNER,
    MAX_NAME_BYTES,
    ROOT_ID,
    Entry,
    VfsError,
    join as _join,
    normalize,
    split as _split,
    vfs_error,
)

__all__ = ["ADOPTED_OWNER", "MAX_NAME_BYTES", "ROOT_ID", "Entry", "MergeStats", "QueuedOp",
           "VfsError", "VirtualFS", "normalize", "vfs_error", "LISTDIR_BATCH"]

log = logging.getLogger(__name__)

LISTDIR_BATCH = 512
"""Rows fetched per query while streaming a directory listing."""
DIR_CACHE_SIZE = 16384
"""Directory path -> row id entries kept in memory."""
SCHEMA_VERSION = 2
"""1: entries, replicas, slave_gens. 2: + pending_ops, dir_summaries, merge_stage (additive)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries(
    id INTEGER PRIMARY KEY,
    parent INTEGER REFERENCES entries(id),
    name TEXT NOT NULL,
    is_dir INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    mtime REAL NOT NULL,
    owner TEXT NOT NULL,
    grp TEXT NOT NULL,
    crc32 INTEGER,
    UNIQUE(parent, name)
);
CREATE TABLE IF NOT EXISTS replicas(
    entry INTEGER NOT NULL REFERENCES entries(id),
    slave TEXT NOT NULL,
    gen INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(entry, slave)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replicas_by_slave ON replicas(slave, gen);
CREATE TABLE IF NOT EXISTS slave_gens(
    slave TEXT PRIMARY KEY,
    gen INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_ops(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slave TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_ops_by_slave ON pending_ops(slave, id);
CREATE TABLE IF NOT EXISTS dir_summaries(
    slave TEXT NOT NULL,
    path TEXT NOT NULL,
    digest INTEGER NOT NULL,
    PRIMARY KEY(slave, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS merge_stage(
    slave TEXT NOT NULL,
    path TEXT NOT NULL,
    digest INTEGER NOT NULL,
    state INTEGER NOT NULL,
    PRIMARY KEY(slave, path)
) WITHOUT ROWID;
"""

# Columns of every entry query, in the order `_entry` reads them.
_COLS = ("e.id, e.is_dir, e.size, e.mtime, e.owner, e.grp, e.crc32, "
         "(SELECT group_concat(r.slave, '/') FROM replicas r WHERE r.entry = e.id)")

_COLS_NO_SLAVES = "e.id, e.is_dir, e.size, e.mtime, e.owner, e.grp, e.crc32, NULL"

_SUBTREE = """
WITH RECURSIVE t(id, is_dir) AS (
    SELECT id, is_dir FROM entries WHERE id = ?
    UNION ALL
    SELECT e.id, e.is_dir FROM entries e JOIN t ON e.parent = t.id WHERE t.is_dir
)
"""


def _entry(path: str, row: tuple[Any, ...]) -> Entry:
    _id, is_dir, size, mtime, owner, grp, crc32, slaves = row
    return Entry(path=path, is_dir=bool(is_dir), size=size, mtime=mtime, owner=owner, group=grp,
                 crc32=crc32, slaves=frozenset(slaves.split("/")) if slaves else frozenset())


class UploadRecord(NamedTuple):
    """One upload's outcome to record (record_uploads)."""

    path: str
    slave: str
    size: int
    crc32: int | None
    mtime: float
    owner: str
    group: str


class VirtualFS(MergeMixin, OpQueueMixin):
    """SQLite-backed metadata tree. One instance per master process, used from its IOLoop only."""

    def __init__(self, db_path: str) -> None:
        """Open (creating if needed) the database; ":memory:" for tests. The root "/" always exists."""
        # isolation_level=None: no implicit transactions; `_tx` issues BEGIN/COMMIT itself.
        self._db = sqlite3.connect(db_path, isolation_level=None)
        self._dirs: OrderedDict[str, int] = OrderedDict()
        self._depth = 0
        self._sync_full = True
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA temp_store=MEMORY")
        db.execute("PRAGMA cache_size=-32768")
        db.execute("PRAGMA journal_size_limit=8388608")  # the WAL shrinks back after a big merge
        with self._tx():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise RuntimeError(f"{db_path}: unknown metadata schema version {version}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("INSERT OR IGNORE INTO entries(id, parent, name, is_dir, size, mtime, owner, grp)"
                       " VALUES (?, NULL, '', 1, 0, 0, ?, ?)", (ROOT_ID, ADOPTED_OWNER, ADOPTED_OWNER))
            db.execute("CREATE TEMP TABLE IF NOT EXISTS picked(id INTEGER PRIMARY KEY)")

    def close(self) -> None:
        self._dirs.clear()
        self._db.close()

    # ------------------------------------------------------------ internals
    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back (and the directory cache dropped) on any error.

        Re-entrant: a nested `_tx` joins the outer transaction (only the outermost commits,
        and its `durable` decides the synchronous mode: FULL when True, NORMAL otherwise).
        """
        if self._depth:
            self._depth += 1
            try:
                yield self._db
            finally:
                self._depth -= 1
            return
        if durable != self._sync_full:
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._sync_full = durable
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self._db
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            self._dirs.clear()  # it may hold ids of rows the rollback removed
            raise
        self._depth = 0
        self._db.execute("COMMIT")

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """Group several mutations (say a remove and the queued slave operations that follow
        from it) into one durable commit: all or nothing."""
        return self._tx()

    def _cache(self, path: str, entry_id: int) -> None:
        self._dirs[path] = entry_id
        if len(self._dirs) > DIR_CACHE_SIZE:
            self._dirs.popitem(last=False)

    def _forget(self, path: str) -> None:
        """Drop cached directory `path` and everything below it (after a rename or removal)."""
        prefix = path + "/"
        for key in [k for k in self._dirs if k == path or k.startswith(prefix)]:
            del self._dirs[key]

    def _child(self, parent_id: int, name: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(
            f"SELECT {_COLS} FROM entries e WHERE e.parent = ? AND e.name = ?", (parent_id, name)).fetchone()
        return row

    def _dir_id(self, path: str) -> int:
        """Row id of directory `path`. Raises ENOENT, ENOTDIR (path or an ancestor is a file)."""
        if path == "/":
            return ROOT_ID
        cached = self._dirs.get(path)
        if cached is not None:
            self._dirs.move_to_end(path)
            return cached
        # Walk up to the nearest cached ancestor, then down one component at a time.
        parts = path[1:].split("/")
        depth, current = 0, ROOT_ID
        for i in range(len(parts) - 1, 0, -1):
            cached = self._dirs.get("/" + "/".join(parts[:i]))
            if cached is not None:
                depth, current = i, cached
                break
        for i in range(depth, len(parts)):
            row = self._db.execute("SELECT id, is_dir FROM entries WHERE parent = ? AND name = ?",
                                   (current, parts[i])).fetchone()
            if row is None:
                raise vfs_error(errno.ENOENT, path)
            if not row[1]:
                raise vfs_error(errno.ENOTDIR, path)
            current = row[0]
            self._cache("/" + "/".join(parts[: i + 1]), current)
        return current

    def _row(self, path: str) -> tuple[Any, ...] | None:
        """The entry row of `path`, or None. Raises ENOTDIR when an ancestor is a file."""
        if path == "/":
            root: tuple[Any, ...] | None = self._db.execute(
                f"SELECT {_COLS} FROM entries e WHERE e.id = ?", (ROOT_ID,)).fetchone()
            return root
        parent, name = _split(path)
        try:
            parent_id = self._dir_id(parent)
        except VfsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return self._child(parent_id, name)

    def _existing(self, path: str) -> tuple[Any, ...]:
        row = self._row(path)
        if row is None:
            raise vfs_error(errno.ENOENT, path)
        return row

    def _holders(self, entry_id: int) -> set[str]:
        return {s for (s,) in self._db.execute("SELECT slave FROM replicas WHERE entry = ?", (entry_id,))}

    def _gen(self, slave: str) -> int:
        row = self._db.execute("SELECT gen FROM slave_gens WHERE slave = ?", (slave,)).fetchone()
        return row[0] if row else 0

    def _delete_subtree(self, entry_id: int) -> set[str]:
        """Delete `entry_id` and everything below it; returns the slaves that held any file."""
        db = self._db
        db.execute("DELETE FROM temp.picked")
        db.execute(_SUBTREE + "INSERT INTO temp.picked SELECT id FROM t", (entry_id,))
        slaves = {s for (s,) in db.execute(
            "SELECT DISTINCT slave FROM replicas WHERE entry IN (SELECT id FROM temp.picked)")}
        db.execute("DELETE FROM replicas WHERE entry IN (SELECT id FROM temp.picked)")
        db.execute("DELETE FROM entries WHERE id IN (SELECT id FROM temp.picked)")
        db.execute("DELETE FROM temp.picked")
        return slaves

    # ------------------------------------------------------------ queries
    def lookup(self, path: str) -> Entry | None:
        """The entry at `path`, or None (also when an ancestor is a file)."""
        path = normalize(path)
        try:
            row = self._row(path)
        except VfsError:
            return None
        return None if row is None else _entry(path, row)

    def listdir(self, path: str, with_slaves: bool = True) -> Iterator[Entry]:
        """Entries of a directory, sorted by name. Raises VfsError ENOENT / ENOTDIR.

        Errors are raised by the call itself; the iterator then streams in batches of
        LISTDIR_BATCH rows, each a fresh keyset query (name > last name seen), so no
        statement stays open between items: the tree may change while a listing is being
        sent, and the listing then shows names after its position as they are now.
        `with_slaves` False: every entry's `slaves` is empty (cheaper, for listings).
        """
        path = normalize(path)
        dir_id = self._dir_id(path)
        return self._stream(path, dir_id, with_slaves)

    def _stream(self, path: str, dir_id: int, with_slaves: bool = True) -> Iterator[Entry]:
        cols = _COLS if with_slaves else _COLS_NO_SLAVES
        query = (f"SELECT e.name, {cols} FROM entries e WHERE e.parent = ? AND e.name > ? "
                 f"ORDER BY e.name LIMIT {LISTDIR_BATCH}")
        last = ""
        while True:
            rows = self._db.execute(query, (dir_id, last)).fetchall()
            for row in rows:
                yield _entry(_join(path, row[0]), row[1:])
            if len(rows) < LISTDIR_BATCH:
                return
            last = rows[-1][0]

    def slaves_under(self, path: str) -> set[str]:
        """Every slave holding the file `path`, or any file below directory `path`.

        An empty set for a path that does not exist.
        """
        path = normalize(path)
        try:
            row = self._row(path)
        except VfsError:
            return set()
        if row is None:
            return set()
        if not row[1]:
            return self._holders(row[0])
        return {s for (s,) in self._db.execute(
            _SUBTREE + "SELECT DISTINCT r.slave FROM replicas r JOIN t ON r.entry = t.id", (row[0],))}

    # ------------------------------------------------------------ mutations
    def mkdir(self, path: str, owner: str, group: str, mtime: float) -> Entry:
        """Raises EEXIST, ENOENT (no parent), ENOTDIR (parent is a file)."""
        path = normalize(path)
        if path == "/":
            raise vfs_error(errno.EEXIST, path)
        parent, name = _split(path)
        with self._tx() as db:
            parent_id = self._dir_id(parent)
            if self._child(parent_id, name) is not None:
                raise vfs_error(errno.EEXIST, path)
            cur = db.execute("INSERT INTO entries(parent, name, is_dir, size, mtime, owner, grp)"
                             " VALUES (?, ?, 1, 0, ?, ?, ?)", (parent_id, name, mtime, owner, group))
            self._cache(path, cur.lastrowid)  # type: ignore[arg-type]  # set after an INSERT
        return Entry(path, True, 0, mtime, owner, group, None, frozenset())

    def rmdir(self, path: str) -> None:
        """Raises ENOENT, ENOTDIR, ENOTEMPTY, EINVAL for "/"."""
        path = normalize(path)
        if path == "/":
            raise vfs_error(errno.EINVAL, path)
        with self._tx() as db:
            row = self._existing(path)
            if not row[1]:
                raise vfs_error(errno.ENOTDIR, path)
            if db.execute("SELECT 1 FROM entries WHERE parent = ? LIMIT 1", (row[0],)).fetchone():
                raise vfs_error(errno.ENOTEMPTY, path)
            db.execute("DELETE FROM entries WHERE id = ?", (row[0],))
        self._forget(path)

    def remove(self, path: str) -> Entry:
        """Remove a file; returns what was removed (its slaves must delete it). Raises ENOENT, EISDIR."""
        path = normalize(path)
        with self._tx() as db:
            row = self._existing(path)
            if row[1]:
                raise vfs_error(errno.EISDIR, path)
            db.execute("DELETE FROM replicas WHERE entry = ?", (row[0],))
            db.execute("DELETE FROM entries WHERE id = ?", (row[0],))
        return _entry(path, row)

    def remove_tree(self, path: str) -> set[str]:
        """Remove a directory and everything under it; returns the slaves that held any file.

        Raises ENOENT, ENOTDIR (path is a file: use `remove`), EINVAL for "/".
        """
        path = normalize(path)
        if path == "/":
            raise vfs_error(errno.EINVAL, path)
        with self._tx():
            row = self._existing(path)
            if not row[1]:
                raise vfs_error(errno.ENOTDIR, path)
            slaves = self._delete_subtree(row[0])
        self._forget(path)
        return slaves

    def rename(self, src: str, dst: str) -> set[str]:
        """Rename a file or a whole directory tree; returns the slaves holding the file `src`
        (an empty set for a directory: the caller targets every slave, so the subtree is never
        scanned).

        Raises ENOENT (src or dst's parent missing), EEXIST (dst exists), EINVAL (dst inside src
        or src is "/"). Also ENOTDIR when dst's parent is a file. One row changes whatever the
        size of the tree.
        """
        src, dst = normalize(src), normalize(dst)
        if src == "/":
            raise vfs_error(errno.EINVAL, src)
        parent, name = _split(dst)
        with self._tx() as db:
            row = self._existing(src)
            if dst.startswith(src + "/"):
                raise vfs_error(errno.EINVAL, dst)
            if dst == "/":
                raise vfs_error(errno.EEXIST, dst)
            parent_id = self._dir_id(parent)
            if self._child(parent_id, name) is not None:
                raise vfs_error(errno.EEXIST, dst)
            slaves = set() if row[1] else self._holders(row[0])
            db.execute("UPDATE entries SET parent = ?, name = ? WHERE id = ?", (parent_id, name, row[0]))
            if row[1]:
                self._move_summaries(src, dst)
        if row[1]:
            self._forget(src)
        return slaves

    def record_upload(self, path: str, slave: str, size: int, crc32: int | None, mtime: float,
                      owner: str, group: str) -> tuple[Entry, set[str]]:
        """Create or replace file `path` as held by `slave` only.

        Returns the new entry and the other slaves that held the old content (now stale: the
        caller tells them to delete it). Raises ENOENT (no parent dir), EISDIR (path is a dir).
        Also ENOTDIR when the parent is a file.
        """
        path = normalize(path)
        if path == "/":
            raise vfs_error(errno.EISDIR, path)
        parent, name = _split(path)
        with self._tx() as db:
            parent_id = self._dir_id(parent)
            row = self._child(parent_id, name)
            stale: set[str] = set()
            if row is None:
                entry_id = db.execute(
                    "INSERT INTO entries(parent, name, is_dir, size, mtime, owner, grp, crc32)"
                    " VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
                    (parent_id, name, size, mtime, owner, group, crc32)).lastrowid
            elif row[1]:
                raise vfs_error(errno.EISDIR, path)
            else:
                entry_id = row[0]
                stale = self._holders(entry_id) - {slave}
                db.execute("UPDATE entries SET size = ?, mtime = ?, owner = ?, grp = ?, crc32 = ?"
                           " WHERE id = ?", (size, mtime, owner, group, crc32, entry_id))
                db.execute("DELETE FROM replicas WHERE entry = ?", (entry_id,))
            # The slave's current merge generation: a merge running now must not drop this file.
            db.execute("INSERT INTO replicas(entry, slave, gen) VALUES (?, ?, ?)",
                       (entry_id, slave, self._gen(slave)))
            self._note_new_replica(slave, parent)
            self._cancel_queued_deletes(slave, path)
        return Entry(path, False, size, mtime, owner, group, crc32, frozenset((slave,))), stale

    def record_uploads(self, uploads: list[UploadRecord]) -> list[tuple[Entry, list[QueuedOp]] | OSError]:
        """Record several uploads in one durable commit (one fsync for all of them), each with
        the queued Deletes of its stale copies. An upload the tree refuses (OSError: no parent,
        a directory of that name) is left out and its OSError returned in its place; the others
        are recorded. A sqlite3.Error records none of them (and is raised)."""
        results: list[tuple[Entry, list[QueuedOp]] | OSError] = []
        with self._tx() as db:
            for up in uploads:
                db.execute("SAVEPOINT upload")
                try:
                    entry, stale = self.record_upload(up.path, up.slave, up.size, up.crc32, up.mtime,
                                                      up.owner, up.group)
                    ops = self.enqueue((other, m.Delete(req_id=0, path=entry.path))
                                       for other in sorted(stale))
                except OSError as exc:
                    db.execute("ROLLBACK TO upload")
                    db.execute("RELEASE upload")
                    self._dirs.clear()  # it may hold ids of rows the rollback removed
                    results.append(exc)
                    continue
                db.execute("RELEASE upload")
                results.append((entry, ops))
        return results

    def set_mtime(self, path: str, mtime: float) -> None:
        """Raises ENOENT."""
        path = normalize(path)
        with self._tx() as db:
            row = self._existing(path)
            db.execute("UPDATE entries SET mtime = ? WHERE id = ?", (mtime, row[0]))

    def drop_slave(self, path: str, slave: str) -> None:
        """`slave` no longer holds file `path` (a file with no holder left is removed).

        A missing path or a directory is ignored.
        """
        path = normalize(path)
        with self._tx() as db:
            try:
                row = self._row(path)
            except VfsError:
                return
            if row is None or row[1]:
                return
            db.execute("DELETE FROM replicas WHERE entry = ? AND slave = ?", (row[0], slave))
            if not self._holders(row[0]):
                db.execute("DELETE FROM entries WHERE id = ?", (row[0],))
            self.invalidate_summary(slave, _split(path)[0])
