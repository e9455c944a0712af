"""The real broker process, driven by raw zmq sockets playing master, slaves and stats tools.

Every wait is a poll with a deadline; every broker process is killed in teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec
import pytest
import zmq

from common import messages as m
from common import wire, zmqsock
from common.launcher import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
KEEPALIVE_S = 0.3
"""How often a test peer that is `alive` sends a Heartbeat while it waits."""


class BrokerProcess:
    """One broker config (fixed ports) that can be started, killed and started again."""

    def __init__(self, tmp_path: Path) -> None:
        ports = free_ports(4)
        self.master_ep, self.slave_ep, self.stats_in_ep, self.stats_out_ep = (
            f"tcp://127.0.0.1:{p}" for p in ports)
        self.config = tmp_path / "broker.toml"
        self.config.write_text(
            "[broker]\n"
            f'master_endpoint = "{self.master_ep}"\n'
            f'slave_endpoint = "{self.slave_ep}"\n'
            f'stats_in_endpoint = "{self.stats_in_ep}"\n'
            f'stats_out_endpoint = "{self.stats_out_ep}"\n'
            "[log]\nlevel = \"debug\"\n")
        self.log = tmp_path / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "broker", "--config", str(self.config)],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Peer:
    """A DEALER talking to the broker the way a master or slave does."""

    def __init__(self, ctx: zmq.Context, endpoint: str, decoder: msgspec.msgpack.Decoder) -> None:
        self.sock = zmqsock.connected_dealer(ctx, endpoint)
        self.decoder = decoder
        self.alive = False
        """When True, wait()/expect() send a Heartbeat every KEEPALIVE_S."""
        self._last_sent = 0.0

    def send(self, msg: m.Message, timeout: float = 5.0) -> None:
        """Send, retrying while there is no connection yet (IMMEDIATE makes that zmq.Again)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.send_multipart(wire.encode(msg), zmq.NOBLOCK)
                self._last_sent = time.monotonic()
                return
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not send {msg!r} within {timeout} s") from None
                self.sock.poll(50, zmq.POLLOUT)

    def try_send(self, msg: m.Message) -> None:
        try:
            self.sock.send_multipart(wire.encode(msg), zmq.NOBLOCK)
            self._last_sent = time.monotonic()
        except zmq.Again:
            pass  # not connected right now: that is what the test is about

    def recv(self, timeout: float) -> Any | None:
        """The next message within `timeout` seconds, or None; keeps alive while waiting."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.alive and now - self._last_sent >= KEEPALIVE_S:
                self.try_send(m.Heartbeat())
            left = deadline - now
            if left <= 0:
                return None
            if self.sock.poll(int(min(left, KEEPALIVE_S) * 1000) + 1, zmq.POLLIN):
                return wire.decode(self.sock.recv_multipart(zmq.NOBLOCK), self.decoder)

    def expect(self, kind: type[m.Message], timeout: float = 5.0,
               match: Callable[[Any], bool] = lambda _msg: True) -> Any:
        """The first `kind` message satisfying `match`, skipping others; fails at the deadline."""
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if isinstance(msg, kind) and match(msg):
                return msg
            if msg is not None:
                seen.append(msg)
        raise AssertionError(f"no {kind.__name__} within {timeout} s; got {seen!r}")

    def close(self) -> None:
        self.sock.close(linger=0)


def hello(name: str, incarnation: str | None = None) -> m.Hello:
    return m.Hello(name=name, incarnation=incarnation or uuid.uuid4().hex, data_host="127.0.0.1",
                   max_transfers=4, disk_total=1000, disk_free=500)


def stats(name: str, incarnation: str, seq: int) -> m.SlaveStats:
    return m.SlaveStats(name=name, incarnation=incarnation, seq=seq, ts_ms=seq, disk_free=1,
                        disk_total=2, load1=0.5, ncpu=2, net_tx_bps=0.0, net_rx_bps=0.0,
                        active_up=0, active_down=0)


class Sockets:
    """Every zmq socket a test opens, closed in teardown (so none is left to the GC)."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.ctx = zmqsock.new_context()
        self.peers: list[Peer] = []
        self.raw: list[zmq.Socket] = []

    def peer(self, role: str) -> Peer:
        """A Peer on the broker's "master" or "slave" ROUTER."""
        if role == "master":
            peer = Peer(self.ctx, self.broker.master_ep, wire.BROKER_TO_MASTER)
        else:
            peer = Peer(self.ctx, self.broker.slave_ep, wire.BROKER_TO_SLAVE)
        self.peers.append(peer)
        return peer

    def keep(self, sock: zmq.Socket) -> zmq.Socket:
        self.raw.append(sock)
        return sock

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        for sock in self.raw:
            sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path)
    proc.start()
    yield proc
    proc.kill()
    if os.environ.get("BROKER_TEST_SHOW_LOG"):
        print(proc.log_text())


