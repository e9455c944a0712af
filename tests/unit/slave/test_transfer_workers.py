"""The slave's pooled transfer workers, the upload CRC helper thread, and the byte totals
the transfers moved (stats)."""

from __future__ import annotations

import os
import threading
import time
import zlib
from pathlib import Path

import pytest

from common.config import SlaveSection
from slave.storage import Storage
from slave.transfers import TransferManager
from slave.workers import Kind, Transfer, WorkerPool, _CrcHelper


def _wait(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_finished_worker_runs_the_next_transfer() -> None:
    done: list[int] = []
    pool = WorkerPool(done.append)
    for i in range(5):
        pool.submit(i)
        _wait(lambda: len(done) == i + 1 and pool.idle == 1)
    assert done == [0, 1, 2, 3, 4]
    assert pool.threads == 1
    pool.close()
    _wait(lambda: pool.threads == 0 and pool.idle == 0)


def test_busy_workers_never_delay_a_new_transfer() -> None:
    release = threading.Event()
    started: list[int] = []

    def run(job: int) -> None:
        started.append(job)
        release.wait(5)

    pool = WorkerPool(run)
    for i in range(3):
        pool.submit(i)
    _wait(lambda: len(started) == 3)
    assert pool.threads == 3
    release.set()
    _wait(lambda: pool.idle == 3)
    pool.close()
    _wait(lambda: pool.threads == 0)


def test_idle_workers_exit() -> None:
    done: list[int] = []
    pool = WorkerPool(done.append, idle_s=0.05)
    pool.submit(1)
    _wait(lambda: pool.threads == 0)
    assert pool.idle == 0
    pool.submit(2)  # a new worker starts
    _wait(lambda: done == [1, 2])


def test_crc_helper_matches_zlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        head = 1000
        os.write(fd, data[:head])
        helper = _CrcHelper(fd, zlib.crc32(data[:head]), head)
        pos = head
        while pos < len(data):
            n = os.write(fd, data[pos:pos + 300_000])
            pos += n
            helper.written_to(pos)
        assert helper.finish() == zlib.crc32(data)
    finally:
        os.close(fd)


def test_crc_helper_reports_a_short_file(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"abc")
        helper = _CrcHelper(fd, 0, 0)
        helper.written_to(10)  # more than the file holds
        assert helper.finish() is None
    finally:
        os.close(fd)


def test_inline_download_that_would_block_goes_on_in_a_worker(tmp_path: Path, monkeypatch) -> None:
    import socket

    from common import messages as m
    from common.config import SlaveSection
    from slave import transfers, workers
    from slave.outbox import Outbox
    from slave.storage import Storage

    # Raised so that a file larger than the socket buffers is tried inline first.
    monkeypatch.setattr(workers, "INLINE_SEND_MAX", 64 << 20)
    data = os.urandom(8 << 20)
    (tmp_path / "f").write_bytes(data)
    outbox = Outbox()
    manager = transfers.TransferManager(Storage(str(tmp_path)), SlaveSection(
        name="s1", root=str(tmp_path), passive_pool=1, data_timeout=10), outbox)
    [port] = manager.open_pool()
    try:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(10)
        client.connect(("127.0.0.1", port))
        with client:
            manager.start_send(m.StartSend(req_id=1, xfer_id=7, path="/f", pool_port=port,
                                           allowed_ip="127.0.0.1"))
            assert outbox.drain() == []  # not done inline: the socket would have blocked
            assert manager.pool.threads == 1
            got = bytearray()
            while chunk := client.recv(1 << 20):
                got += chunk
        assert got == data
        results: list[m.Message] = []
        _wait(lambda: bool(results.extend(outbox.drain()) or results))
        [done] = results
        assert isinstance(done, m.TransferDone) and done.ok and done.bytes == len(data)
    finally:
        manager.shutdown(5)
        outbox.close()


def test_inline_send_only_from_the_page_cache(tmp_path: Path) -> None:
    from common.config import SlaveSection
    from slave.outbox import Outbox
    from slave.storage import Storage
    from slave.transfers import TransferManager

    path = tmp_path / "f"
    path.write_bytes(os.urandom(64 * 1024))
    outbox = Outbox()
    manager = TransferManager(Storage(str(tmp_path)), SlaveSection(name="s1", root=str(tmp_path)), outbox)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # evicted: a read would wait for the disk
        if manager.mover._cached(fd, 0, 64 * 1024):
            pytest.skip("the page cache cannot be dropped on this filesystem (tmpfs?)")
        os.pread(fd, 64 * 1024, 0)
        assert manager.mover._cached(fd, 0, 64 * 1024)
        assert manager.mover._cached(fd, 64 * 1024, 0)
    finally:
        os.close(fd)
        outbox.close()


def _transfer(xfer_id: int, kind: Kind) -> Transfer:
    return Transfer(xfer_id, kind, -1, 0, Path("/nonexistent"), None, None, ("127.0.0.1", 9))


def test_moved_sums_running_and_finished_transfers_per_direction(tmp_path: Path) -> None:
    manager = TransferManager(Storage(str(tmp_path)), SlaveSection(name="s1", root=str(tmp_path)),
                              outbox=None)  # type: ignore[arg-type]
    assert manager.moved() == (0, 0)
    down, up = _transfer(1, Kind.SEND), _transfer(2, Kind.RECEIVE)
    manager.transfers.update({1: down, 2: up})
    down.bytes, up.bytes = 300, 50  # the workers' progress counters
    assert manager.moved() == (300, 50)
    down.bytes = 1000
    manager.finished(1)  # its bytes stay counted once it is gone
    assert manager.moved() == (1000, 50)
    again = _transfer(3, Kind.SEND)
    manager.transfers[3] = again
    again.bytes = 7
    up.bytes = 80
    assert manager.moved() == (1007, 80)
    manager.finished(2)
    manager.finished(3)
    manager.finished(3)  # a repeated outcome adds nothing
    assert manager.moved() == (1007, 80)


def test_a_transfer_on_a_pooled_port_ended_by_shutdown_is_taken_out_cleanly(tmp_path: Path) -> None:
    """shutdown() closes the pool while a transfer still holds a port; taking that transfer's
    TransferDone out afterwards must not fail (the service then sends it and says Bye)."""
    from common import messages as m
    from common.config import SlaveSection
    from slave import transfers
    from slave.outbox import Outbox
    from slave.storage import Storage

    outbox = Outbox()
    manager = transfers.TransferManager(Storage(str(tmp_path)), SlaveSection(
        name="s1", root=str(tmp_path), passive_pool=1, data_timeout=10), outbox)
    [port] = manager.open_pool()
    try:
        manager.start_receive(m.StartReceive(req_id=1, xfer_id=7, path="/up.bin", pool_port=port,
                                             allowed_ip="127.0.0.1"))
        manager.shutdown(5)  # aborts the upload still waiting for its client, empties the pool
        results: list[m.Message] = []
        _wait(lambda: bool(results.extend(outbox.drain()) or results))
        [done] = results
        assert isinstance(done, m.TransferDone) and not done.ok
        manager.finished(7)
        assert 7 not in manager.transfers and len(manager.pooled) == 0
    finally:
        outbox.close()
