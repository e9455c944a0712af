"""CURVE keys on a real cluster: who the broker admits on each port, and what it logs.

The cluster runs with keys made as `ftpcluster up` makes them. Raw zmq sockets play the
attacker (an unknown key, or no CURVE at all) on every broker port, each from its own
loopback source address (127.0.0.N), so the broker's refusal line for that very attempt
is told apart by the address it names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from common import curve, messages as m, wire
from common.launcher import free_ports
from tests.integration.conftest import Cluster, cli_cmd, cli_env, download, upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_SOURCES = iter(range(10, 250))
_OPEN: list[zmq.Socket] = []
"""Every socket a test made; the ctx fixture closes them."""


def source_address() -> str:
    """A loopback address no other attempt in this module uses."""
    return f"127.0.0.{next(_SOURCES)}"


def broker_public(c: Cluster) -> bytes:
    return curve.read_public(c.plan.public_key("broker", "broker"))


def keyed(sock: zmq.Socket, server: bytes, pair: tuple[bytes, bytes] | None) -> zmq.Socket:
    """`sock` as a CURVE client with `pair` (public, secret), or left without CURVE (None)."""
    _OPEN.append(sock)
    if pair is not None:
        sock.curve_serverkey = server
        sock.curve_publickey, sock.curve_secretkey = pair
    sock.linger = 0
    return sock


def connect_from(sock: zmq.Socket, source: str, endpoint: str) -> None:
    sock.connect(endpoint.replace("tcp://", f"tcp://{source}:0;"))


def refused_line(c: Cluster, port: str, source: str) -> str | None:
    text = c.roles["broker"].log.read_text(errors="replace")
    for line in text.splitlines():
        if f"refused a connection on the {port} port from {source}:" in line:
            return line
    return None


def wait_refused(c: Cluster, port: str, source: str, timeout: float = 10) -> str:
    return str(wait_for(lambda: refused_line(c, port, source), timeout,
                        f"the broker to log a refusal on the {port} port from {source}"))


ATTEMPTS = 10


def attempt(c: Cluster, ctx: zmq.Context, kind: int, port: str, pair: tuple[bytes, bytes] | None,
            send: list[list[bytes]] = []) -> tuple[zmq.Socket, str]:
    """Connect a `kind` socket with `pair` to the broker's `port` from a fresh source address
    (sending `send`) until the broker logs the refusal naming that address: (socket, line).

    A refused zmq peer never reconnects, so each try is one connection. An unknown key is
    refused by ZAP, whose request carries the address: the first try is logged with it. A
    peer without CURVE is refused by libzmq before ZAP, and its address is read from the
    accepted connection, which the refusal may already have closed (broker.auth): then the
    line says "an unknown address" and the next try (a new connection) is logged with it."""
    source = source_address()
    for _ in range(ATTEMPTS):
        sock = keyed(ctx.socket(kind), broker_public(c), pair)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        connect_from(sock, source, c.plan.ports.endpoint(port))
        for frames in send:
            sock.send_multipart(frames)
        try:
            return sock, wait_refused(c, port, source, timeout=1.5)
        except AssertionError:
            sock.close(linger=0)
    raise AssertionError(f"no refusal on the {port} port from {source} logged in {ATTEMPTS} tries\n"
                         + c.roles["broker"].tail())


@pytest.fixture(scope="module")
def keyed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("keys"), slaves=1)
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    while _OPEN:
        _OPEN.pop().close(linger=0)
    context.term()


def test_the_cluster_runs_with_curve_on(keyed_cluster: Cluster) -> None:
    c = keyed_cluster
    assert "listening with CURVE" in c.roles["broker"].log.read_text()
    assert c.online() == ["slave1"]
    for role in ("broker", "master", "slave1"):
        assert "[curve]" in c.roles[role].config.read_text()
    secret = c.plan.secret_key("slave", "slave1")
    assert secret.stat().st_mode & 0o077 == 0, "a secret key file is readable by its owner only"


KEY_CASES = [pytest.param(kind, id=kind) for kind in ("unknown-key", "no-key")]


def pair_for(kind: str) -> tuple[bytes, bytes] | None:
    return zmq.curve_keypair() if kind == "unknown-key" else None


@pytest.mark.parametrize("kind", KEY_CASES)
def test_a_slave_without_a_listed_key_is_refused_and_logged(keyed_cluster: Cluster, ctx: zmq.Context,
                                                             kind: str) -> None:
    c = keyed_cluster
    hello = wire.encode(m.Hello(name="evil", incarnation=uuid.uuid4().hex, data_host="127.0.0.1",
                                max_transfers=8))
    dealer, line = attempt(c, ctx, zmq.DEALER, "slave", pair_for(kind), [hello])
    assert ("not listed" in line) if kind == "unknown-key" else ("no CURVE key" in line)
    assert dealer.poll(1000) == 0, "the broker answered a refused peer"
    assert c.online() == ["slave1"]


@pytest.mark.parametrize("kind", KEY_CASES)
def test_a_master_without_a_listed_key_gets_nothing(keyed_cluster: Cluster, ctx: zmq.Context,
                                                    kind: str) -> None:
    c = keyed_cluster
    dealer, _line = attempt(c, ctx, zmq.DEALER, "master", pair_for(kind), [
        wire.encode(m.MasterHello(incarnation=uuid.uuid4().hex)),
        wire.encode(m.ToSlave(slave="slave1", cmd=m.Delete(req_id=1, path="/x")))])
    assert dealer.poll(1500) == 0, "no Welcome, no SlaveUp for a refused master"
    with c.ftp() as ftp:  # the real master is still the broker's master
        assert "slave1" in ftp.sendcmd("SITE SLAVES")


@pytest.mark.parametrize("kind", KEY_CASES)
def test_a_stats_subscriber_without_a_listed_key_gets_no_stats(keyed_cluster: Cluster, ctx: zmq.Context,
                                                               kind: str) -> None:
    c = keyed_cluster
    sub, _line = attempt(c, ctx, zmq.SUB, "stats_out", pair_for(kind))
    assert sub.poll(2500) == 0, "stats reached a refused subscriber (slaves publish every 2 s)"


def test_the_stats_tool_with_its_key_reads_and_with_another_key_is_refused(keyed_cluster: Cluster,
                                                                           tmp_path: Path) -> None:
    c = keyed_cluster
    ok = subprocess.run(cli_cmd("stats", "--once", "--json", *c.stats_args()), capture_output=True,
                        text=True, timeout=60, env=cli_env())
    assert ok.returncode == 0 and '"slave1"' in ok.stdout, ok.stderr
    # A stats key of its own that the broker does not list: refused, so no stats at all.
    curve.generate(tmp_path / "keys", "stats", "stranger")
    args = c.stats_args()
    args[args.index("--key") + 1] = str(tmp_path / "keys" / "stats" / "stranger.key_secret")
    refused = subprocess.run(cli_cmd("stats", "--once", "--json", "--wait", "3", *args),
                             capture_output=True, text=True, timeout=60, env=cli_env())
    assert refused.returncode == 1 and refused.stdout == "" and "no stats arrived" in refused.stderr
    wait_refused(c, "stats_out", "127.0.0.1")


def forged_stats(name: str) -> list[bytes]:
    return wire.encode_stats(m.SlaveStats(
        name=name, incarnation=uuid.uuid4().hex, seq=1, ts_ms=int(time.time() * 1000),
        disk_free=1, disk_total=2, load1=0.0, ncpu=1, net_tx_bps=0.0, net_rx_bps=0.0,
        active_up=0, active_down=0, host="forged"))


def test_a_subscriber_key_cannot_publish_stats(keyed_cluster: Cluster, ctx: zmq.Context) -> None:
    c = keyed_cluster
    stats_key = curve.read_pair(c.plan.secret_key("stats", "stats"))
    master_key = curve.read_pair(c.plan.secret_key("master", "master"))
    watcher = keyed(ctx.socket(zmq.SUB), broker_public(c), stats_key)
    watcher.setsockopt(zmq.SUBSCRIBE, wire.stats_topic("forged"))
    watcher.connect(c.plan.ports.endpoint("stats_out"))
    for pair in (stats_key, master_key, None):
        pub, line = attempt(c, ctx, zmq.PUB, "stats_in", pair)
        assert ("no CURVE key" if pair is None else "not listed") in line
        pub.send_multipart(forged_stats("forged"))
    assert watcher.poll(1500) == 0


def test_a_slave_key_publishes_stats_for_its_own_name_only(keyed_cluster: Cluster, ctx: zmq.Context) -> None:
    c = keyed_cluster
    watcher = keyed(ctx.socket(zmq.SUB), broker_public(c), curve.read_pair(c.plan.secret_key("stats", "stats")))
    watcher.setsockopt(zmq.SUBSCRIBE, wire.stats_topic("forged"))
    watcher.connect(c.plan.ports.endpoint("stats_out"))
    pub = keyed(ctx.socket(zmq.PUB), broker_public(c), curve.read_pair(c.plan.secret_key("slave", "slave1")))
    source = source_address()
    connect_from(pub, source, c.plan.ports.endpoint("stats_in"))
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and not refused_line(c, "stats_in", source):
        pub.send_multipart(forged_stats("forged"))
        time.sleep(0.1)
    line = wait_refused(c, "stats_in", source, timeout=1)
    assert "stats for slave 'forged' from the key of 'slave1' dropped" in line
    assert watcher.poll(500) == 0


def test_a_listed_key_cannot_take_another_slaves_name(keyed_cluster: Cluster, ctx: zmq.Context) -> None:
    """A key listed as "intruder" (added and loaded with SIGHUP) presents slave1's name with a
    later start time: refused, logged; slave1 stays online and still gets the uploads."""
    c = keyed_cluster
    source = source_address()
    public, secret = curve.generate(c.plan.key_dir("slave").parent, "slave", "intruder")
    pair = curve.read_pair(secret)

    def hello(name: str) -> list[bytes]:
        return wire.encode(m.Hello(name=name, incarnation=uuid.uuid4().hex, data_host="127.0.0.1",
                                   max_transfers=8, started_ns=time.time_ns() + 10**12))

    before = keyed(ctx.socket(zmq.DEALER), broker_public(c), pair)
    connect_from(before, source, c.plan.ports.endpoint("slave"))
    before.send_multipart(hello("intruder"))
    assert "not listed" in wait_refused(c, "slave", source), "not listed before the reload"
    before.close(linger=0)

    c.roles["broker"].signal(signal.SIGHUP)
    wait_for(lambda: "reloaded the keys: 1 master, 2 slave, 1 stats" in c.roles["broker"].log.read_text(),
             10, "the broker to reload its keys")
    source = source_address()
    dealer = keyed(ctx.socket(zmq.DEALER), broker_public(c), pair)
    connect_from(dealer, source, c.plan.ports.endpoint("slave"))
    dealer.send_multipart(hello("slave1"))
    assert dealer.poll(5000), "no answer to a listed key"
    reply = wire.decode(dealer.recv_multipart(), wire.BROKER_TO_SLAVE)
    assert isinstance(reply, m.Disconnect) and reply.reason.startswith("refused:")
    line = wait_refused(c, "slave", source)
    assert "Hello names slave 'slave1', but its key is listed as 'intruder'" in line
    time.sleep(1.5)  # a superseded slave1 would exit now
    assert c.roles["slave1"].alive()
    assert c.online() == ["slave1"]
    data = os.urandom(200_000)
    with c.ftp() as ftp:
        upload(ftp, "/after-intruder.bin", data, "pret")
        assert download(ftp, "/after-intruder.bin", "pret") == data
    assert c.holders("/after-intruder.bin") == ["slave1"]
    dealer.close(linger=0)
    public.unlink()
    secret.unlink()
    c.roles["broker"].signal(signal.SIGHUP)


def test_a_slave_process_with_an_unlisted_key_is_refused_until_it_is_listed(cluster_factory,
                                                                             tmp_path: Path) -> None:
    c = cluster_factory(slaves=1)
    text = c.roles["slave1"].config.read_text()
    other_public, other_secret = curve.generate(tmp_path / "other", "slave", "slave1")
    c.roles["slave1"].config.write_text(text.replace(str(c.plan.secret_key("slave", "slave1")),
                                                     str(other_secret)))
    for name in ("broker", "master", "slave1"):
        c.roles[name].start()
    c.wait_banner(30)
    assert "not listed" in wait_refused(c, "slave", "127.0.0.1", timeout=20)
    wait_for(lambda: "refused this slave: it does not list this slave's CURVE key"
             in c.roles["slave1"].log.read_text(), 10, "the slave to say why it is refused")
    time.sleep(1)
    assert c.online() == []
    # The operator lists the key and reloads: the slave's next try (every 5 s) gets in.
    c.plan.public_key("slave", "slave1").write_bytes(other_public.read_bytes())
    c.roles["broker"].signal(signal.SIGHUP)
    c.wait_online(["slave1"], 20)


def test_a_master_process_with_an_unlisted_key_is_refused_until_it_is_listed(cluster_factory,
                                                                              tmp_path: Path) -> None:
    c = cluster_factory(slaves=1)
    text = c.roles["master"].config.read_text()
    other_public, other_secret = curve.generate(tmp_path / "other", "master", "master")
    c.roles["master"].config.write_text(text.replace(str(c.plan.secret_key("master", "master")),
                                                     str(other_secret)))
    for name in ("broker", "master", "slave1"):
        c.roles[name].start()
    c.wait_banner(30)
    assert "not listed" in wait_refused(c, "master", "127.0.0.1", timeout=20)
    time.sleep(2)
    assert c.online() == [] and "registered with the broker" not in c.roles["master"].log.read_text()
    c.plan.public_key("master", "master").write_bytes(other_public.read_bytes())
    c.roles["broker"].signal(signal.SIGHUP)
    c.wait_online(["slave1"], 30)  # the master's next hello (after 5 s of silence) gets in


def test_a_broker_without_curve_refuses_to_listen_off_loopback(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker]\nslave_endpoint = "tcp://0.0.0.0:{port}"\n')
    out = subprocess.run([sys.executable, "-m", "common.cli", "broker", "--config", str(config)],
                         capture_output=True, text=True, timeout=30, env=cli_env())
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"key broker.slave_endpoint: refusing to listen on tcp://0.0.0.0:{port} without CURVE" in out.stderr


def test_a_broker_with_a_missing_key_file_stops_with_one_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    config = tmp_path / "broker.toml"
    for d in ("master", "slaves", "stats"):
        (keys / d).mkdir(parents=True)
    config.write_text(f'[curve]\nsecret_key = "{keys}/broker.key_secret"\nmaster_keys = "{keys}/master"\n'
                      f'slave_keys = "{keys}/slaves"\nstats_keys = "{keys}/stats"\n')
    out = subprocess.run([sys.executable, "-m", "common.cli", "broker", "--config", str(config)],
                         capture_output=True, text=True, timeout=30, env=cli_env())
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"key curve.secret_key: {keys}/broker.key_secret: cannot read" in out.stderr
