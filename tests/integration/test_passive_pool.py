"""PRET+PASV on the slaves' pooled passive listeners, through the real broker, master and
slave: the 227 is answered without asking the slave, and a port goes back to the pool only
once nothing a client left on it can reach the next transfer."""

from __future__ import annotations

import re
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
