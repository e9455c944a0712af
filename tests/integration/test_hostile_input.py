"""Hostile input at the master (issue 11, item 3), against a real cluster and raw sockets:
line breaks and NUL inside a command line, control characters and invalid UTF-8 in names,
password guessing over parallel connections, one address holding many connections, and
connections that never log in.

Attacks come from their own loopback source addresses (127.0.0.3 and up: Linux routes all of
127.0.0.0/8 to lo), so a ban or a full per-address quota never touches the 127.0.0.1 clients
that check that everyone else is unaffected.
"""

from __future__ import annotations

import ftplib
import io
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.conftest import ADMIN_PASSWORD, ADMIN_USER, Cluster, upload

pytestmark = pytest.mark.integration

BAD_NAME = re.compile(rb"[\x00-\x1f\x7f]|[\x80-\xff]")
"""A byte no stored name may hold (the names stored by these tests are plain ASCII)."""


class Raw:
    """A control connection on a raw socket from `source`: bytes in, reply lines out."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 15) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.banner = self.file.readline()
        self.noop: bytes | None = None
        """The master's reply to NOOP, which ends what `replies` collects."""

    def login(self, password: str = ADMIN_PASSWORD) -> bytes:
        self.sock.sendall(f"USER {ADMIN_USER}\r\nPASS {password}\r\n".encode())
        assert self.file.readline().startswith(b"331")
        return self.file.readline()

    def replies(self, raw: bytes) -> list[bytes]:
        """Send `raw` then NOOP: every line the master sent before NOOP's reply."""
        if self.noop is None:
            self.sock.sendall(b"NOOP\r\n")
            self.noop = self.file.readline()
            assert self.noop.startswith(b"200 "), self.noop
        self.sock.sendall(raw + b"NOOP\r\n")
        lines: list[bytes] = []
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError(lines)
            if line == self.noop:
                return lines
            lines.append(line)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def raw(cluster: Cluster) -> Iterator[Raw]:
    session = Raw(cluster.ftp_port)
    assert session.login().startswith(b"230")
    assert session.replies(b"TYPE I\r\n")[0].startswith(b"200")  # SIZE answers in TYPE I only
    yield session
    session.close()


def names(cluster: Cluster) -> list[str]:
    with cluster.ftp() as ftp:
        return sorted(ftp.nlst("/"))


def bad_names_on_slaves(cluster: Cluster) -> list[bytes]:
    found = []
    for slave in cluster.slave_names:
        for _dir, dirs, files in os.walk(os.fsencode(cluster.slave_root(slave))):
            found += [n for n in dirs + files if BAD_NAME.search(n)]
    return found


# ---------------------------------------------------------------- CR, LF, NUL: 501, never echoed

@pytest.mark.parametrize("brk", [b"\n", b"\r", b"\x00"], ids=["LF", "CR", "NUL"])
@pytest.mark.parametrize("command", [b"SIZE", b"MKD", b"CWD", b"DELE", b"RNFR", b"MLST",
                                     b"STAT", b"XCRC", b"SITE SLAVESELECT up", b"USER", b"FOO"])
def test_line_break_in_a_command_is_refused_and_not_echoed(cluster: Cluster, raw: Raw,
                                                           command: bytes, brk: bytes) -> None:
    before = names(cluster)
    # A client reading the reply line by line must never see the forged "213 99".
    lines = raw.replies(command + b" /x" + brk + b"213 99\r\n")
    assert len(lines) == 1 and lines[0].startswith(b"501 ") and lines[0].endswith(b"\r\n"), lines
    assert b"213" not in lines[0] and b"\r" not in lines[0][:-2] and brk not in lines[0][:-2]
    assert names(cluster) == before
    assert bad_names_on_slaves(cluster) == []


# ---------------------------------------------------------------- control chars, bad UTF-8: 553

CONTROL_NAMES = ["/esc\x1b[31mred", "/bell\x07", "/del\x7f", "/tab\there", "/csi\u009bx"]


@pytest.mark.parametrize("name", CONTROL_NAMES, ids=["ESC", "BEL", "DEL", "TAB", "C1-CSI"])
def test_upload_of_a_name_with_control_characters_is_refused(cluster: Cluster, name: str) -> None:
    before = names(cluster)
    with cluster.ftp() as ftp:
        with pytest.raises(ftplib.error_perm, match=r"^553 "):
            ftp.storbinary(f"STOR {name}", io.BytesIO(b"payload"))  # PASV: the master's relay
        for command in ("MKD", "SIZE", "CWD", "DELE", "MLST", "RNFR"):
            with pytest.raises(ftplib.error_perm, match=r"^553 "):
                ftp.sendcmd(f"{command} {name}")
    assert names(cluster) == before
    assert bad_names_on_slaves(cluster) == []


def test_rename_to_a_name_with_control_characters_is_refused(cluster: Cluster) -> None:
    with cluster.ftp() as ftp:
        assert upload(ftp, "/plain.txt", b"plain", "pret").startswith("226")
        assert ftp.sendcmd("RNFR /plain.txt").startswith("350")
        with pytest.raises(ftplib.error_perm, match=r"^553 "):
            ftp.sendcmd("RNTO /plain\x1b[2J.txt")
        assert ftp.size("/plain.txt") == 5
        ftp.delete("/plain.txt")
    assert bad_names_on_slaves(cluster) == []


