"""PRET+PASV on the slaves' pooled passive listeners, through the real broker, master and
slave: the 227 is answered without asking the slave, and a port goes back to the pool only
once nothing a client left on it can reach the next transfer."""

from __future__ import annotations

import ftplib
import re
import signal
import socket

import pytest

from tests.integration.conftest import download, upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def pasv_port(reply: str) -> int:
    *_, hi, lo = re.search(r"\(([\d,]+)\)", reply).group(1).split(",")  # type: ignore[union-attr]
    return int(hi) * 256 + int(lo)


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(10) == b""
    except TimeoutError:
        return False


def test_an_abandoned_pasv_route_never_feeds_the_next_transfer(cluster_factory) -> None:
    c = cluster_factory(slaves=1, slave_extra={"passive_pool": 1}).start()
    with c.ftp() as a, c.ftp() as b:
        assert upload(a, "/f", b"F" * 1000, "pret").startswith("226")
        assert upload(a, "/g", b"G" * 2000, "pret").startswith("226")
        a.sendcmd("PRET RETR /f")
        port = pasv_port(a.sendcmd("PASV"))
        stale = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            a.sendcmd("PASV")  # a new route: the pooled port is given back...
            # ...once the slave has closed the connection the client left on it.
            wait_for(lambda: closed_by_peer(stale), 10, "the slave to close the stale connection")
        finally:
            stale.close()

        def lent_again() -> bool:  # the master hears the slave's OpResult just after the close
            b.sendcmd("PRET RETR /g")
            return pasv_port(b.sendcmd("PASV")) == port
        wait_for(lent_again, 10, "the port to be lent again")
        with b.transfercmd("RETR /g") as conn:
            assert conn.makefile("rb").read() == b"G" * 2000
        assert b.voidresp().startswith("226")
        assert download(a, "/f", "pret") == b"F" * 1000


def test_pool_exhausted_or_disabled_falls_back_to_listen(cluster_factory) -> None:
    c = cluster_factory(slaves=1, slave_extra={"passive_pool": 1}).start()
    with c.ftp() as a, c.ftp() as b:
        assert upload(a, "/f", b"x" * 5000, "pret").startswith("226")
        a.sendcmd("PRET RETR /f")
        first = pasv_port(a.sendcmd("PASV"))
        b.sendcmd("PRET RETR /f")
        second = pasv_port(b.sendcmd("PASV"))  # the pool's one port is lent: Listen
        assert first != second
        with a.transfercmd("RETR /f") as da, b.transfercmd("RETR /f") as db:
            got_a, got_b = da.makefile("rb").read(), db.makefile("rb").read()
        assert got_a == got_b == b"x" * 5000
        assert a.voidresp().startswith("226") and b.voidresp().startswith("226")
    c0 = cluster_factory(slaves=1, slave_extra={"passive_pool": 0}).start()
    with c0.ftp() as ftp:
        assert upload(ftp, "/up", b"y" * 3000, "pret").startswith("226")
        assert download(ftp, "/up", "pret") == b"y" * 3000


