"""The real slave process (`python -m slave`) against a broker played by the test.

The test binds a zmq ROUTER (ROUTER_MANDATORY) where the slave's DEALER connects and a SUB
where its stats PUB connects, speaks common.wire, and plays the FTP client with plain
sockets. Every wait is bounded; nothing sleeps where an event can be awaited.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
import zmq

from common import messages as m
from common import wire

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T", bound=m.Message)


class FakeBroker:
    """The broker side of the slave link, plus helpers that act as the FTP client."""

    def __init__(self, port: int = 0) -> None:
        self.ctx = zmq.Context()
        self.ctx.setsockopt(zmq.LINGER, 0)
        self.bind(port)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.STATS_TOPIC_PREFIX)
        self.sub.bind("tcp://127.0.0.1:0")
        self.stats_endpoint = self.sub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.ident: bytes | None = None
        self.hello: m.Hello | None = None
        self.backlog: list[m.Message] = []
        self.next_id = 1000
        self.last_hb = 0.0
        self.heartbeats = True

    def bind(self, port: int) -> None:
        # its own context, so that killing it (close + term) really frees the port
        self.router_ctx = zmq.Context()
        self.router = self.router_ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.bind(f"tcp://127.0.0.1:{port}")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.endpoint.rsplit(":", 1)[1])

    def kill_router(self) -> None:
        self.router.close(linger=0)
        self.router_ctx.term()
        self.backlog.clear()

    def close(self) -> None:
        self.kill_router()
        self.sub.close()
        self.ctx.term()

    def ids(self) -> int:
        self.next_id += 1
        return self.next_id

    # ------------------------------------------------------------ link

    def send(self, msg: m.Message) -> None:
        assert self.ident is not None, "no Hello seen yet"
        self.router.send_multipart([self.ident, *wire.encode(msg)])

    def _recv_one(self, timeout: float) -> m.Message | None:
        if self.heartbeats and self.ident is not None and time.monotonic() - self.last_hb > 0.5:
            self.last_hb = time.monotonic()
            self.send(m.Heartbeat())
        if not self.router.poll(int(max(timeout, 0) * 1000)):
            return None
        ident, *frames = self.router.recv_multipart()
        msg = wire.decode(frames, wire.SLAVE_TO_BROKER)
        if isinstance(msg, m.Hello):
            self.ident, self.hello = ident, msg
        return msg

    def expect(self, kind: type[T], pred: Callable[[T], bool] = lambda _: True,
               timeout: float = 10.0) -> T:
        """The first message of `kind` matching `pred` (others stay in the backlog)."""
        for i, msg in enumerate(self.backlog):
            if isinstance(msg, kind) and pred(msg):
                del self.backlog[i]
                return msg
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._recv_one(min(left, 0.2))
            if msg is None:
                continue
            if isinstance(msg, kind) and pred(msg):
                return msg
            if not isinstance(msg, (m.Heartbeat, m.Hello)):
                self.backlog.append(msg)
        raise AssertionError(f"no {kind.__name__} within {timeout} s; backlog {self.backlog[-5:]}")

    def reply(self, req_id: int, timeout: float = 10.0) -> m.Message:
        return self.expect(m.Message, lambda r: getattr(r, "req_id", None) == req_id, timeout)

    def request(self, cmd: Any, **kw: Any) -> Any:
        req_id = self.ids()
        self.send(cmd(req_id=req_id, **kw))
        return self.reply(req_id)

    def done(self, xfer_id: int, timeout: float = 20.0, ack: bool = True) -> m.TransferDone:
        done = self.expect(m.TransferDone, lambda d: d.xfer_id == xfer_id, timeout)
        if ack:
            self.send(m.DoneAck(xfer_id=xfer_id))
        return done

    def stats(self, timeout: float = 10.0) -> m.SlaveStats:
        assert self.sub.poll(int(timeout * 1000)), "no stats"
        return wire.decode_stats(self.sub.recv_multipart())

    # ------------------------------------------------------------ data plane helpers

    def listen(self, xfer_id: int, allowed_ip: str = "127.0.0.1") -> int:
        reply = self.request(m.Listen, xfer_id=xfer_id, allowed_ip=allowed_ip)
        assert isinstance(reply, m.Listening), reply
        return reply.port

    def passive_get(self, path: str, offset: int = 0) -> tuple[bytes, m.TransferDone]:
        xfer = self.ids()
        port = self.listen(xfer)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            started = self.request(m.StartSend, xfer_id=xfer, path=path, offset=offset)
            assert isinstance(started, m.Started), started
            data = recv_all(client)
        return data, self.done(xfer)

    def active_put(self, path: str, data: bytes, **kw: Any) -> m.TransferDone:
        xfer = self.ids()
        with socket.create_server(("127.0.0.1", 0)) as server:
            server.settimeout(10)
            started = self.request(m.StartReceive, xfer_id=xfer, path=path,
                                   connect_to=("127.0.0.1", server.getsockname()[1]), **kw)
            assert isinstance(started, m.Started), started
            conn, _ = server.accept()
            with conn:
                conn.sendall(data)
        return self.done(xfer)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


class SlaveProc:
    def __init__(self, tmp_path: Path, broker: FakeBroker, **overrides: Any) -> None:
        self.root = tmp_path / "root"
        self.root.mkdir(exist_ok=True)
        settings = {"name": "s1", "root": str(self.root), "broker_endpoint": broker.endpoint,
                    "stats_endpoint": broker.stats_endpoint, "stats_interval_ms": 200,
                    "data_timeout": 30, "fsync": True, **overrides}
        lines = ["[slave]"] + [f"{k} = {toml(v)}" for k, v in settings.items()]
        lines += ["[log]", 'level = "debug"']
        self.config = tmp_path / "slave.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = open(tmp_path / "slave.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "slave", "--config", str(self.config)],
                                     cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return str(value)


@pytest.fixture
def make_slave(tmp_path: Path) -> Iterator[Callable[..., tuple[FakeBroker, SlaveProc]]]:
    started: list[tuple[FakeBroker, SlaveProc]] = []

    def make(**overrides: Any) -> tuple[FakeBroker, SlaveProc]:
        broker = FakeBroker()
        slave = SlaveProc(tmp_path, broker, **overrides)
        started.append((broker, slave))
        hello = broker.expect(m.Hello, timeout=15)
        assert hello.name == overrides.get("name", "s1")
        broker.send(m.Welcome(heartbeat_ms=1000, liveness=5))
        return broker, slave

    yield make
    for broker, slave in started:
        slave.stop()
        broker.close()
        if slave.proc.returncode not in (0, -signal.SIGKILL):
            print((tmp_path / "slave.log").read_text()[-5000:])


@pytest.fixture
def link(make_slave: Callable[..., tuple[FakeBroker, SlaveProc]]) -> tuple[FakeBroker, SlaveProc]:
    return make_slave()


# ---------------------------------------------------------------- registration, stats

def test_hello_welcome_and_stats(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    first = broker.stats()
    second = broker.stats()
    assert first.name == "s1" and second.seq > first.seq
    assert second.disk_total > 0 and second.ncpu >= 1
    assert broker.request(m.MakeDir, path="/probe") == m.OpResult(req_id=broker.next_id, ok=True)


# ---------------------------------------------------------------- transfers

def test_passive_retr_16mib_from_offset(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    data = os.urandom(16 * 1024 * 1024)
    (slave.root / "big.bin").write_bytes(data)
    offset = 1_234_567
    got, done = broker.passive_get("/big.bin", offset)
    assert got == data[offset:]
    assert done.ok and done.bytes == len(data) - offset and done.size == len(data)


def test_active_stor_crc_and_disk(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    data = os.urandom(3 * 1024 * 1024 + 17)
    done = broker.active_put("/new/dir/up.bin", data)
    assert done.ok, done
    assert (done.bytes, done.size, done.crc32) == (len(data), len(data), zlib.crc32(data))
    assert (slave.root / "new" / "dir" / "up.bin").read_bytes() == data
    assert not [p for p in (slave.root / "new" / "dir").iterdir() if p.name != "up.bin"]


def test_rest_stor_and_append_crc_cover_whole_file(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    old = os.urandom(1_000_000)
    (slave.root / "f.bin").write_bytes(old)
    tail = os.urandom(300_000)
    done = broker.active_put("/f.bin", tail, offset=500_000)
    expect = old[:500_000] + tail
    assert done.ok and done.bytes == len(tail)
    assert (done.size, done.crc32) == (len(expect), zlib.crc32(expect))
    assert (slave.root / "f.bin").read_bytes() == expect

    more = os.urandom(200_000)
    done = broker.active_put("/f.bin", more, append=True)
    expect += more
    assert (done.ok, done.size, done.crc32) == (True, len(expect), zlib.crc32(expect))
    assert (slave.root / "f.bin").read_bytes() == expect

    refused = broker.request(m.StartReceive, xfer_id=broker.ids(), path="/f.bin",
                             offset=len(expect) + 1, connect_to=("127.0.0.1", 9))
    assert isinstance(refused, m.OpResult) and not refused.ok and refused.errno != 0


def test_abort_mid_transfer(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    (slave.root / "big.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    xfer = broker.ids()
    port = broker.listen(xfer)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert isinstance(broker.request(m.StartSend, xfer_id=xfer, path="/big.bin"), m.Started)
        client.recv(1000)  # bytes are flowing; the client now stops reading
        t0 = time.monotonic()
        assert broker.request(m.Abort, xfer_id=xfer) == m.OpResult(req_id=broker.next_id, ok=True)
        done = broker.done(xfer, timeout=5)
        elapsed = time.monotonic() - t0
    assert done.aborted and not done.ok and 0 < done.bytes < 64 * 1024 * 1024
    assert elapsed < 2.0


def test_listener_abort_and_stalled_upload_times_out(make_slave: Callable[..., Any]) -> None:
    broker, slave = make_slave(data_timeout=1)
    # an unclaimed listener closed by Abort refuses connections afterwards
    xfer = broker.ids()
    port = broker.listen(xfer)
    assert broker.request(m.Abort, xfer_id=xfer) == m.OpResult(req_id=broker.next_id, ok=True)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # so is the listener of a start that was refused (missing file)
    xfer = broker.ids()
    port = broker.listen(xfer)
    refused = broker.request(m.StartSend, xfer_id=xfer, path="/missing")
    assert isinstance(refused, m.OpResult) and not refused.ok and refused.errno == errno.ENOENT
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # a stalled upload ends after data_timeout with the bytes that arrived kept
    xfer = broker.ids()
    port = broker.listen(xfer)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert isinstance(broker.request(m.StartReceive, xfer_id=xfer, path="/stall"), m.Started)
        client.sendall(b"partial")
        t0 = time.monotonic()
        done = broker.done(xfer, timeout=10)
    assert not done.ok and not done.aborted and done.bytes == 7 and done.errno != 0
    assert 0.5 < time.monotonic() - t0 < 5
    assert (done.size, done.crc32) == (7, zlib.crc32(b"partial"))


def test_upload_failing_before_any_byte_keeps_old_file(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    (slave.root / "keep").write_bytes(b"old content")
    xfer = broker.ids()
    port = broker.listen(xfer)
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        assert isinstance(broker.request(m.StartReceive, xfer_id=xfer, path="/keep"), m.Started)
        broker.send(m.Abort(req_id=0, xfer_id=xfer))  # a notification: no reply expected
        done = broker.done(xfer, timeout=5)
    assert done.aborted and done.bytes == 0 and done.crc32 is None
    assert (slave.root / "keep").read_bytes() == b"old content"
    assert sorted(p.name for p in slave.root.iterdir()) == ["keep"]  # no temp file left
    assert broker.request(m.MakeDir, path="/after").ok
    assert not [r for r in broker.backlog if getattr(r, "req_id", None) == 0]


def _reset_upload(broker: FakeBroker, root: Path, path: str, data: bytes) -> m.TransferDone:
    """A passive upload of `data` to top-level `path` whose data connection is reset (RST, not
    FIN) once the slave has written all of `data` to its temp file under `root`."""
    xfer = broker.ids()
    port = broker.listen(xfer)
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert isinstance(broker.request(m.StartReceive, xfer_id=xfer, path=path), m.Started)
        client.sendall(data)
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size >= len(data) for p in root.glob(".ftpc-part.*")):
            assert time.monotonic() < deadline, "the slave did not write what was sent"
            time.sleep(0.01)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        client.close()
    return broker.done(xfer, timeout=10)


def test_failed_overwrite_keeps_old_file(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    (slave.root / "keep").write_bytes(b"old content")
    done = _reset_upload(broker, slave.root, "/keep", b"new bytes that never finish")
    assert not done.ok and done.kept_old and done.errno != 0
    assert done.bytes == len(b"new bytes that never finish")
    assert (done.size, done.crc32) == (len(b"old content"), None)
    assert (slave.root / "keep").read_bytes() == b"old content"
    assert sorted(p.name for p in slave.root.iterdir()) == ["keep"]  # no temp file left


def test_failed_new_upload_keeps_partial_under_its_name(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    done = _reset_upload(broker, slave.root, "/fresh", b"partial")
    assert not done.ok and not done.kept_old and done.bytes == 7
    assert (done.size, done.crc32) == (7, zlib.crc32(b"partial"))
    assert (slave.root / "fresh").read_bytes() == b"partial"  # REST can resume it
    assert sorted(p.name for p in slave.root.iterdir()) == ["fresh"]


def test_stor_of_a_220_byte_multibyte_name(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    name = "\u00e9" * 110  # 220 bytes in UTF-8: the old temp name (prefix + uuid + name) was too long
    assert len(name.encode()) == 220
    done = broker.active_put(f"/d/{name}", b"payload")
    assert done.ok and done.size == 7, done
    assert (slave.root / "d" / name).read_bytes() == b"payload"
    assert [p.name for p in (slave.root / "d").iterdir()] == [name]


def served_to_127_0_0_2_only(broker: FakeBroker, port: int, xfer: int) -> None:
    """The transfer listening on `port` closes a connection from 127.0.0.1 unserved and sends
    its file (b"hello") to one from 127.0.0.2."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as wrong:
        assert wrong.recv(10) == b""  # closed without data
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=("127.0.0.2", 0)) as right:
        assert recv_all(right) == b"hello"
    assert broker.done(xfer).ok