def test_invalid_utf8_names_are_refused_and_never_collapse(cluster: Cluster, raw: Raw) -> None:
    before = names(cluster)
    for name in (b"/bad\xff", b"/bad\xfe", b"/bad\xc3"):  # all three decode to one U+FFFD
        for command in (b"MKD", b"SIZE", b"RNFR"):
            lines = raw.replies(command + b" " + name + b"\r\n")
            assert len(lines) == 1 and lines[0].startswith(b"553 "), (command, name, lines)
            assert name[4:] not in lines[0]
    with cluster.ftp() as ftp:
        ftp.encoding = "latin-1"  # ftplib sends each character as the byte of that value
        for name_text in ("/bad\xff.bin", "/bad\xfe.bin"):
            with pytest.raises(ftplib.error_perm, match=r"^553 "):
                ftp.storbinary(f"STOR {name_text}", io.BytesIO(b"payload"))
    assert names(cluster) == before
    assert not [n for n in names(cluster) if "\ufffd" in n]
    assert bad_names_on_slaves(cluster) == []


def test_valid_utf8_names_still_work(cluster: Cluster) -> None:
    with cluster.ftp() as ftp:
        assert upload(ftp, "/grüße ✓.txt", b"utf8", "pret").startswith("226")
        assert ftp.size("/grüße ✓.txt") == 4
        assert "grüße ✓.txt" in ftp.nlst("/")
        ftp.delete("/grüße ✓.txt")


def test_command_word_with_control_bytes_is_not_echoed(raw: Raw) -> None:
    for brk in (b"\n", b"\r"):  # stock pyftpdlib echoes the word: '500 Command "FOO<LF>213"'
        lines = raw.replies(b"FOO" + brk + b"213 99\r\n")
        assert len(lines) == 1 and lines[0].startswith(b"501 ") and b"213" not in lines[0], lines
    lines = raw.replies(b"\x1b[31mFOO bar\r\n")
    assert lines == [b"500 Command not understood.\r\n"]
    # Telnet IP/Synch before ABOR (RFC 959 4.1.3), as some clients send it, still works.
    lines = raw.replies(b"\xff\xf4\xff\xf2ABOR\r\n")
    assert len(lines) == 1 and lines[0].startswith(b"225 "), lines


# ---------------------------------------------------------------- failed logins: a ban per address

def _wrong_login(port: int, source: str, out: list[bytes]) -> None:
    session = Raw(port, source, timeout=30)
    try:
        out.append(session.login("wrong-password"))
    finally:
        session.close()


def test_password_guessing_over_parallel_connections_is_banned(cluster: Cluster) -> None:
    attacker, limit = "127.0.0.3", 10  # failed_login_limit's default, within 60 s
    out: list[bytes] = []
    threads = [threading.Thread(target=_wrong_login, args=(cluster.ftp_port, attacker, out))
               for _ in range(limit)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == limit and all(r.startswith(b"530") for r in out), out
    # Banned: the right password from that address is refused, without being checked.
    session = Raw(cluster.ftp_port, attacker)
    t0 = time.monotonic()
    reply = session.login()
    assert reply.startswith(b"530 ") and b"failed logins" in reply, reply
    assert time.monotonic() - t0 < 1.0  # no scrypt check, no auth-failed delay
    assert session.file.readline() == b""  # and the connection is closed
    session.close()
    # Everyone else logs in as before.
    with cluster.ftp() as ftp:
        ftp.voidcmd("NOOP")
    other = Raw(cluster.ftp_port, "127.0.0.6")
    assert other.login().startswith(b"230")
    other.close()
    log = cluster.roles["master"].log.read_text(errors="replace")
    assert len([line for line in log.splitlines()
                if attacker in line and "failed logins" in line and "refused" in line]) == 1, log


# ---------------------------------------------------------------- connections per address

def test_one_address_cannot_take_every_connection(cluster: Cluster) -> None:
    attacker, per_address = "127.0.0.4", 16  # max_connections_per_ip's default
    held = [Raw(cluster.ftp_port, attacker) for _ in range(per_address)]
    try:
        assert all(s.banner.startswith(b"220") for s in held)
        extra = Raw(cluster.ftp_port, attacker)
        assert extra.banner.startswith(b"421 "), extra.banner
        extra.close()
        with cluster.ftp() as ftp:  # another address still gets in
            ftp.voidcmd("NOOP")
    finally:
        for s in held:
            s.close()


# ---------------------------------------------------------------- connections that never log in

@pytest.fixture
def quick_login_cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    return cluster_factory(slaves=1, master_extra={"login_timeout": 2}).start()


def test_connections_that_never_log_in_are_closed(quick_login_cluster: Cluster) -> None:
    c = quick_login_cluster
    ftp = c.ftp()  # logged in before: keeps the normal idle timeout
    idle = Raw(c.ftp_port, "127.0.0.5")
    chatty = Raw(c.ftp_port, "127.0.0.5")  # commands do not extend the login deadline
    chatty.sock.sendall(b"USER admin\r\n")
    assert chatty.file.readline().startswith(b"331")
    t0 = time.monotonic()
    for _ in range(5):
        time.sleep(0.5)
        try:
            chatty.sock.sendall(b"NOOP\r\n")
        except OSError:
            break
    for session in (idle, chatty):
        lines = []
        while line := session.file.readline():
            lines.append(line)
        assert lines and lines[-1].startswith(b"421 "), lines
        session.close()
    assert time.monotonic() - t0 < 6
    ftp.voidcmd("NOOP")
    ftp.quit()