@pytest.fixture
def sockets(broker: BrokerProcess) -> Iterator[Sockets]:
    owner = Sockets(broker)
    yield owner
    owner.close()


@pytest.fixture
def connect(sockets: Sockets) -> Callable[[str], Peer]:
    """connect("master") or connect("slave"): a new Peer on that ROUTER."""
    return sockets.peer


def register_master(connect: Callable[[str], Peer]) -> Peer:
    master = connect("master")
    master.send(m.MasterHello(incarnation=uuid.uuid4().hex))
    master.expect(m.Welcome, timeout=10.0)  # includes the broker's start-up
    master.alive = True
    return master


def register_slave(connect: Callable[[str], Peer], master: Peer, name: str) -> tuple[Peer, m.Hello]:
    slave = connect("slave")
    greeting = hello(name)
    slave.send(greeting)
    assert slave.expect(m.Welcome) == m.Welcome(heartbeat_ms=1000, liveness=5)
    slave.alive = True
    master.expect(m.SlaveUp, match=lambda up: up.name == name and up.incarnation == greeting.incarnation)
    return slave, greeting


def test_slave_up_command_and_reply(connect: Callable[[str], Peer]) -> None:
    master = register_master(connect)
    slave, greeting = register_slave(connect, master, "s1")

    cmd = m.Delete(req_id=11, path="/a/b")
    master.send(m.ToSlave(slave="s1", cmd=cmd))
    assert slave.expect(m.Delete) == cmd

    reply = m.OpResult(req_id=11, ok=True)
    slave.send(reply)
    assert master.expect(m.FromSlave) == m.FromSlave(slave="s1", incarnation=greeting.incarnation,
                                                     msg=reply)

    master.send(m.ToSlave(slave="nobody", cmd=m.MakeDir(req_id=12, path="/d")))
    undeliverable = master.expect(m.Undeliverable)
    assert (undeliverable.slave, undeliverable.req_id) == ("nobody", 12)


def test_silent_slave_goes_down_after_liveness(connect: Callable[[str], Peer]) -> None:
    master = register_master(connect)
    slave, greeting = register_slave(connect, master, "quiet")
    registered = time.monotonic()
    slave.alive = False  # the socket stays open; the slave just stops talking
    down = master.expect(m.SlaveDown, timeout=8.0)
    elapsed = time.monotonic() - registered
    assert down == m.SlaveDown(name="quiet", incarnation=greeting.incarnation,
                               reason="heartbeat expired")
    assert 4.0 <= elapsed <= 6.5, elapsed
    # The broker heartbeated the idle slave meanwhile.
    assert isinstance(slave.recv(0.1), m.Heartbeat)


def test_vanished_slave_goes_down_at_next_send(connect: Callable[[str], Peer]) -> None:
    master = register_master(connect)
    slave, greeting = register_slave(connect, master, "gone")
    registered = time.monotonic()
    slave.close()  # the connection closes: the broker's next heartbeat hits EHOSTUNREACH
    down = master.expect(m.SlaveDown, timeout=4.0)
    assert down == m.SlaveDown(name="gone", incarnation=greeting.incarnation, reason="connection lost")
    assert time.monotonic() - registered < 3.0  # well before heartbeat expiry
    master.send(m.ToSlave(slave="gone", cmd=m.Checksum(req_id=5, path="/f")))
    assert master.expect(m.Undeliverable) == m.Undeliverable(slave="gone", req_id=5,
                                                             reason="slave is not up")


