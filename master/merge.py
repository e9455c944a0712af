"""Merging a slave's inventory into the metadata tree (a mixin of master.vfs.VirtualFS,
sharing its SQLite connection, transactions and directory cache). No sockets, no clock.

A merge has a generation (`begin_merge`); pages of a superseded generation change nothing.
Two modes, driven by master.syncer:

- full: every directory of the slave is listed; `finish_merge` then drops every replica of
  the slave not seen in this generation.
- partial (fast re-merge of a slave seen before): the slave first reports one summary per
  directory (path, digest of its entries' names, types, sizes and mtimes). `stage_summaries`
  compares each with `dir_summaries` (the digest recorded at the last merge); only
  directories whose digest differs, or that were not known, are listed; `finish_dirs` drops
  the unseen replicas of each listed directory, and `finish_partial` those of directories
  that vanished from the slave, then records the new digests.

The recorded digest of (slave, dir) is set to UNKNOWN_DIGEST whenever the tree may no longer
match it for reasons that did not change the slave's disk: an upload recorded there
(`_note_new_replica`), a refused operation (`invalidate_summary`), a dropped replica.
A directory rename in the tree moves its recorded digests (`_move_summaries`): the slave's
copy is renamed by a queued operation that is replayed before the next merge.

Conflicts never take a slave offline: a file whose size differs from the one other slaves
hold is adopted under `<name>.conflict-<slave>` and a Rename is queued for that slave.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterable

from common.messages import DirSummary, InventoryEntry, Rename
from master.vpath import ADOPTED_OWNER, ROOT_ID, VfsError, conflict_name, join, normalize, split, vfs_error

log = logging.getLogger("master.vfs")

UNKNOWN_DIGEST = -1
"""Recorded digest meaning "list this directory at the next merge"."""
MAX_CONFLICT_ATTEMPTS = 50

# merge_stage.state
STAGED_SAME, STAGED_LIST, STAGED_LISTED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class MergeStats:
    adopted: int
    """Files the master did not know, now recorded with this slave as holder."""
    confirmed: int
    """Known files this slave holds with the same size."""
    conflicts: int
    """Same path, different size than the other holders: adopted under a conflict name
    (or, for a file/directory clash or an invalid path, left alone; logged)."""
    dropped: int
    """Files this slave no longer has: it lost the file (and files with no holder left are removed)."""
    updated: int = 0
    """Known files whose only holder is this slave, with another size: size and mtime taken
    from the slave, CRC32 forgotten (not counted in `confirmed`)."""


_UPSERT_REPLICA = ("INSERT INTO replicas(entry, slave, gen) VALUES (?, ?, ?)"
                   " ON CONFLICT(entry, slave) DO UPDATE SET gen = excluded.gen")


class MergeMixin:
    """Needs from VirtualFS: _db, _tx, _gen, _dir_id, _child, _cache, _holders, enqueue."""

    _db: sqlite3.Connection
    _dirs: Any
    _leaving: frozenset[str] = frozenset()

    # ------------------------------------------------------------ generations
    def begin_merge(self, slave: str) -> int:
        """Start merging `slave`'s inventory; returns a merge generation for this slave.

        A new generation supersedes any merge of the same slave still running: pages and the
        finish of an older generation are then ignored. Clears the slave's staged summaries.
        """
        with self._tx() as db:  # type: ignore[attr-defined]
            db.execute("INSERT INTO slave_gens(slave, gen) VALUES (?, 1)"
                       " ON CONFLICT(slave) DO UPDATE SET gen = gen + 1", (slave,))
            db.execute("DELETE FROM merge_stage WHERE slave = ?", (slave,))
            return self._gen(slave)  # type: ignore[attr-defined, no-any-return]

    def current_generation(self, slave: str) -> int:
        """The latest generation `begin_merge` returned for `slave` (0 if never merged)."""
        return self._gen(slave)  # type: ignore[attr-defined, no-any-return]

    def _stale(self, slave: str, generation: int, what: str) -> bool:
        current = self._gen(slave)  # type: ignore[attr-defined]
        if generation != current:
            log.warning("merge %s: %s of generation %d ignored (current %d)", slave, what,
                        generation, current)
            return True
        return False

    # ------------------------------------------------------------ directory summaries
    def has_summaries(self, slave: str) -> bool:
        """Whether a merge of `slave` finished before (a partial merge is then possible)."""
        return self._db.execute("SELECT 1 FROM dir_summaries WHERE slave = ? LIMIT 1",
                                (slave,)).fetchone() is not None

    def stage_summaries(self, slave: str, generation: int, summaries: Iterable[DirSummary],
                        full: bool) -> int:
        """Record one page of the slave's directory summaries for this merge; returns how many
        directories must be listed (all of them when `full`)."""
        if self._stale(slave, generation, "summaries"):
            return 0
        rows = []
        changed = 0
        for summary in summaries:
            try:
                path = normalize(summary.path)
            except VfsError:
                log.warning("merge %s: invalid directory path %r skipped", slave, summary.path)
                continue
            same = not full and self._summary_matches(slave, path, summary.digest)
            changed += not same
            rows.append((slave, path, summary.digest, STAGED_SAME if same else STAGED_LIST))
        with self._tx(durable=False) as db:  # type: ignore[attr-defined]
            db.executemany("INSERT OR REPLACE INTO merge_stage(slave, path, digest, state)"
                           " VALUES (?, ?, ?, ?)", rows)
        return changed

    def _summary_matches(self, slave: str, path: str, digest: int) -> bool:
        return self._db.execute("SELECT 1 FROM dir_summaries WHERE slave = ? AND path = ? AND digest = ?",
                                (slave, path, digest)).fetchone() is not None

    def dirs_to_list(self, slave: str, after: str = "", limit: int = 256) -> list[str]:
        """Staged directories still to be listed, in path order (parents first), after `after`."""
        return [p for (p,) in self._db.execute(
            "SELECT path FROM merge_stage WHERE slave = ? AND state = ? AND path > ?"
            " ORDER BY path LIMIT ?", (slave, STAGED_LIST, after, limit))]

    def invalidate_summary(self, slave: str, path: str) -> None:
        """List directory `path` of `slave` at its next merge (whatever its digest)."""
        with self._tx() as db:  # type: ignore[attr-defined]
            db.execute("INSERT OR REPLACE INTO dir_summaries(slave, path, digest) VALUES (?, ?, ?)",
                       (slave, path, UNKNOWN_DIGEST))

    def _note_new_replica(self, slave: str, parent: str) -> None:
        """A file in `parent` is now held by `slave` without a merge having seen it there."""
        self._db.execute("INSERT OR IGNORE INTO dir_summaries(slave, path, digest) VALUES (?, ?, ?)",
                         (slave, parent, UNKNOWN_DIGEST))

    def _move_summaries(self, src: str, dst: str) -> None:
        """Directory `src` became `dst` (every slave's copy is renamed by queued operations)."""
        db = self._db
        db.execute("DELETE FROM dir_summaries WHERE path = ? OR (path > ? AND path < ?)",
                   (dst, dst + "/", dst + "0"))
        db.execute("UPDATE dir_summaries SET path = ? || substr(path, ?) "
                   "WHERE path = ? OR (path > ? AND path < ?)",
                   (dst, len(src) + 1, src, src + "/", src + "0"))

    # ------------------------------------------------------------ pages
    def merge_page(self, slave: str, generation: int, entries: Iterable[InventoryEntry]) -> MergeStats:
        """Merge one page: directories are created as needed; unknown files are adopted
        (owner/group "ftpcluster", crc32 None); a known file with equal size gains `slave`.

        A different size where `slave` is the file's only holder is taken as the new content
        (`updated`); where other slaves hold it, the slave's copy is adopted as
        `<name>.conflict-<slave>` and a Rename is queued for the slave (`conflicts`). A
        directory where the tree has a file, or the reverse, or an invalid path, is a conflict
        left alone. A page of a superseded generation changes nothing.
        """
        if self._stale(slave, generation, "page"):
            return MergeStats(0, 0, 0, 0)
        counts = {"adopted": 0, "confirmed": 0, "conflicts": 0, "updated": 0}
        # Paths a queued Delete/Rename is about to remove from this slave (sent while the
        # page was on its way): adopting them would bring back a deleted or renamed file.
        self._leaving = self._queued_sources(slave)  # type: ignore[attr-defined]
        with self._tx(durable=False):  # type: ignore[attr-defined]
            for item in entries:
                outcome = self._merge_one(slave, generation, item)
                if outcome:
                    counts[outcome] += 1
        return MergeStats(counts["adopted"], counts["confirmed"], counts["conflicts"], 0,
                          counts["updated"])

    def _merge_one(self, slave: str, gen: int, item: InventoryEntry) -> str | None:
        """Merge one inventory entry; returns the MergeStats counter to bump, if any."""
        db = self._db
        mtime = item.mtime_ms / 1000.0
        try:
            path = normalize(item.path)
        except VfsError:
            log.warning("merge %s: invalid path %r: conflict", slave, item.path)
            return "conflicts"
        if path == "/":
            if item.is_dir:
                return None
            log.warning("merge %s: a file at the root path: conflict", slave)
            return "conflicts"
        parent, name = split(path)
        try:
            parent_id = self._makedirs(parent, mtime)
        except VfsError:
            log.warning("merge %s: %s: a parent is a file here: conflict", slave, path)
            return "conflicts"
        row = self._child(parent_id, name)  # type: ignore[attr-defined]
        if row is not None and bool(row[1]) != item.is_dir:
            log.warning("merge %s: %s is a %s on the slave and a %s here: conflict", slave, path,
                        "directory" if item.is_dir else "file", "directory" if row[1] else "file")
            return "conflicts"
        if item.is_dir:
            if row is None:
                entry_id = db.execute(
                    "INSERT INTO entries(parent, name, is_dir, size, mtime, owner, grp)"
                    " VALUES (?, ?, 1, 0, ?, ?, ?)",
                    (parent_id, name, mtime, ADOPTED_OWNER, ADOPTED_OWNER)).lastrowid
                self._cache(path, entry_id)  # type: ignore[attr-defined]
            return None
        if row is None:
            if path in self._leaving:
                return None
            self._adopt(parent_id, name, slave, gen, item.size, mtime)
            return "adopted"
        entry_id, size = row[0], row[2]
        if item.size == size:
            db.execute(_UPSERT_REPLICA, (entry_id, slave, gen))
            return "confirmed"
        others = self._holders(entry_id) - {slave}  # type: ignore[attr-defined]
        if not others:
            db.execute("UPDATE entries SET size = ?, mtime = ?, crc32 = NULL WHERE id = ?",
                       (item.size, mtime, entry_id))
            db.execute(_UPSERT_REPLICA, (entry_id, slave, gen))
            return "updated"
        return self._keep_both(slave, gen, parent_id, path, item, mtime, size, others)

    def _keep_both(self, slave: str, gen: int, parent_id: int, path: str, item: InventoryEntry,
                   mtime: float, size: int, others: set[str]) -> str:
        """Same path, another size on other slaves: adopt this slave's copy under a free
        conflict name and queue the matching Rename on the slave."""
        parent, name = split(path)
        # This slave no longer holds the content the tree records under `path`.
        self._db.execute("DELETE FROM replicas WHERE entry = (SELECT id FROM entries WHERE parent = ?"
                         " AND name = ?) AND slave = ?", (parent_id, name, slave))
        for attempt in range(1, MAX_CONFLICT_ATTEMPTS + 1):
            alias = conflict_name(name, slave, attempt)
            if self._child(parent_id, alias) is None:  # type: ignore[attr-defined]
                break
        else:
            log.error("merge %s: %s: no free conflict name; copy left unmerged", slave, path)
            return "conflicts"
        new_path = join(parent, alias)
        self._adopt(parent_id, alias, slave, gen, item.size, mtime)
        self.enqueue([(slave, Rename(req_id=0, src=path, dst=new_path, replace=False))])  # type: ignore[attr-defined]
        log.warning("merge %s: CONFLICT %s has %d bytes there, %d bytes on %s: both kept, "
                    "this copy renamed to %s", slave, path, item.size, size,
                    ",".join(sorted(others)), new_path)
        return "conflicts"

    def _adopt(self, parent_id: int, name: str, slave: str, gen: int, size: int, mtime: float) -> None:
        entry_id = self._db.execute(
            "INSERT INTO entries(parent, name, is_dir, size, mtime, owner, grp, crc32)"
            " VALUES (?, ?, 0, ?, ?, ?, ?, NULL)",
            (parent_id, name, size, mtime, ADOPTED_OWNER, ADOPTED_OWNER)).lastrowid
        self._db.execute(_UPSERT_REPLICA, (entry_id, slave, gen))

    def _makedirs(self, path: str, mtime: float) -> int:
        """Id of directory `path`, creating missing ones (adopted). Raises ENOTDIR.

        Iterative: an inventory may hold trees deeper than Python's recursion limit.
        """
        try:
            return self._dir_id(path)  # type: ignore[attr-defined, no-any-return]
        except VfsError as exc:
            if exc.errno != errno.ENOENT:
                raise
        current, walked = ROOT_ID, ""
        for name in path[1:].split("/"):
            walked = f"{walked}/{name}"
            cached = self._dirs.get(walked)
            if cached is not None:
                current = cached
                continue
            row = self._db.execute("SELECT id, is_dir FROM entries WHERE parent = ? AND name = ?",
                                   (current, name)).fetchone()
            if row is None:
                current = self._db.execute(
                    "INSERT INTO entries(parent, name, is_dir, size, mtime, owner, grp)"
                    " VALUES (?, ?, 1, 0, ?, ?, ?)",
                    (current, name, mtime, ADOPTED_OWNER, ADOPTED_OWNER)).lastrowid  # type: ignore[assignment]
            elif not row[1]:
                raise vfs_error(errno.ENOTDIR, walked)
            else:
                current = row[0]
            self._cache(walked, current)  # type: ignore[attr-defined]
        return current

    # ------------------------------------------------------------ finishing
    def _drop_in_dir(self, slave: str, dir_id: int, below_gen: int | None) -> int:
        """Drop `slave`'s replicas of the files directly in `dir_id` (only those older than
        `below_gen` if given); files left with no holder are removed. Returns the count."""
        db = self._db
        gen_clause = "" if below_gen is None else " AND gen < ?"
        args: tuple[Any, ...] = (slave, dir_id) if below_gen is None else (slave, dir_id, below_gen)
        dropped = db.execute(
            "DELETE FROM replicas WHERE slave = ? AND entry IN (SELECT id FROM entries"
            f" WHERE parent = ? AND is_dir = 0){gen_clause}", args).rowcount
        if dropped:
            db.execute("DELETE FROM entries WHERE parent = ? AND is_dir = 0 AND NOT EXISTS"
                       " (SELECT 1 FROM replicas r WHERE r.entry = entries.id)", (dir_id,))
        return dropped

    def finish_dirs(self, slave: str, generation: int, paths: Iterable[str]) -> int:
        """Directories `paths` were listed completely: `slave`'s replicas there not seen in
        this generation are dropped. Returns how many were dropped."""
        if self._stale(slave, generation, "directories"):
            return 0
        dropped = 0
        with self._tx(durable=False) as db:  # type: ignore[attr-defined]
            for path in paths:
                db.execute("UPDATE merge_stage SET state = ? WHERE slave = ? AND path = ?",
                           (STAGED_LISTED, slave, path))
                try:
                    dir_id = self._dir_id(path)  # type: ignore[attr-defined]
                except VfsError:
                    continue
                dropped += self._drop_in_dir(slave, dir_id, generation)
        return dropped

    def finish_partial(self, slave: str, generation: int) -> MergeStats:
        """End of a partial merge: directories recorded for `slave` that it no longer reported
        lose its replicas; the digests of the listed directories are recorded."""
        if self._stale(slave, generation, "finish"):
            return MergeStats(0, 0, 0, 0)
        dropped = 0
        with self._tx(durable=False) as db:  # type: ignore[attr-defined]
            gone = [p for (p,) in db.execute(
                "SELECT path FROM dir_summaries d WHERE slave = ? AND NOT EXISTS (SELECT 1 FROM"
                " merge_stage s WHERE s.slave = d.slave AND s.path = d.path)", (slave,))]
            for path in gone:
                try:
                    dir_id = self._dir_id(path)  # type: ignore[attr-defined]
                except VfsError:
                    continue
                dropped += self._drop_in_dir(slave, dir_id, generation)
            db.executemany("DELETE FROM dir_summaries WHERE slave = ? AND path = ?",
                           [(slave, p) for p in gone])
            self._record_staged(slave)
        if dropped:
            log.info("merge %s: %d files no longer on the slave", slave, dropped)
        return MergeStats(0, 0, 0, dropped)

    def _record_staged(self, slave: str) -> None:
        db = self._db
        db.execute("INSERT OR REPLACE INTO dir_summaries(slave, path, digest) SELECT slave, path,"
                   " digest FROM merge_stage WHERE slave = ? AND state = ?", (slave, STAGED_LISTED))
        db.execute("DELETE FROM merge_stage WHERE slave = ?", (slave,))

    def finish_merge(self, slave: str, generation: int) -> MergeStats:
        """End of a full merge: files `slave` held that were not seen in this merge lose it;
        files left with no holder are removed; the listed directories' digests replace the
        recorded ones. Returns counts (only `dropped` is non-zero).

        A superseded generation changes nothing.
        """
        if self._stale(slave, generation, "finish"):
            return MergeStats(0, 0, 0, 0)
        with self._tx(durable=False) as db:  # type: ignore[attr-defined]
            db.execute("DELETE FROM temp.picked")
            db.execute("INSERT INTO temp.picked SELECT entry FROM replicas WHERE slave = ? AND gen < ?",
                       (slave, generation))
            dropped = db.execute("DELETE FROM replicas WHERE slave = ? AND gen < ?",
                                 (slave, generation)).rowcount
            removed = db.execute(
                "DELETE FROM entries WHERE id IN (SELECT id FROM temp.picked) AND is_dir = 0"
                " AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.entry = entries.id)").rowcount
            db.execute("DELETE FROM temp.picked")
            db.execute("DELETE FROM dir_summaries WHERE slave = ? AND digest != ?",
                       (slave, UNKNOWN_DIGEST))
            self._record_staged(slave)
        if dropped:
            log.info("merge %s: %d files no longer on the slave, %d removed (no holder left)",
                     slave, dropped, removed)
        return MergeStats(0, 0, 0, dropped)
