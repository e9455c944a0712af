"""sqlite3.Error while the master changes the VFS for a client: a 451, never a hang, and an
upload's TransferDone is only acknowledged once it is recorded (the slave re-sends it)."""

from __future__ import annotations

import contextlib
import sqlite3
from types import SimpleNamespace
from typing import Any

from common import messages as m
from master.replies import METADATA_FAILED
from master.transfer_state import State
from master.transfers import Transfer


class _FailingVFS:
    def __init__(self) -> None:
        self.fail = True
        self.recorded: list[str] = []

    @contextlib.contextmanager
    def transaction(self) -> Any:
        if self.fail:
            raise sqlite3.OperationalError("database or disk is full")
        yield

    def record_upload(self, path: str, *args: Any) -> tuple[None, set[str]]:
        self.recorded.append(path)
        return None, set()

    def record_uploads(self, uploads: list[Any]) -> list[tuple[None, list[Any]]]:
        with self.transaction():
            return [(self.record_upload(up.path)[0], []) for up in uploads]

    def enqueue(self, ops: Any) -> list:
        return list(ops)


class _Session:
    username = "alice"
    _closed = False

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.replies: list[str] = []
        self.transfer: Transfer | None = None

    def current_transfer(self) -> Transfer | None:
        return self.transfer

    def respond(self, text: str) -> None:
        self.replies.append(text)

    def log_cmd(self, *args: Any) -> None:
        pass

    def log_transfer(self, **kw: Any) -> None:
        pass

    def on_file_received(self, path: str) -> None:
        pass

    def detach_transfer(self) -> None:
        self.transfer = None


def _cluster(vfs: Any) -> Any:
    link = SimpleNamespace(notified=[], unwatched=[], notify=lambda s, c: link.notified.append(c),
                           unwatch=lambda x: link.unwatched.append(x), send_op=lambda op: None)
    ioloop = SimpleNamespace(later=[], call_later=lambda d, f, *a, **k: ioloop.later.append((f, a)))
    registry = SimpleNamespace(transfer_finished=lambda s: None)
    return SimpleNamespace(vfs=vfs, link=link, ioloop=ioloop, registry=registry, recorder=None)


def test_upload_not_recorded_gets_451_and_no_ack_until_recorded() -> None:
    vfs = _FailingVFS()
    cluster = _cluster(vfs)
    session = _Session(cluster)
    transfer = Transfer(session, "STOR", "/up.bin", "s1", 7)  # type: ignore[arg-type]
    transfer.machine.state = State.RUNNING  # started on the slave
    session.transfer = transfer
    done = m.TransferDone(xfer_id=7, ok=True, bytes=5, size=5, crc32=1)
    assert transfer.on_done(done) is False  # the link sends no DoneAck
    assert session.replies == [METADATA_FAILED]
    assert vfs.recorded == [] and cluster.link.notified == []  # the file stays on the slave
    assert transfer.on_done(done) is False  # re-sent while the store still fails
    vfs.fail = False
    assert transfer.on_done(done) is True  # re-sent again: recorded, now acknowledged
    assert vfs.recorded == ["/up.bin"]
    assert session.replies == [METADATA_FAILED]


def test_link_acks_only_a_recorded_outcome() -> None:
    from master.link import BrokerLink
    acked: list[tuple[str, int]] = []
    results = iter([False, True])
    watcher = SimpleNamespace(on_done=lambda msg: next(results), on_lost=lambda r: None)
    link = SimpleNamespace(_watchers={7: ("s1", watcher)}, _grace={}, _pending={},
                           _ack=lambda slave, xfer_id: acked.append((slave, xfer_id)),
                           _safe_call=BrokerLink._safe_call)
    wrapped = m.FromSlave(slave="s1", incarnation="i",
                          msg=m.TransferDone(xfer_id=7, ok=True, bytes=5, size=5, crc32=1))
    BrokerLink._on_from_slave(link, wrapped)  # type: ignore[arg-type]
    assert acked == [] and 7 in link._watchers
    BrokerLink._on_from_slave(link, wrapped)  # type: ignore[arg-type]
    assert acked == [("s1", 7)] and 7 not in link._watchers


def test_metadata_change_failure_replies_451() -> None:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pyftpdlib imports asyncore
        from master.handler import ClusterFTPHandler
    session = SimpleNamespace(replies=[], _closed=False)
    session.respond = session.replies.append

    def remove(path: str) -> list:
        raise sqlite3.OperationalError("disk I/O error")

    ClusterFTPHandler._change_metadata(session, remove, ("/f",), "250 File removed.")  # type: ignore[arg-type]
    assert session.replies == ["451 Requested action aborted: local error: metadata store failed."]