def test_late_subscriber_gets_cached_stats(sockets: Sockets, broker: BrokerProcess,
                                           connect: Callable[[str], Peer]) -> None:
    ctx = sockets.ctx
    master = register_master(connect)
    slaves = {name: register_slave(connect, master, name) for name in ("s1", "s2")}
    pub = sockets.keep(zmqsock.connected_pub(ctx, broker.stats_in_ep))
    early = sockets.keep(zmqsock.connected_sub(ctx, broker.stats_out_ep, wire.STATS_TOPIC_PREFIX))

    # Publish until the early subscriber has seen both (PUB/SUB slow joiners lose messages).
    seen: dict[str, int] = {}
    seq = 0
    deadline = time.monotonic() + 10
    while set(seen) != {"s1", "s2"}:
        assert time.monotonic() < deadline, f"early subscriber saw only {seen}"
        seq += 1
        for name, (slave, greeting) in slaves.items():
            pub.send_multipart(wire.encode_stats(stats(name, greeting.incarnation, seq)))
            slave.recv(0)  # keep alive
        master.recv(0)
        while early.poll(100, zmq.POLLIN):
            got = wire.decode_stats(early.recv_multipart())
            seen[got.name] = got.seq
    last_seq = seq

    late = sockets.keep(zmqsock.connected_sub(ctx, broker.stats_out_ep, wire.STATS_TOPIC_PREFIX))
    replayed: dict[str, int] = {}
    deadline = time.monotonic() + 2.0
    while set(replayed) != {"s1", "s2"} and time.monotonic() < deadline:
        if late.poll(100, zmq.POLLIN):
            got = wire.decode_stats(late.recv_multipart())
            replayed[got.name] = got.seq
    assert replayed == {"s1": last_seq, "s2": last_seq}

    # A slave that leaves is dropped from the cache.
    s2, _ = slaves["s2"]
    s2.alive = False
    s2.send(m.Bye(reason="test"))
    master.expect(m.SlaveDown, match=lambda down: down.name == "s2")
    later = sockets.keep(zmqsock.connected_sub(ctx, broker.stats_out_ep, b"stats.s"))
    names = set()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if later.poll(100, zmq.POLLIN):
            names.add(wire.decode_stats(later.recv_multipart()).name)
    assert names == {"s1"}


def test_broker_restart_peers_reregister(broker: BrokerProcess,
                                         connect: Callable[[str], Peer]) -> None:
    master = register_master(connect)
    slave, greeting = register_slave(connect, master, "s1")

    broker.kill()  # SIGKILL
    broker.start()
    restarted = time.monotonic()

    # Both peers keep sending heartbeats; the new broker does not know them and says so.
    master_back = slave_back = False
    slave_up_again = False
    while not (master_back and slave_back and slave_up_again):
        assert time.monotonic() - restarted < 8.0, (
            f"master_back={master_back} slave_back={slave_back} up={slave_up_again}\n"
            + broker.log_text())
        msg = slave.recv(0.05)
        if isinstance(msg, m.Disconnect):
            slave.try_send(greeting)  # same incarnation: the slave process did not restart
        elif isinstance(msg, m.Welcome):
            slave_back = True
        msg = master.recv(0.05)
        if isinstance(msg, m.Disconnect):
            master.try_send(m.MasterHello(incarnation="same-master"))
        elif isinstance(msg, m.Welcome):
            master_back = True
        elif isinstance(msg, m.SlaveUp) and msg.incarnation == greeting.incarnation:
            slave_up_again = True
    # Allow for the interpreter start-up of the new broker on a loaded machine.
    assert time.monotonic() - restarted < 6.0