def recv_all_of(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    return sock.makefile("rb").read()


def private_range(size: int) -> list[int]:
    """`size` consecutive ports below the ephemeral range (a slave's passive_ports)."""
    from common.launcher import free_ports
    base = free_ports(1)[0]
    return [base, base + size - 1]


def one_port_cluster_with_fixed_ports(cluster_factory):
    """One slave with one pooled port from passive_ports: restarted, it reopens that port."""
    return cluster_factory(slaves=1, slave_extra={"passive_pool": 1,
                                                  "passive_ports": private_range(4)}).start()


def route_then_restart_slave(c, ftp: ftplib.FTP, pret: str) -> int:
    """PRET `pret` + PASV on `ftp`, then slave1 killed and restarted; the route's port."""
    ftp.sendcmd(f"PRET {pret}")
    port = pasv_port(ftp.sendcmd("PASV"))
    c.kill("slave1")
    c.restart("slave1")
    c.wait_online(["slave1"], 30)
    return port


def wait_lent(ftp: ftplib.FTP, pret: str, port: int) -> None:
    """PRET `pret` + PASV on `ftp` until the 227 names `port` (its pool cleared and free)."""
    def lent() -> bool:
        ftp.sendcmd(f"PRET {pret}")
        try:
            return pasv_port(ftp.sendcmd("PASV")) == port
        except ftplib.error_temp:  # the slave's link still settling: try again
            return False
    wait_for(lent, 15, f"port {port} to be lent")


def test_a_route_lent_by_a_slave_since_restarted_is_refused(cluster_factory) -> None:
    c = one_port_cluster_with_fixed_ports(cluster_factory)
    with c.ftp() as a, c.ftp() as b:
        assert upload(a, "/of-a", b"A" * 3000, "active").startswith("226")
        assert upload(a, "/of-b", b"B" * 3000, "active").startswith("226")
        port = route_then_restart_slave(c, a, "RETR /of-a")
        wait_lent(b, "RETR /of-b", port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as data_b:
            with pytest.raises(ftplib.error_temp, match="^425 .*restarted"):
                a.sendcmd("RETR /of-a")  # a's route was on the old process
            assert b.sendcmd("RETR /of-b").startswith("150")
            assert recv_all_of(data_b) == b"B" * 3000
        assert b.voidresp().startswith("226")


def test_a_restarted_master_lends_no_port_a_waiting_transfer_holds(cluster_factory) -> None:
    c = cluster_factory(slaves=1, slave_extra={"passive_pool": 1}).start()
    with c.ftp() as a:
        assert upload(a, "/private", b"P" * 5000, "active").startswith("226")
        assert upload(a, "/public", b"Q" * 5000, "active").startswith("226")
        a.sendcmd("PRET RETR /private")
        port = pasv_port(a.sendcmd("PASV"))
        assert a.sendcmd("RETR /private").startswith("150")  # the slave now waits on the port
    c.kill("master")
    c.restart("master")
    c.wait_ready(30)
    with c.ftp() as b:
        b.sendcmd("PRET RETR /public")
        other = pasv_port(b.sendcmd("PASV"))
        assert other != port  # still held by the old transfer: not lent (Listen instead)
        with socket.create_connection(("127.0.0.1", other), timeout=10) as data_b:
            assert b.sendcmd("RETR /public").startswith("150")
            assert recv_all_of(data_b) == b"Q" * 5000
        assert b.voidresp().startswith("226")
    # The old transfer still serves its own client.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as data_a:
        assert recv_all_of(data_a) == b"P" * 5000


def test_ports_given_up_while_the_slave_is_unreachable_come_back(cluster_factory) -> None:
    c = cluster_factory(slaves=1, slave_extra={"passive_pool": 1}).start()
    with c.ftp() as ftp:
        ftp.sendcmd("PRET STOR /x")
        port = pasv_port(ftp.sendcmd("PASV"))
        c.roles["slave1"].signal(signal.SIGSTOP)
        try:
            wait_for(lambda: "slave1" not in c.online(), 20, "the slave to be declared offline")
            ftp.sendcmd("ABOR")  # the route is given up: its ClearPort cannot be delivered
        finally:
            c.roles["slave1"].signal(signal.SIGCONT)
        c.wait_online(["slave1"], 30)

        def lent_again() -> bool:
            ftp.sendcmd("PRET STOR /x")
            got = pasv_port(ftp.sendcmd("PASV"))
            ftp.sendcmd("ABOR")
            return got == port
        wait_for(lent_again, 15, "the pooled port to be cleared and lent again", interval=0.5)


def test_a_connection_left_for_a_refused_stale_route_never_feeds_the_next_transfer(
        cluster_factory) -> None:
    c = one_port_cluster_with_fixed_ports(cluster_factory)
    with c.ftp() as a, c.ftp() as b:
        assert upload(a, "/of-b", b"B" * 3000, "active").startswith("226")
        port = route_then_restart_slave(c, a, "RETR /of-b")
        wait_for(lambda: "pool=1/1" in (s := b.sendcmd("SITE SLAVES")) and "dirty=" not in s, 15,
                 "the restarted slave's pool to be cleared")
        # a's client connects to the port it was told (the new process reopened it), and its
        # RETR is refused: the connection it leaves there must not reach b's transfer.
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            with pytest.raises(ftplib.error_temp, match="^425 .*restarted"):
                a.sendcmd("RETR /of-b")
        wait_lent(b, "STOR /of-b", port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as data_b:
            assert b.sendcmd("STOR /of-b").startswith("150")
            data_b.sendall(b"NEW" * 1000)
        assert b.voidresp().startswith("226 Transfer complete: 3000 bytes")
        assert download(b, "/of-b", "active") == b"NEW" * 1000