def test_passive_accepts_only_allowed_ip(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    (slave.root / "f").write_bytes(b"hello")
    xfer = broker.ids()
    port = broker.listen(xfer, allowed_ip="127.0.0.2")
    assert isinstance(broker.request(m.StartSend, xfer_id=xfer, path="/f"), m.Started)
    served_to_127_0_0_2_only(broker, port, xfer)


# ---------------------------------------------------------------- pooled passive listeners

def pool_ports(broker: FakeBroker) -> list[int]:
    assert broker.hello is not None
    return list(broker.hello.passive_pool)


def test_pooled_listener_serves_transfer_after_transfer(make_slave) -> None:
    broker, slave = make_slave(passive_pool=3)
    ports = pool_ports(broker)
    assert len(ports) == 3
    port = ports[0]
    (slave.root / "f").write_bytes(b"hello")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as second:
        xfer = broker.ids()
        broker.request(m.StartSend, xfer_id=xfer, path="/f", pool_port=port, allowed_ip="127.0.0.1")
        assert recv_all(client) == b"hello"
        assert broker.done(xfer).ok
        # A second connection (a client retrying) is closed when the transfer ends: it must
        # not become the next transfer's data connection.
        assert second.recv(10) == b""
    for _ in range(3):  # the same listener, one transfer after the other
        # The client may connect before the slave hears of the transfer (PASV is answered
        # without asking the slave): the connection waits in the accept queue.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            xfer = broker.ids()
            started = broker.request(m.StartSend, xfer_id=xfer, path="/f", pool_port=port,
                                     allowed_ip="127.0.0.1")
            assert isinstance(started, m.Started), started
            assert recv_all(client) == b"hello"
        assert broker.done(xfer).ok
    xfer = broker.ids()
    broker.request(m.StartReceive, xfer_id=xfer, path="/up", pool_port=port, allowed_ip="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"uploaded")
    done = broker.done(xfer)
    assert done.ok and (slave.root / "up").read_bytes() == b"uploaded"


def test_pooled_listener_accepts_only_allowed_ip(make_slave) -> None:
    broker, slave = make_slave(passive_pool=1)
    [port] = pool_ports(broker)
    (slave.root / "f").write_bytes(b"hello")
    xfer = broker.ids()
    started = broker.request(m.StartSend, xfer_id=xfer, path="/f", pool_port=port,
                             allowed_ip="127.0.0.2")
    assert isinstance(started, m.Started)
    served_to_127_0_0_2_only(broker, port, xfer)


def test_pooled_port_lent_once_abort_and_clear(make_slave) -> None:
    broker, slave = make_slave(passive_pool=1)
    [port] = pool_ports(broker)
    (slave.root / "f").write_bytes(b"hello")
    xfer = broker.ids()
    assert isinstance(broker.request(m.StartSend, xfer_id=xfer, path="/f", pool_port=port,
                                     allowed_ip="127.0.0.1"), m.Started)
    busy = broker.request(m.StartSend, xfer_id=broker.ids(), path="/f", pool_port=port,
                          allowed_ip="127.0.0.1")
    assert isinstance(busy, m.OpResult) and busy.errno == errno.EBUSY, busy
    cleared = broker.request(m.ClearPort, port=port)
    assert isinstance(cleared, m.OpResult) and cleared.errno == errno.EBUSY, cleared
    unknown = broker.request(m.ClearPort, port=1)
    assert isinstance(unknown, m.OpResult) and unknown.errno == errno.ENOENT, unknown
    # Abort wakes the worker waiting on the shared listener without closing the listener.
    began = time.monotonic()
    broker.send(m.Abort(req_id=0, xfer_id=xfer))
    done = broker.done(xfer)
    assert done.aborted and not done.ok and time.monotonic() - began < 5
    # A client that connected for a route given up: ClearPort closes its connection...
    stale = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert broker.request(m.ClearPort, port=port) == m.OpResult(req_id=broker.next_id, ok=True)
    assert stale.recv(10) == b""
    stale.close()
    # ...and the listener still serves the next transfer.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        xfer = broker.ids()
        broker.request(m.StartSend, xfer_id=xfer, path="/f", pool_port=port, allowed_ip="127.0.0.1")
        assert recv_all(client) == b"hello"
    assert broker.done(xfer).ok


def test_a_refused_start_closes_the_connection_waiting_on_its_pooled_port(make_slave) -> None:
    broker, slave = make_slave(passive_pool=1)
    [port] = pool_ports(broker)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        refused = broker.request(m.StartSend, xfer_id=broker.ids(), path="/missing", pool_port=port,
                                 allowed_ip="127.0.0.1")
        assert isinstance(refused, m.OpResult) and refused.errno == errno.ENOENT, refused
        assert client.recv(10) == b""


def test_small_download_to_a_client_that_reads_late(make_slave) -> None:
    broker, slave = make_slave(passive_pool=1)
    [port] = pool_ports(broker)
    data = os.urandom(256 * 1024)  # INLINE_SEND_MAX: sent from the main loop if the socket takes it
    (slave.root / "f").write_bytes(data)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: EAGAIN early
    client.settimeout(10)
    client.connect(("127.0.0.1", port))
    with client:
        xfer = broker.ids()
        assert isinstance(broker.request(m.StartSend, xfer_id=xfer, path="/f", pool_port=port,
                                         allowed_ip="127.0.0.1"), m.Started)
        # The slave's loop still answers while the rest waits for the reader.
        assert isinstance(broker.request(m.MakeDir, path="/probe"), m.OpResult)
        time.sleep(0.3)
        assert recv_all(client) == data
    done = broker.done(xfer)
    assert done.ok and done.bytes == len(data)


def test_lazy_started_is_left_out_when_the_transfer_ends_first(make_slave) -> None:
    broker, slave = make_slave(passive_pool=1)
    [port] = pool_ports(broker)
    (slave.root / "f").write_bytes(b"hello")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        xfer, req = broker.ids(), broker.ids()
        broker.send(m.StartSend(req_id=req, xfer_id=xfer, path="/f", pool_port=port,
                                allowed_ip="127.0.0.1", lazy_started=True))
        assert recv_all(client) == b"hello"
    assert broker.done(xfer).ok  # answers the start: no Started follows
    with pytest.raises(AssertionError):
        broker.expect(m.Started, lambda s: s.req_id == req, timeout=0.5)
    # A transfer still running after the hold gets its Started.
    xfer, req = broker.ids(), broker.ids()
    sent_at = time.monotonic()
    broker.send(m.StartSend(req_id=req, xfer_id=xfer, path="/f", pool_port=port,
                            allowed_ip="127.0.0.1", lazy_started=True))
    assert broker.expect(m.Started, lambda s: s.req_id == req).xfer_id == xfer
    assert time.monotonic() - sent_at >= 0.04
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert recv_all(client) == b"hello"
    assert broker.done(xfer).ok


def test_pool_takes_at_most_half_of_passive_ports(make_slave) -> None:
    from common.launcher import free_ports
    base = free_ports(1)[0]  # below the ephemeral range: its neighbours are free too, most likely
    broker, slave = make_slave(passive_pool=32, passive_ports=[base, base + 3])
    ports = pool_ports(broker)
    assert len(ports) == 2 and all(base <= p <= base + 3 for p in ports)
    listening = broker.listen(broker.ids())  # the rest of the range serves Listen
    assert base <= listening <= base + 3 and listening not in ports


def test_transfer_done_resent_until_acked(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    xfer = broker.ids()
    with socket.create_server(("127.0.0.1", 0)) as server:
        broker.request(m.StartReceive, xfer_id=xfer, path="/r", connect_to=server.getsockname())
        conn, _ = server.accept()
        conn.sendall(b"abc")
        conn.close()
    first = broker.done(xfer, ack=False)
    again = broker.done(xfer, ack=False, timeout=5)
    assert first == again and first.ok
    broker.send(m.DoneAck(xfer_id=xfer))
    with pytest.raises(AssertionError):
        broker.expect(m.TransferDone, timeout=4)  # acked: no more re-sends (period is 3 s)


def test_max_transfers_refused(make_slave: Callable[..., Any]) -> None:
    broker, slave = make_slave(max_transfers=2)
    broker.listen(broker.ids())
    broker.listen(broker.ids())
    refused = broker.request(m.Listen, xfer_id=broker.ids(), allowed_ip="127.0.0.1")
    assert isinstance(refused, m.OpResult) and not refused.ok and "max_transfers" in refused.error


def test_hundred_concurrent_passive_transfers(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    n = 100
    payloads = {i: os.urandom(10_000 + i) for i in range(n)}
    for i in range(0, n, 2):
        (slave.root / f"get{i}").write_bytes(payloads[i])
    xfers = {i: broker.ids() for i in range(n)}
    ports = {i: broker.listen(xfers[i]) for i in range(n)}
    clients = {i: socket.create_connection(("127.0.0.1", ports[i]), timeout=20) for i in range(n)}
    for i in range(n):
        if i % 2 == 0:
            broker.send(m.StartSend(req_id=broker.ids(), xfer_id=xfers[i], path=f"/get{i}"))
        else:
            broker.send(m.StartReceive(req_id=broker.ids(), xfer_id=xfers[i], path=f"/put{i}"))
    for _ in range(n):
        assert isinstance(broker.expect(m.Started), m.Started)
    results: dict[int, bytes] = {}

    def client(i: int) -> None:
        with clients[i] as sock:
            if i % 2 == 0:
                results[i] = recv_all(sock)
            else:
                sock.sendall(payloads[i])
                results[i] = b""

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    for i in range(n):
        done = broker.done(xfers[i])
        assert done.ok and done.bytes == len(payloads[i]), done
        if i % 2 == 0:
            assert results[i] == payloads[i]
        else:
            assert done.crc32 == zlib.crc32(payloads[i])
            assert (slave.root / f"put{i}").read_bytes() == payloads[i]


# ---------------------------------------------------------------- metadata, checksum, inventory

def test_delete_and_rename_tree(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    for rel in ("d/a", "d/e/b", "d/e/f/c"):
        (slave.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (slave.root / rel).write_bytes(rel.encode())
    assert broker.request(m.Rename, src="/d", dst="/x/y/d2").ok
    assert (slave.root / "x/y/d2/e/f/c").read_bytes() == b"d/e/f/c"
    assert not (slave.root / "d").exists()
    assert broker.request(m.Delete, path="/x").ok
    assert broker.request(m.Delete, path="/x").ok  # missing is success
    assert not (slave.root / "x").exists()
    assert broker.request(m.MakeDir, path="/m/n").ok and (slave.root / "m/n").is_dir()
    assert broker.request(m.RemoveDir, path="/m/n").ok and not (slave.root / "m/n").exists()


def test_escaping_paths_refused(link: tuple[FakeBroker, SlaveProc], tmp_path: Path) -> None:
    broker, slave = link
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"keep")
    os.symlink(outside, slave.root / "link")
    before = sorted(p.name for p in tmp_path.iterdir())
    bad = ["/../outside/secret", "/a/../../outside", "/x\x00y", "/link/secret", "relative"]
    for path in bad:
        for cmd, kw in ((m.Delete, {"path": path}), (m.MakeDir, {"path": path}),
                        (m.Rename, {"src": "/link", "dst": path}),
                        (m.Rename, {"src": path, "dst": "/stolen"}),
                        (m.Checksum, {"path": path}),
                        (m.StartSend, {"xfer_id": broker.ids(), "path": path,
                                       "connect_to": ("127.0.0.1", 9)}),
                        (m.StartReceive, {"xfer_id": broker.ids(), "path": path,
                                          "connect_to": ("127.0.0.1", 9)})):
            reply = broker.request(cmd, **kw)
            assert isinstance(reply, m.OpResult) and not reply.ok and reply.errno, (cmd, path, reply)
    assert (outside / "secret").read_bytes() == b"keep"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in slave.root.iterdir()) == ["link"]


def test_checksum_range(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    data = os.urandom(2_500_000)
    (slave.root / "c").write_bytes(data)
    whole = broker.request(m.Checksum, path="/c")
    assert whole == m.ChecksumResult(req_id=broker.next_id, crc32=zlib.crc32(data), size=len(data))
    part = broker.request(m.Checksum, path="/c", start=10, end=1_500_000)
    assert isinstance(part, m.ChecksumResult) and part.crc32 == zlib.crc32(data[10:1_500_000])
    missing = broker.request(m.Checksum, path="/nope")
    assert isinstance(missing, m.OpResult) and not missing.ok


def test_inventory_pages_cover_every_file_once(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    expected = {}
    for i in range(1234):
        rel = f"d{i % 7}/s{i % 11}/f{i}"
        (slave.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (slave.root / rel).write_bytes(b"x" * (i % 50))
        expected["/" + rel] = i % 50
    (slave.root / "d0" / ".ftpc-part.tmp.f").write_bytes(b"in progress")
    seen: list[m.InventoryEntry] = []
    pages = 0
    while True:
        page = broker.request(m.InventoryRequest, scan=7, limit=100)
        assert isinstance(page, m.InventoryPage) and page.scan == 7 and len(page.entries) <= 100
        seen += page.entries
        pages += 1
        if page.last:
            break
        assert pages < 100
    files = {e.path: e.size for e in seen if not e.is_dir}
    assert [e.path for e in seen if not e.is_dir].__len__() == len(files) == 1234
    assert files == expected
    dirs = set()
    for entry in seen:
        parent = entry.path.rsplit("/", 1)[0]
        assert parent == "" or parent in dirs
        if entry.is_dir:
            dirs.add(entry.path)
    # a new scan id starts over
    page = broker.request(m.InventoryRequest, scan=8, limit=5)
    assert [e.path for e in page.entries] == [e.path for e in seen[:5]]


def test_a_scan_id_reused_with_another_mode_starts_afresh(link: tuple[FakeBroker, SlaveProc]) -> None:
    """A restarted master may send a scan id the slave still holds from an earlier scan
    of another mode: the stored walk is discarded, not continued."""
    broker, slave = link
    for i in range(5):
        (slave.root / f"f{i}").write_bytes(b"x")
    page = broker.request(m.InventoryRequest, scan=70, limit=2, mode="walk")
    assert isinstance(page, m.InventoryPage) and not page.last and len(page.entries) == 2
    page = broker.request(m.InventoryRequest, scan=70, limit=64, mode="summary")
    assert isinstance(page, m.InventoryPage) and page.last and page.entries == []
    assert [s.path for s in page.summaries] == ["/"] and page.summaries[0].files == 5
    # Same mode: the walk goes on where it stopped.
    broker.request(m.InventoryRequest, scan=71, limit=2, mode="walk")
    page = broker.request(m.InventoryRequest, scan=71, limit=10, mode="walk")
    assert [e.path for e in page.entries] == ["/f2", "/f3", "/f4"] and page.last


def test_progress_of_a_running_transfer(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    (slave.root / "big.bin").write_bytes(os.urandom(32 * 1024 * 1024))
    xfer = broker.ids()
    port = broker.listen(xfer)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        assert isinstance(broker.request(m.StartSend, xfer_id=xfer, path="/big.bin"), m.Started)
        client.recv(1000)  # bytes flow, then the client stalls
        progress = broker.expect(m.TransferProgress, lambda p: p.xfer_id == xfer, timeout=5)
        assert 0 < progress.bytes < 32 * 1024 * 1024
        broker.send(m.Abort(req_id=0, xfer_id=xfer))
        broker.done(xfer, timeout=5)


# ---------------------------------------------------------------- broker restarts, shutdown

def test_hello_again_after_broker_restart(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    assert broker.expect(m.Heartbeat, timeout=5) == m.Heartbeat()  # registered and idle
    t0 = time.monotonic()
    broker.kill_router()
    broker.bind(broker.port)  # a new broker on the same port that never saw the slave
    broker.ident = None
    hello = broker.expect(m.Hello, timeout=10)
    elapsed = time.monotonic() - t0
    assert hello.name == "s1"
    assert elapsed < 5.0, f"Hello after {elapsed:.2f} s"
    # the Disconnect path: an unknown sender told to re-register says Hello at once
    broker.send(m.Disconnect(reason="who are you"))
    t0 = time.monotonic()
    again = broker.expect(m.Hello, timeout=3)
    assert again.incarnation == hello.incarnation and time.monotonic() - t0 < 1.0


def test_hello_again_after_broker_silence(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    broker.heartbeats = False  # connection stays up, the broker just stops talking
    t0 = time.monotonic()
    hello = broker.expect(m.Hello, timeout=10)
    assert hello.name == "s1"
    assert 4.0 < time.monotonic() - t0 < 6.5


def test_sigterm_aborts_sends_bye_and_exits_zero(link: tuple[FakeBroker, SlaveProc]) -> None:
    broker, slave = link
    (slave.root / "big.bin").write_bytes(os.urandom(32 * 1024 * 1024))
    xfer = broker.ids()
    port = broker.listen(xfer)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert isinstance(broker.request(m.StartSend, xfer_id=xfer, path="/big.bin"), m.Started)
        client.recv(1000)
        slave.proc.send_signal(signal.SIGTERM)  # the first lets transfers finish (stop_timeout)...
        log_path = Path(slave.log.name)
        deadline = time.monotonic() + 10  # handled (not merged with the second one)
        while "stopping: refusing new transfers" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the first SIGTERM was not handled"
            time.sleep(0.02)
        slave.proc.send_signal(signal.SIGTERM)  # ...a second one aborts them at once
        done = broker.done(xfer, timeout=5, ack=False)
        assert done.aborted
        broker.expect(m.Bye, timeout=5)
    assert slave.proc.wait(10) == 0