def test_garbage_does_not_crash_broker(sockets: Sockets, broker: BrokerProcess,
                                       connect: Callable[[str], Peer]) -> None:
    ctx = sockets.ctx
    master = register_master(connect)
    junk = connect("slave")
    junk.send(m.Heartbeat())  # to connect; gets Disconnect
    assert isinstance(junk.recv(5.0), m.Disconnect)
    garbage: list[list[bytes]] = [
        [b"hello"],
        [b"", b""],
        [b"XXX", b"\x81\xa1t\xa5Hello"],
        [wire.PROTOCOL_TAG, b"\xff\xfe not msgpack"],
        [wire.PROTOCOL_TAG, msgspec.msgpack.encode({"t": "NoSuchMessage"})],
        [wire.PROTOCOL_TAG, msgspec.msgpack.encode({"t": "Hello", "name": 5})],
        wire.encode(m.Welcome(heartbeat_ms=1, liveness=1)),  # wrong direction
        [wire.PROTOCOL_TAG, b"x", b"three frames"],
    ]
    for frames in garbage:
        junk.sock.send_multipart(frames)
        master.sock.send_multipart(frames)
    pub = sockets.keep(zmqsock.connected_pub(ctx, broker.stats_in_ep))
    raw_sub = sockets.keep(ctx.socket(zmq.XSUB))
    raw_sub.connect(broker.stats_out_ep)
    raw_sub.send(b"\x01")  # subscribe to everything, raw
    raw_sub.send(b"\x00stats.")  # an unsubscribe for something never subscribed
    raw_sub.send(b"\x07 not a subscription")
    for frames in garbage:
        pub.send_multipart([b"stats.x", *frames])
    pub.send_multipart(wire.encode_stats(stats("spoof", "i", 1))[::-1])
    assert isinstance(master.recv(0.2), m.Heartbeat | type(None))

    # Still serving: a real slave registers and the master hears of it.
    register_slave(connect, master, "after-garbage")
    assert broker.proc is not None and broker.proc.poll() is None
    assert "dropped bad frame" in broker.log_text()


def test_sigterm_exits_zero_promptly(broker: BrokerProcess, connect: Callable[[str], Peer]) -> None:
    master = register_master(connect)  # the broker is up and serving
    register_slave(connect, master, "s1")
    assert broker.proc is not None
    sent = time.monotonic()
    broker.proc.send_signal(signal.SIGTERM)
    assert broker.proc.wait(timeout=5) == 0
    assert time.monotonic() - sent < 1.5


def _start_slave(tmp_path: Path, broker: BrokerProcess, tag: str, name: str) -> subprocess.Popen[bytes]:
    root = tmp_path / f"root-{tag}"
    root.mkdir()
    config = tmp_path / f"slave-{tag}.toml"
    config.write_text(
        "[slave]\n"
        f'name = "{name}"\nroot = "{root}"\n'
        f'broker_endpoint = "{broker.slave_ep}"\nstats_endpoint = "{broker.stats_in_ep}"\n'
        "[log]\nlevel = \"debug\"\n")
    with open(tmp_path / f"slave-{tag}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "slave", "--config", str(config)],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _up_down_lines(broker: BrokerProcess, name: str) -> list[str]:
    return [line for line in broker.log_text().splitlines()
            if f"slave {name} up " in line or f"slave {name} down " in line]


def test_two_slave_processes_with_one_name_do_not_storm(broker: BrokerProcess, tmp_path: Path,
                                                        connect: Callable[[str], Peer]) -> None:
    """The newer process replaces the older, which is told "superseded" and exits 1."""
    register_master(connect)
    procs = []
    try:
        old = _start_slave(tmp_path, broker, "old", "dup")
        procs.append(old)
        deadline = time.monotonic() + 15
        while not _up_down_lines(broker, "dup"):
            assert time.monotonic() < deadline, broker.log_text()
            time.sleep(0.05)
        before = len(_up_down_lines(broker, "dup"))
        new = _start_slave(tmp_path, broker, "new", "dup")
        procs.append(new)
        assert old.wait(timeout=15) == 1
        time.sleep(3.0)  # a storm would flip the name up and down hundreds of times by now
        lines = _up_down_lines(broker, "dup")[before:]
        assert len(lines) < 5, "\n".join(lines)
        assert new.poll() is None  # the newer one stays registered
        assert "up (incarnation" in lines[-1], "\n".join(lines)
        old_log = (tmp_path / "slave-old.log").read_text()
        assert "superseded" in old_log and "exiting" in old_log
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
