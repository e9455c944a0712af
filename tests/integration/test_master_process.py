"""The master process against a fake broker: the test owns the ROUTER the master's DEALER
connects to (and the stats XPUB), answers MasterHello with Welcome and SlaveUp, serves the
fake slaves' inventory, and scripts each slave reply. No real broker or slave runs.
"""

from __future__ import annotations

import ftplib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq

from common import messages as m
from common import wire
from common.launcher import free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "secret-pw"
START_TIMEOUT_S = 15.0
_HASH: dict[str, str] = {}


def password_hash() -> str:
    if not _HASH:
        from master.users import hash_password
        _HASH["h"] = hash_password(PASSWORD)
    return _HASH["h"]


Responder = Callable[[str, Any], list[m.Message]]


class FakeBroker:
    """ROUTER + XPUB in a thread. Records every ToSlave; answers through `responders`
    (cmd type -> fn(slave, cmd) -> replies from that slave); `push()` injects messages."""

    def __init__(self, slaves: dict[str, list[m.InventoryEntry]], announce: bool = True) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.LINGER, 0)
        self.stats_port = self.xpub.bind_to_random_port("tcp://127.0.0.1")
        self.slaves = slaves
        self.announce = announce
        self.master_id: bytes | None = None
        self.commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.responders: dict[type, Responder] = {}
        self.hellos = 0
        self._outbox: queue.Queue[m.Message] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def push(self, msg: m.Message) -> None:
        self._outbox.put(msg)

    def from_slave(self, slave: str, msg: m.Message) -> None:
        self.push(m.FromSlave(slave=slave, incarnation=f"inc-{slave}", msg=msg))

    def expect(self, kind: type, timeout: float = 5.0) -> tuple[str, Any]:
        """Next ToSlave command of type `kind` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind.__name__} sent to a slave within {timeout} s")
            try:
                slave, cmd = self.commands.get(timeout=left)
            except queue.Empty:
                continue
            if isinstance(cmd, kind):
                return slave, cmd

    def slave_up(self, name: str) -> m.SlaveUp:
        return m.SlaveUp(name=name, incarnation=f"inc-{name}", data_host="127.0.0.1",
                         max_transfers=10, disk_total=10 ** 12, disk_free=10 ** 11)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.router.close()
        self.xpub.close()
        self.ctx.term()

    def _send(self, msg: m.Message) -> None:
        if self.master_id is not None:
            self.router.send_multipart([self.master_id, *wire.encode(msg)])

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        last_beat = time.monotonic()
        while not self._stop.is_set():
            for sock, _ in poller.poll(20):
                if sock is self.xpub:
                    sock.recv_multipart()
                    continue
                ident, *frames = self.router.recv_multipart()
                self._handle(ident, wire.decode(frames, wire.MASTER_TO_BROKER))
            while not self._outbox.empty():
                self._send(self._outbox.get())
            if time.monotonic() - last_beat > 0.5:
                last_beat = time.monotonic()
                self._send(m.Heartbeat())

    def _handle(self, ident: bytes, msg: Any) -> None:
        if isinstance(msg, m.MasterHello):
            self.master_id = ident
            self.hellos += 1
            self._send(m.Welcome(heartbeat_ms=1000, liveness=5))
            if self.announce:
                for name in self.slaves:
                    self._send(self.slave_up(name))
            return
        if not isinstance(msg, m.ToSlave):
            return
        cmd = msg.cmd
        self.commands.put((msg.slave, cmd))
        replies: list[m.Message]
        if isinstance(cmd, m.InventoryRequest) and cmd.mode == "summary":
            # One summary for "/": the master then lists "/" and gets every entry below.
            replies = [m.InventoryPage(req_id=cmd.req_id, scan=cmd.scan, entries=[], last=True,
                                       summaries=[m.DirSummary(path="/", digest=1)])]
        elif isinstance(cmd, m.InventoryRequest):
            replies = [m.InventoryPage(req_id=cmd.req_id, scan=cmd.scan,
                                       entries=self.slaves.get(msg.slave, []), last=True)]
        elif type(cmd) in self.responders:
            replies = self.responders[type(cmd)](msg.slave, cmd)
        elif isinstance(cmd, (m.Delete, m.Rename, m.RemoveDir, m.MakeDir, m.Abort)):
            replies = [m.OpResult(req_id=cmd.req_id, ok=True)]
        else:
            replies = []
        for reply in replies:
            self._send(m.FromSlave(slave=msg.slave, incarnation=f"inc-{msg.slave}", msg=reply))


class Master:
    def __init__(self, tmp: Path, broker: FakeBroker, relay_mode: str = "relay",
                 extra: str = "") -> None:
        self.port = free_ports(1)[0]
        state = tmp / "state"
        config = tmp / "master.toml"
        config.write_text(f"""
