"""What operators do to running roles: SIGTERM (graceful stop), SIGHUP (reload users),
readiness under systemd (sd_notify on a real NOTIFY_SOCKET)."""

from __future__ import annotations

import ftplib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (ADMIN_PASSWORD, ADMIN_USER, password_hash, slave_receiving,
                                        wait_for)

pytestmark = pytest.mark.integration


def test_sigterm_lets_a_running_upload_finish(cluster_factory) -> None:
    c = cluster_factory(slaves=1).start()
    ftp = c.ftp()
    try:
        ftp.set_pasv(True)
        ftp.sendcmd("PRET STOR /big.bin")
        conn = ftp.transfercmd("STOR /big.bin")
        conn.sendall(b"a" * 100_000)
        c.roles["master"].signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", c.ftp_port), timeout=1).close()
            except OSError:
                return True
            return False
        wait_for(refused, 10, "the master to stop accepting connections")
        assert c.roles["master"].alive()
        time.sleep(0.5)  # the transfer keeps the master up
        assert c.roles["master"].alive()
        conn.sendall(b"b" * 100_000)
        conn.close()
        assert ftp.voidresp().startswith("226")
    finally:
        ftp.close()
    assert c.roles["master"].wait(10) == 0
    assert (c.slave_root("slave1") / "big.bin").stat().st_size == 200_000
    assert "waiting up to 30 s for 1 running transfers" in c.roles["master"].log.read_text()


def test_sigterm_stop_timeout_cuts_a_stalled_transfer(cluster_factory) -> None:
    c = cluster_factory(slaves=1, master_extra={"stop_timeout": 1}).start()
    with c.ftp() as ftp:
        ftp.set_pasv(True)
        conn = ftp.transfercmd("STOR /stalled.bin")
        conn.sendall(b"x" * 1000)
        began = time.monotonic()
        c.roles["master"].signal(signal.SIGTERM)
        assert c.roles["master"].wait(10) == 0
        assert 0.9 <= time.monotonic() - began < 5
        conn.close()
    assert "stop timeout: closing 1 sessions" in c.roles["master"].log.read_text()


def test_sighup_reloads_users_without_dropping_sessions(cluster_factory) -> None:
    c = cluster_factory(slaves=1).start()
    config = c.roles["master"].config
    original = config.read_text()
    session = c.ftp()
    try:
        with pytest.raises(ftplib.error_perm, match="^530"):
            c.ftp("carol", "carol-pw")
        config.write_text(original + f'\n[[users]]\nname = "carol"\npassword_hash = "{password_hash("carol-pw")}"\n'
                          'home = "/"\nperms = "elr"\n')
        c.roles["master"].signal(signal.SIGHUP)

        def carol_logs_in() -> bool:
            try:
                c.ftp("carol", "carol-pw").close()
            except ftplib.error_perm:
                return False
            return True
        wait_for(carol_logs_in, 10, "carol's login after SIGHUP")
        assert session.sendcmd("NOOP").startswith("200")  # the old session is still there

        config.write_text(original + "\n[placement.upload]\nbogus = 1\n")
        c.roles["master"].signal(signal.SIGHUP)
        wait_for(lambda: "reload failed, keeping the old users" in c.roles["master"].log.read_text(),
                 10, "the reload error in the log")
        line = next(x for x in c.roles["master"].log.read_text().splitlines() if "reload failed" in x)
        assert "key placement.upload.bogus: unknown key" in line
        c.ftp("carol", "carol-pw").close()  # the previous users stay
        assert session.sendcmd("PWD").startswith("257")
    finally:
        session.close()


class NotifySocket:
    """A NOTIFY_SOCKET datagram listener, as systemd provides one."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def receive(self) -> list[str]:
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            pass
        return self.messages

    def close(self) -> None:
        self.sock.close()


def test_every_role_reports_ready_only_when_serving(cluster_factory, tmp_path: Path) -> None:
    """READY=1 arrives from the broker once bound, from a slave once welcomed, from the master
    once it listens and is linked; STOPPING=1 on SIGTERM."""
    from common.launcher import spawn_role

    c = cluster_factory(slaves=1)
    sockets = {name: NotifySocket(tmp_path / f"{name}.sock") for name in ("broker", "master", "slave1")}
    procs: dict[str, subprocess.Popen] = {}
    old_env = dict(os.environ)
    try:
        # The slave and the master first, with no broker: neither may say READY.
        for name, module in (("slave1", "slave"), ("master", "master")):
            os.environ["NOTIFY_SOCKET"] = sockets[name].path
            with open(c.plan.log_dir / f"{name}.log", "ab") as log:
                procs[name] = spawn_role(module, c.roles[name].config, log)
        time.sleep(1.5)
        assert not any("READY=1" in m for m in sockets["slave1"].receive())
        assert not any("READY=1" in m for m in sockets["master"].receive())
        os.environ["NOTIFY_SOCKET"] = sockets["broker"].path
        with open(c.plan.log_dir / "broker.log", "ab") as log:
            procs["broker"] = spawn_role("broker", c.roles["broker"].config, log)
        for name in ("broker", "slave1", "master"):
            wait_for(lambda: any(m.startswith("READY=1") for m in sockets[name].receive()), 15,
                     f"READY=1 from {name}")
        for name, proc in procs.items():
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, name
            assert any(m.startswith("STOPPING=1") for m in sockets[name].receive()), name
    finally:
        os.environ.clear()
        os.environ.update(old_env)
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for s in sockets.values():
            s.close()


def test_sd_notify_helper_without_systemd(tmp_path: Path) -> None:
    from common import sdnotify

    assert not sdnotify.notify("READY=1", {})
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "relative"})
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    listener = NotifySocket(tmp_path / "n.sock")
    try:
        assert sdnotify.notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": listener.path})
        assert listener.receive() == ["READY=1\nSTATUS=x"]
    finally:
        listener.close()
    if sys.platform.startswith("linux"):
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"ftpcluster-test-{os.getpid()}"
        abstract.bind("\0" + name)
        try:
            assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
            assert abstract.recv(100) == b"READY=1"
        finally:
            abstract.close()


def test_slave_sigterm_finishes_its_upload_refuses_new_ones_and_says_bye(cluster_factory) -> None:
    c = cluster_factory(slaves=1).start()
    with c.ftp() as ftp, c.ftp() as other:
        ftp.set_pasv(True)
        ftp.sendcmd("PRET STOR /during.bin")
        receiving = slave_receiving(c, "/during.bin", 50_000)
        conn = ftp.transfercmd("STOR /during.bin")
        conn.sendall(b"a" * 50_000)
        wait_for(receiving, 10, "the slave to receive the first bytes")
        c.roles["slave1"].signal(signal.SIGTERM)
        wait_for(lambda: "stopping: refusing new transfers" in c.roles["slave1"].log.read_text(), 10,
                 "the slave to start draining")
        with pytest.raises(ftplib.error_temp):
            other.set_pasv(True)
            other.sendcmd("PRET STOR /refused.bin")
            other.storbinary("STOR /refused.bin", __import__("io").BytesIO(b"no"))
        conn.sendall(b"b" * 50_000)
        conn.close()
        assert ftp.voidresp().startswith("226")
    assert c.roles["slave1"].wait(15) == 0
    assert (c.slave_root("slave1") / "during.bin").stat().st_size == 100_000
    wait_for(lambda: "bye" in c.roles["broker"].log.read_text().lower(), 10, "the broker to log the Bye")
