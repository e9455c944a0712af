"""Guards of the master's sessions: logins off the loop, the pipelining cap, PRET and path rules
(real master process against the fake broker of test_master_process)."""

from __future__ import annotations

import ftplib
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from common import messages as m
from tests.integration.test_master_process import (FakeBroker, Master, broker, master,  # noqa: F401
                                                  started, wait_online)

pytestmark = pytest.mark.integration


def _wrong_login(port: int, user: str, done: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(f"USER {user}\r\nPASS wrong-password\r\n".encode())
        f.readline()  # 331
        done.append(f.readline().decode())  # 530 after pyftpdlib's auth-failed delay


@pytest.fixture
def unlimited_master(tmp_path: Path, broker: FakeBroker) -> Iterator[Master]:  # noqa: F811
    # 21 connections and 20 failed logins from one address: no per-address limit, no ban
    # (test_hostile_input shows both).
    proc = Master(tmp_path, broker, extra="max_connections_per_ip = 0\nfailed_login_limit = 0")
    yield proc
    assert proc.stop() == 0, proc.log()


def test_wrong_password_logins_do_not_stall_other_sessions(unlimited_master: Master) -> None:
    master = unlimited_master
    ftp = master.client()
    ftp.voidcmd("NOOP")
    done: list[str] = []
    threads = [threading.Thread(target=_wrong_login, args=(master.port, user, done))
               for user in ["admin", "nobody"] * 10]
    for t in threads:
        t.start()
    worst = 0.0
    deadline = time.monotonic() + 1.5  # 20 scrypt checks on 2 workers: ~0.5-1 s of CPU
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        ftp.voidcmd("NOOP")
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.01)
    for t in threads:
        t.join(20)
    assert len(done) == 20 and all(line.startswith("530") for line in done), done
    assert worst < 0.1, f"a NOOP took {worst * 1000:.0f} ms during the wrong-password logins"
    # A good login still works (and pipelined commands behind PASS keep their order).
    with socket.create_connection(("127.0.0.1", master.port), timeout=15) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"USER admin\r\nPASS secret-pw\r\nPWD\r\nNOOP\r\n")
        replies = [f.readline().decode()[:3] for _ in range(4)]
    assert replies == ["331", "230", "257", "200"]
    ftp.quit()


def test_too_many_pipelined_commands_close_the_session(master: Master, broker: FakeBroker) -> None:
    ftp = master.client()  # no Listen responder: the PASV's reply stays owed
    wait_online(ftp)
    assert ftp.sendcmd("PRET STOR /slow.bin").startswith("200")
    ftp.sock.sendall(b"PASV\r\n" + b"NOOP\r\n" * 70)
    f = ftp.sock.makefile("rb")
    lines = []
    while line := f.readline():
        lines.append(line.decode())
    assert lines and lines[-1].startswith("421"), lines
    assert not any(line.startswith("200") for line in lines)
    ftp.close()
    with master.client() as other:  # the master is fine
        other.voidcmd("NOOP")


@pytest.fixture
def ruled_master(tmp_path: Path, broker: FakeBroker) -> Iterator[Master]:  # noqa: F811
    extra = '\n[[placement.upload.rules]]\nglob = "/pub/*"\nforbid = ["s1"]\n'
    proc = Master(tmp_path, broker, extra=extra)
    yield proc
    assert proc.stop() == 0, proc.log()


def test_pret_cannot_bypass_upload_path_rules(ruled_master: Master, broker: FakeBroker) -> None:
    broker.responders[m.Listen] = lambda s, c: [m.Listening(req_id=c.req_id, xfer_id=c.xfer_id, port=40123)]
    broker.responders[m.StartReceive] = started
    ftp = ruled_master.client()
    wait_online(ftp)
    assert ftp.sendcmd("PRET STOR /ok.bin").startswith("200")
    assert ftp.sendcmd("PASV").startswith("227")
    with pytest.raises(ftplib.error_temp, match="^425 .*forbidden by rule /pub/"):
        ftp.sendcmd("STOR /pub/secret.bin")
    assert broker.commands.qsize() >= 0
    while not broker.commands.empty():
        _, cmd = broker.commands.get()
        assert not isinstance(cmd, m.StartReceive), cmd
    # The path PRET was for is fine.
    assert ftp.sendcmd("PRET STOR /ok.bin").startswith("200")
    assert ftp.sendcmd("PASV").startswith("227")
    assert ftp.sendcmd("STOR /ok.bin").startswith("150")
    _, cmd = broker.expect(m.StartReceive)
    broker.from_slave("s1", m.TransferDone(xfer_id=cmd.xfer_id, ok=True, bytes=1, size=1, crc32=1))
    assert ftp.voidresp().startswith("226")
    ftp.quit()