[master]
listen_host = "127.0.0.1"
listen_port = {self.port}
broker_endpoint = "tcp://127.0.0.1:{broker.port}"
stats_endpoint = "tcp://127.0.0.1:{broker.stats_port}"
state_dir = "{state}"
request_timeout = 3
passive_without_pret = "{relay_mode}"
{extra}

[[users]]
name = "admin"
password_hash = "{password_hash()}"
perms = "elradfmwMTS"

[[users]]
name = "bob"
password_hash = "{password_hash()}"
perms = "elr"

[log]
level = "debug"
""")
        self.log_path = tmp / "master.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "master", "--config", str(config)],
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("master did not start:\n" + self.log())
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def client(self, user: str = "admin") -> ftplib.FTP:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", self.port, timeout=15)
        ftp.login(user, PASSWORD)
        return ftp

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        text = self.log_path.read_text(errors="replace")
        assert "Traceback" not in text, text[-6000:]
        return self.proc.returncode


INVENTORY = {"s1": [m.InventoryEntry(path="/pub", is_dir=True, size=0, mtime_ms=1_700_000_000_000),
                    m.InventoryEntry(path="/pub/a.bin", is_dir=False, size=10, mtime_ms=1_700_000_000_000)]}


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    fake = FakeBroker(dict(INVENTORY))
    yield fake
    fake.close()


@pytest.fixture
def master(tmp_path: Path, broker: FakeBroker) -> Iterator[Master]:
    proc = Master(tmp_path, broker)
    yield proc
    assert proc.stop() == 0, proc.log()


def wait_online(ftp: ftplib.FTP, count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = ftp.sendcmd("SITE SLAVES").splitlines()
        if sum(" online " in line for line in lines) >= count:
            return
        time.sleep(0.1)
    raise AssertionError("slaves not online")


def started(slave: str, cmd: Any) -> list[m.Message]:
    return [m.Started(req_id=cmd.req_id, xfer_id=cmd.xfer_id)]


def pasv_port(reply: str) -> tuple[str, int]:
    inner = reply[reply.index("(") + 1:reply.index(")")]
    h = inner.split(",")
    return ".".join(h[:4]), int(h[4]) * 256 + int(h[5])


# ---------------------------------------------------------------- metadata commands

def test_listing_and_metadata_commands(master: Master) -> None:
    ftp = master.client()
    wait_online(ftp)
    assert ftp.nlst("/pub") == ["a.bin"]
    lines: list[str] = []
    ftp.retrlines("LIST /pub", lines.append)
    assert len(lines) == 1 and lines[0].endswith(" a.bin") and " 10 " in lines[0]
    facts = list(ftp.mlsd("/pub"))
    assert facts[0][0] == "a.bin" and facts[0][1]["size"] == "10" and facts[0][1]["type"] == "file"
    ftp.voidcmd("TYPE I")
    assert ftp.size("/pub/a.bin") == 10
    assert ftp.sendcmd("MDTM /pub/a.bin").startswith("213 2023")

    assert ftp.mkd("/new") == "/new"
    ftp.cwd("/new")
    assert ftp.pwd() == "/new"
    ftp.cwd("..")
    assert ftp.pwd() == "/"
    ftp.sendcmd("RNFR /new")
    ftp.sendcmd("RNTO /renamed")
    assert "renamed" in ftp.nlst("/")
    ftp.rmd("/renamed")
    assert "renamed" not in ftp.nlst("/")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.rmd("/pub")  # not empty
    ftp.sendcmd("RNFR /pub/a.bin")
    ftp.sendcmd("RNTO /pub/b.bin")
    assert ftp.nlst("/pub") == ["b.bin"]
    ftp.delete("/pub/b.bin")
    assert ftp.nlst("/pub") == []
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.delete("/pub/missing")
    feat = ftp.sendcmd("FEAT")
    for word in ("PRET", "XCRC", "SIZE", "MDTM", "MLST", "REST STREAM", "UTF8", "EPSV", "EPRT"):
        assert word in feat
    assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
    ftp.quit()


def test_slave_commands_follow_metadata_changes(master: Master, broker: FakeBroker) -> None:
    ftp = master.client()
    wait_online(ftp)
    ftp.sendcmd("RNFR /pub")
    ftp.sendcmd("RNTO /pub2")
    slave, cmd = broker.expect(m.Rename)
    assert (slave, cmd.src, cmd.dst) == ("s1", "/pub", "/pub2")
    ftp.delete("/pub2/a.bin")
    slave, cmd = broker.expect(m.Delete)
    assert (slave, cmd.path) == ("s1", "/pub2/a.bin")
    ftp.quit()


def test_nul_path_and_bad_port(master: Master) -> None:
    ftp = master.client()
    with pytest.raises(ftplib.error_perm, match="^501"):
        ftp.sendcmd("MKD bad\x00name")
    assert not any(name.startswith("bad") for name in ftp.nlst("/"))
    ftp.sendcmd("PORT 127,0,0,1,200,9")
    with pytest.raises(ftplib.error_perm, match="^553"):
        ftp.sendcmd("STOR /.ftpc-part.x")  # reserved for the slaves' partial uploads
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.mkd("/.ftpc-part.d")
    with pytest.raises(ftplib.error_perm, match="^501"):
        ftp.sendcmd("PORT 1,2,3")
    with pytest.raises(ftplib.error_perm, match="^501"):
        ftp.sendcmd("PORT 127,0,0,1,300,1")
    with pytest.raises(ftplib.error_perm, match="^501"):
        ftp.sendcmd("PORT 10,9,8,7,40,1")  # foreign address (RFC 2577)
    ftp.quit()


def test_site_commands_are_for_admins(master: Master) -> None:
    ftp = master.client()
    wait_online(ftp)
    resp = ftp.sendcmd("SITE SLAVES")
    lines = resp.splitlines()
    assert lines[-1] == "200 1 slaves"
    assert lines[1].startswith(" s1 online free=100000000000 total=1000000000000 active=0 ")
    status = ftp.sendcmd("SITE STATUS")
    assert " relayed_bytes=0" in status and " slaves_online=1" in status and " sessions=" in status
    bob = master.client("bob")
    with pytest.raises(ftplib.error_perm, match="^550"):
        bob.sendcmd("SITE SLAVES")
    with pytest.raises(ftplib.error_perm, match="^550"):
        bob.mkd("/nope")
    bob.quit()
    ftp.quit()


# ---------------------------------------------------------------- transfers

def test_stor_without_any_slave_fails_at_once(tmp_path: Path) -> None:
    fake = FakeBroker({}, announce=False)
    proc = Master(tmp_path, fake)
    try:
        ftp = proc.client()
        ftp.sendcmd("PORT 127,0,0,1,200,10")
        started_at = time.monotonic()
        with pytest.raises(ftplib.error_temp, match="^45"):
            ftp.sendcmd("STOR /x.bin")
        assert time.monotonic() - started_at < 2
        ftp.quit()
    finally:
        assert proc.stop() == 0
        fake.close()


def test_active_stor_goes_to_slave_with_port_address(master: Master, broker: FakeBroker) -> None:
    broker.responders[m.StartReceive] = started
    ftp = master.client()
    wait_online(ftp)
    ftp.voidcmd("TYPE I")
    ftp.sendcmd("PORT 127,0,0,1,200,10")
    assert ftp.sendcmd("STOR /up.bin").startswith("150")
    slave, cmd = broker.expect(m.StartReceive)
    assert slave == "s1" and cmd.path == "/up.bin" and cmd.connect_to == ("127.0.0.1", 200 * 256 + 10)
    assert "Data connection open" in ftp.sendcmd("STAT")
    broker.from_slave("s1", m.TransferDone(xfer_id=cmd.xfer_id, ok=True, bytes=5, size=5,
                                           crc32=0x3610A686))
    assert ftp.voidresp() == "226 Transfer complete: 5 bytes, CRC32 3610A686."
    _, ack = broker.expect(m.DoneAck)
    assert ack.xfer_id == cmd.xfer_id
    assert "up.bin" in ftp.nlst("/")
    ftp.voidcmd("TYPE I")  # ftplib's nlst() switched to TYPE A, where SIZE and XCRC are refused
    assert ftp.size("/up.bin") == 5
    assert ftp.sendcmd("XCRC /up.bin") == "250 3610A686"
    ftp.quit()


def test_done_acks_of_transfers_ending_together_go_in_one_message(master: Master,
                                                                  broker: FakeBroker) -> None:
    broker.responders[m.StartReceive] = started
    sessions, ids = [master.client(), master.client()], []
    for i, ftp in enumerate(sessions):
        wait_online(ftp)
        ftp.sendcmd("PORT 127,0,0,1,200,10")
        assert ftp.sendcmd(f"STOR /batch{i}.bin").startswith("150")
        ids.append(broker.expect(m.StartReceive)[1].xfer_id)
    for xfer_id in ids:
        broker.from_slave("s1", m.TransferDone(xfer_id=xfer_id, ok=True, bytes=1, size=1, crc32=1))
    for ftp in sessions:
        assert ftp.voidresp().startswith("226")
    slave, ack = broker.expect(m.DoneAck)
    assert slave == "s1" and sorted([ack.xfer_id, *ack.more]) == sorted(ids)
    for ftp in sessions:
        ftp.quit()


def test_an_upload_announced_before_a_broker_loss_is_recorded_when_its_outcome_comes(
        master: Master, broker: FakeBroker) -> None:
    ftp = master.client()  # no StartReceive responder: the lazy Started never comes
    wait_online(ftp)
    ftp.voidcmd("TYPE I")  # SIZE is refused in TYPE A
    ftp.sendcmd("PORT 127,0,0,1,200,20")
    assert ftp.sendcmd("STOR /late.bin").startswith("150")
    _, cmd = broker.expect(m.StartReceive)
    assert cmd.lazy_started
    broker.push(m.Disconnect(reason="broker restarted"))  # pending requests fail
    with pytest.raises(ftplib.error_temp, match="^426 "):
        ftp.voidresp()
    # The slave had received the whole file; it re-sends the outcome once it is back.
    broker.from_slave("s1", m.TransferDone(xfer_id=cmd.xfer_id, ok=True, bytes=7, size=7, crc32=1))
    _, ack = broker.expect(m.DoneAck)
    assert cmd.xfer_id in (ack.xfer_id, *ack.more)
    assert ftp.size("/late.bin") == 7  # recorded, not lost
    ftp.quit()


def test_pret_pasv_uses_slave_listener_and_226_records_file(master: Master, broker: FakeBroker) -> None:
    broker.responders[m.Listen] = lambda s, c: [m.Listening(req_id=c.req_id, xfer_id=c.xfer_id, port=40123)]
    broker.responders[m.StartReceive] = started
    ftp = master.client()
    wait_online(ftp)
    ftp.voidcmd("TYPE I")
    assert ftp.sendcmd("PRET STOR /p.bin").startswith("200")
    reply = ftp.sendcmd("PASV")
    assert reply.startswith("227") and pasv_port(reply) == ("127.0.0.1", 40123)
    _, listen = broker.expect(m.Listen)
    assert listen.allowed_ip == "127.0.0.1"
    assert ftp.sendcmd("STOR /p.bin").startswith("150")
    _, cmd = broker.expect(m.StartReceive)
    assert cmd.connect_to is None and cmd.xfer_id == listen.xfer_id
    broker.from_slave("s1", m.TransferDone(xfer_id=cmd.xfer_id, ok=True, bytes=7, size=7, crc32=1))
    assert ftp.voidresp().startswith("226")
    lines: list[str] = []
    ftp.retrlines("LIST /", lines.append)
    assert any(line.endswith(" p.bin") and " 7 " in line for line in lines)
    # EPSV after PRET: same slave address as the control connection, so 229 direct.
    ftp.sendcmd("PRET RETR /p.bin")
    assert ftp.sendcmd("EPSV") == "229 Entering extended passive mode (|||40123|)."
    ftp.quit()


def test_pipelined_pret_pasv_noop_keep_order(master: Master, broker: FakeBroker) -> None:
    def slow_listen(slave: str, cmd: Any) -> list[m.Message]:
        time.sleep(0.3)
        return [m.Listening(req_id=cmd.req_id, xfer_id=cmd.xfer_id, port=40124)]

    broker.responders[m.Listen] = slow_listen
    ftp = master.client()
    wait_online(ftp)
    ftp.sock.sendall(b"PRET RETR /pub/a.bin\r\nPASV\r\nNOOP\r\nPWD\r\n")
    replies = [ftp.getresp() for _ in range(4)]
    assert [r[:3] for r in replies] == ["200", "227", "200", "257"], replies
    ftp.quit()



def start_active_retr(master: Master, broker: FakeBroker, port_low: int) -> tuple[ftplib.FTP, str, m.StartSend]:
    """A logged-in session whose active-mode RETR /pub/a.bin has been dispatched and got 150."""
    broker.responders[m.StartSend] = started
    ftp = master.client()
    wait_online(ftp)
    ftp.voidcmd("TYPE I")
    ftp.sendcmd(f"PORT 127,0,0,1,200,{port_low}")
    assert ftp.sendcmd("RETR /pub/a.bin").startswith("150")
    slave, cmd = broker.expect(m.StartSend)
    assert cmd.connect_to == ("127.0.0.1", 200 * 256 + port_low)
    return ftp, slave, cmd


def test_retr_missing_rest_and_offline(master: Master, broker: FakeBroker) -> None:
    ftp = master.client()
    wait_online(ftp)
    ftp.voidcmd("TYPE I")
    ftp.sendcmd("PORT 127,0,0,1,200,11")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("RETR /pub/none.bin")
    ftp.sendcmd("REST 11")
    with pytest.raises(ftplib.error_perm, match="^554"):
        ftp.sendcmd("RETR /pub/a.bin")
    broker.push(m.SlaveDown(name="s1", incarnation="inc-s1", reason="test"))
    deadline = time.monotonic() + 10
    while not any(line.startswith(" s1 offline ") for line in ftp.sendcmd("SITE SLAVES").splitlines()):
        assert time.monotonic() < deadline, "s1 not shown offline after SlaveDown"
        time.sleep(0.05)
    with pytest.raises(ftplib.error_temp, match="^450 file unavailable: its slave is offline"):
        ftp.sendcmd("RETR /pub/a.bin")
    ftp.quit()


def test_slave_down_mid_retr_gives_4xx_quickly(master: Master, broker: FakeBroker) -> None:
    ftp, slave, cmd = start_active_retr(master, broker, 12)
    assert cmd.connect_to == ("127.0.0.1", 200 * 256 + 12) and cmd.offset == 0
    broker.push(m.SlaveDown(name="s1", incarnation="inc-s1", reason="killed"))
    began = time.monotonic()
    with pytest.raises(ftplib.error_temp, match="^4"):
        ftp.voidresp()
    assert time.monotonic() - began < 10
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()


def test_abort_during_transfer(master: Master, broker: FakeBroker) -> None:
    ftp, _, cmd = start_active_retr(master, broker, 13)
    ftp.sock.sendall(b"ABOR\r\n")
    first = ftp.getline()
    second = ftp.getline()
    assert first.startswith("426") and second.startswith("226")
    _, abort = broker.expect(m.Abort)
    assert abort.xfer_id == cmd.xfer_id
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()


def test_progress_of_a_direct_transfer_and_a_done_from_another_slave(
        master: Master, broker: FakeBroker) -> None:
    ftp, _, cmd = start_active_retr(master, broker, 14)
    # Ids go on from the wall clock: a restarted master does not reuse a slave's old ids.
    assert cmd.xfer_id > (time.time_ns() >> 10) - 3600 * 10 ** 6
    broker.from_slave("s1", m.TransferProgress(xfer_id=cmd.xfer_id, bytes=4))
    deadline = time.monotonic() + 5
    while "Total bytes sent: 4" not in (stat := ftp.sendcmd("STAT")):
        assert time.monotonic() < deadline, stat
        time.sleep(0.05)
    assert " RETR /pub/a.bin on s1 4 bytes" in ftp.sendcmd("SITE WHO")
    # A TransferDone for this id from a slave it was not sent to is acknowledged, not used.
    broker.from_slave("s2", m.TransferDone(xfer_id=cmd.xfer_id, ok=False, bytes=1, size=1))
    ack_slave, ack = broker.expect(m.DoneAck)
    assert (ack_slave, ack.xfer_id) == ("s2", cmd.xfer_id)
    assert "Total bytes sent: 4" in ftp.sendcmd("STAT")  # still running
    broker.from_slave("s1", m.TransferDone(xfer_id=cmd.xfer_id, ok=True, bytes=10, size=10))
    assert ftp.voidresp().startswith("226 Transfer complete: 10 bytes")
    ack_slave, ack = broker.expect(m.DoneAck)
    assert (ack_slave, ack.xfer_id) == ("s1", cmd.xfer_id)
    ftp.quit()


def test_relay_retr_without_pret(master: Master, broker: FakeBroker) -> None:
    payload = os.urandom(300_000)
    data_server = socket.socket()
    data_server.bind(("127.0.0.1", 0))
    data_server.listen(1)

    def serve() -> None:
        conn, _ = data_server.accept()
        conn.sendall(payload)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    broker.responders[m.Listen] = lambda s, c: [m.Listening(req_id=c.req_id, xfer_id=c.xfer_id,
                                                            port=data_server.getsockname()[1])]
    broker.responders[m.StartSend] = started
    ftp = master.client()
    wait_online(ftp)
    ftp.voidcmd("TYPE I")
    chunks: list[bytes] = []
    conn = ftp.transfercmd("RETR /pub/a.bin")
    while data := conn.recv(65536):
        chunks.append(data)
    conn.close()
    _, cmd = broker.expect(m.StartSend)
    broker.from_slave("s1", m.TransferDone(xfer_id=cmd.xfer_id, ok=True, bytes=len(payload),
                                           size=len(payload)))
    assert ftp.voidresp().startswith("226")
    assert b"".join(chunks) == payload
    assert f" relayed_bytes={len(payload)}" in ftp.sendcmd("SITE STATUS")
    data_server.close()
    ftp.quit()


def test_refuse_mode_asks_for_pret(tmp_path: Path, broker: FakeBroker) -> None:
    proc = Master(tmp_path, broker, relay_mode="refuse")
    try:
        ftp = proc.client()
        wait_online(ftp)
        ftp.voidcmd("TYPE I")
        with pytest.raises(ftplib.error_temp, match="^425.*PRET"):
            ftp.transfercmd("RETR /pub/a.bin")
        assert ftp.nlst("/pub") == ["a.bin"]  # listings still use the master's PASV
        ftp.quit()
    finally:
        assert proc.stop() == 0


def test_quit_during_transfer_waits_for_the_outcome(master: Master, broker: FakeBroker) -> None:
    ftp, _, cmd = start_active_retr(master, broker, 14)
    assert ftp.sendcmd("QUIT").startswith("221")
    broker.from_slave("s1", m.TransferDone(xfer_id=cmd.xfer_id, ok=True, bytes=10, size=10))
    assert ftp.getline().startswith("226")
    assert ftp.sock.recv(100) == b""  # then the server closes the connection
    ftp.close()


def test_pipelined_port_and_list_finish(master: Master) -> None:
    ftp = master.client()
    wait_online(ftp)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        ftp.sock.sendall(f"PORT 127,0,0,1,{port // 256},{port % 256}\r\nLIST /pub\r\n".encode())
        assert ftp.getresp().startswith("200")
        assert ftp.getresp().startswith("150")
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        assert data.endswith(b" a.bin\r\n")
        assert ftp.getresp().startswith("226")
    ftp.quit()


def test_resume_and_append_go_to_the_holder(master: Master, broker: FakeBroker) -> None:
    broker.responders[m.StartReceive] = started
    ftp = master.client()
    wait_online(ftp)
    ftp.voidcmd("TYPE I")
    ftp.sendcmd("PORT 127,0,0,1,200,15")
    ftp.sendcmd("REST 4")
    assert ftp.sendcmd("STOR /pub/a.bin").startswith("150")
    slave, cmd = broker.expect(m.StartReceive)
    assert (slave, cmd.offset, cmd.append) == ("s1", 4, False)
    # Aborted midway: what arrived is recorded so that REST can resume it.
    broker.from_slave("s1", m.TransferDone(xfer_id=cmd.xfer_id, ok=False, bytes=2, size=6,
                                           aborted=True))
    assert ftp.getline().startswith("426")
    assert ftp.size("/pub/a.bin") == 6
    ftp.sendcmd("PORT 127,0,0,1,200,16")
    assert ftp.sendcmd("APPE /pub/a.bin").startswith("150")
    _, cmd = broker.expect(m.StartReceive)
    assert cmd.append and cmd.offset == 0
    broker.push(m.SlaveDown(name="s1", incarnation="inc-s1", reason="gone"))
    with pytest.raises(ftplib.error_temp, match="^4"):
        ftp.voidresp()
    ftp.sendcmd("PORT 127,0,0,1,200,17")
    with pytest.raises(ftplib.error_temp, match="^450"):
        ftp.sendcmd("APPE /pub/a.bin")
    ftp.quit()


def test_xcrc_of_a_range_asks_a_holder(master: Master, broker: FakeBroker) -> None:
    broker.responders[m.Checksum] = lambda s, c: [m.ChecksumResult(req_id=c.req_id, crc32=0xABC, size=10)]
    ftp = master.client()
    wait_online(ftp)
    ftp.voidcmd("TYPE I")  # XCRC is refused in TYPE A (test_size_rest_xcrc_in_type_a)
    assert ftp.sendcmd("XCRC /pub/a.bin 2 5") == "250 00000ABC"
    _, cmd = broker.expect(m.Checksum)
    assert (cmd.path, cmd.start, cmd.end) == ("/pub/a.bin", 2, 5)
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("XCRC /pub/none.bin")
    ftp.quit()


def test_size_rest_xcrc_in_type_a(master: Master) -> None:
    ftp = master.client()
    wait_online(ftp)
    ftp.voidcmd("TYPE A")
    for cmd, code in (("SIZE /pub/a.bin", "550"), ("REST 4", "501"), ("XCRC /pub/a.bin", "550")):
        with pytest.raises(ftplib.error_perm, match=f"^{code} .*ASCII mode"):
            ftp.sendcmd(cmd)
    ftp.voidcmd("TYPE I")
    assert ftp.sendcmd("SIZE /pub/a.bin") == "213 10"
    assert ftp.sendcmd("REST 4").startswith("350")
    ftp.sendcmd("REST 0")
    ftp.quit()


def test_starts_carry_the_session_type(master: Master, broker: FakeBroker) -> None:
    broker.responders[m.StartSend] = started
    broker.responders[m.StartReceive] = started
    ftp = master.client()
    wait_online(ftp)
    for type_, ascii in (("A", True), ("I", False)):
        ftp.voidcmd(f"TYPE {type_}")
        ftp.sendcmd("PORT 127,0,0,1,200,12")
        assert ftp.sendcmd("RETR /pub/a.bin").startswith("150")
        _, send = broker.expect(m.StartSend)
        assert send.ascii is ascii
        broker.from_slave("s1", m.TransferDone(xfer_id=send.xfer_id, ok=True, bytes=10, size=10))
        assert ftp.voidresp().startswith("226")
        ftp.sendcmd("PORT 127,0,0,1,200,13")
        assert ftp.sendcmd(f"STOR /up-{type_}.txt").startswith("150")
        _, recv = broker.expect(m.StartReceive)
        assert recv.ascii is ascii
        broker.from_slave("s1", m.TransferDone(xfer_id=recv.xfer_id, ok=True, bytes=3, size=2, crc32=1))
        assert ftp.voidresp().startswith("226")
    ftp.quit()


def test_max_connections(tmp_path: Path, broker: FakeBroker) -> None:
    proc = Master(tmp_path, broker, extra="max_connections = 2")
    try:
        first = proc.client()
        deadline = time.monotonic() + 5  # the start-up probe's connection may still be closing
        while " sessions=1" not in first.sendcmd("SITE STATUS").splitlines():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = proc.client()
        third = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
        assert third.recv(100).startswith(b"421")
        third.close()
        first.quit()
        second.quit()
    finally:
        assert proc.stop() == 0


def test_demo_password_refused_off_loopback(tmp_path: Path) -> None:
    from master.users import hash_password
    config = tmp_path / "m.toml"
    config.write_text(f"""
[master]
listen_host = "0.0.0.0"
listen_port = {free_ports(1)[0]}
state_dir = "{tmp_path / 'state'}"

[[users]]
name = "admin"
password_hash = "{hash_password('demo')}"
""")
    result = subprocess.run([sys.executable, "-m", "master", "--config", str(config)], cwd=ROOT,
                            capture_output=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "demo" in lines[0]
