"""master.guard: which command-line bytes are refused with which reply, and the failed-login
table given the time, as tables."""

from __future__ import annotations

import pytest
from pyftpdlib.handlers import FTPHandler

from master import guard, replies
from master.handler import PROTO_CMDS

LB, BAD_NAME, BAD_ARG, NOT_UNDERSTOOD = (replies.LINE_BREAK_IN_COMMAND, replies.BAD_BYTES_IN_NAME,
                                         replies.BAD_BYTES_IN_ARGUMENT,
                                         replies.COMMAND_NOT_UNDERSTOOD)


@pytest.mark.parametrize(("raw", "text"), [
    (b"STOR /a", "STOR /a"),
    ("STOR /grüße".encode(), "STOR /grüße"),
    (b"STOR /a\xff", "STOR /a\udcff"),
    (b"STOR /a\xfe", "STOR /a\udcfe"),      # a different name from the one above
    (b"STOR /a\xc3", "STOR /a\udcc3"),      # a truncated sequence
    (b"STOR /\xef\xbf\xbd", "STOR /\ufffd"),  # a real U+FFFD is valid UTF-8
])
def test_decode_keeps_invalid_utf8_visible(raw: bytes, text: str) -> None:
    assert guard.decode(raw) == text


@pytest.mark.parametrize(("cmd", "arg", "reply"), [
    ("SIZE", "/x", ""),
    ("STOR", "/grüße ✓.txt", ""),
    ("STOR", "/\ufffd", ""),
    ("LIST", "-la", ""),
    ("PASS", "p@ss word", ""),
    ("NOOP", "", ""),
    # CR, LF, NUL anywhere, any command: 501
    ("SIZE", "/x\n213 99", LB),
    ("SIZE", "/x\r213 99", LB),
    ("SIZE", "/x\x00", LB),
    ("PASS", "a\nb", LB),
    ("USER", "a\rb", LB),
    ("FOO\n213", "99", LB),
    ("SITE", "CHMOD 755 /a\nb", LB),
    # a command word that is not printable ASCII: 500, not echoed
    ("\x1b[31mFOO", "x", NOT_UNDERSTOOD),
    ("F\udcffOO", "", NOT_UNDERSTOOD),
    # control characters and invalid UTF-8 in a name: 553, lookups included
    ("STOR", "/esc\x1b[31m", BAD_NAME),
    ("APPE", "/bell\x07", BAD_NAME),
    ("MKD", "/del\x7f", BAD_NAME),
    ("RNTO", "/tab\tx", BAD_NAME),
    ("RNFR", "/c1\u009b", BAD_NAME),
    ("SIZE", "/bad\udcff", BAD_NAME),
    ("CWD", "/bad\udcff", BAD_NAME),
    ("MLSD", "/bad\udcff", BAD_NAME),
    ("STOU", "pre\x1b", BAD_NAME),
    ("PRET", "STOR /a\x1b", BAD_NAME),
    ("XCRC", "/a\x1b 0 10", BAD_NAME),
    ("SITE", "CHMOD 755 /a\x1b", BAD_NAME),
    ("SITE", "slaveselect up /a\x1b", BAD_NAME),
    # ... and in any other argument: 501
    ("USER", "adm\x1bin", BAD_ARG),
    ("PASS", "pw\udcff", BAD_ARG),
    ("OPTS", "MLST type\x1b;", BAD_ARG),
    ("SITE", "REMERGE s1\x07", BAD_ARG),
])
def test_refusal(cmd: str, arg: str, reply: str) -> None:
    assert guard.refusal(cmd, arg) == reply


def test_refusals_never_echo() -> None:
    for reply in (LB, BAD_NAME, BAD_ARG, NOT_UNDERSTOOD):
        assert reply.isascii() and reply.isprintable()


def test_every_pyftpdlib_path_command_is_a_path_command() -> None:
    with_path = {c for c, spec in FTPHandler.proto_cmds.items() if spec["perm"]}
    assert with_path <= guard.PATH_COMMANDS
    assert guard.PATH_COMMANDS <= set(PROTO_CMDS)


@pytest.mark.parametrize(("line", "cmd", "out"), [
    ("ABOR", "ABOR", ("ABOR", "ABOR")),
    ("\udcff\udcf4\udcff\udcf2ABOR", "\udcff\udcf4\udcff\udcf2ABOR", ("ABOR", "ABOR")),
    ("\x1b[31mSTAT /x", "\x1b[31mSTAT", ("STAT /x", "STAT")),
    ("XABOR", "XABOR", ("XABOR", "XABOR")),  # printable: pyftpdlib's own rule applies
    ("\x1bFOO", "\x1bFOO", ("\x1bFOO", "\x1bFOO")),
])
def test_without_telnet_prefix(line: str, cmd: str, out: tuple[str, str]) -> None:
    assert guard.without_telnet_prefix(line, cmd) == out


@pytest.mark.parametrize(("reply", "sent"), [
    ("213 99", "213 99"),
    ('257 "/grüße" directory created.', '257 "/grüße" directory created.'),
    ('257 "/x\n213 99" directory created.', '257 "/x\\n213 99" directory created.'),
    ("425 slave said: a\r\nb", "425 slave said: a\\r\\nb"),
    ("550 /bad\udcff\x1b[0m", "550 /bad\\udcff\\x1b[0m"),
])
def test_one_line(reply: str, sent: str) -> None:
    assert guard.one_line(reply) == sent


def test_shown_escapes_control_and_invalid_bytes() -> None:
    assert guard.shown("/a\x1b[0m\udcff\n") == "/a\\x1b[0m\\udcff\\n"
    assert guard.shown("/grüße") == "/grüße"


@pytest.mark.parametrize(("ip", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("not-an-ip", "not-an-ip"),
])
def test_source_key(ip: str, key: str) -> None:
    assert guard.source_key(ip) == key


# ---------------------------------------------------------------- the failed-login table

def run(table: guard.FailedLogins, events: list[tuple[float, str, str]]) -> list[object]:
    """Events (time, "fail"|"banned?", source) -> what each returned."""
    out: list[object] = []
    for now, what, source in events:
        out.append(table.failed(source, now) if what == "fail" else table.banned(source, now))
    return out


A, B = "192.0.2.1", "192.0.2.2"


@pytest.mark.parametrize(("events", "expected"), [
    # the 3rd failure within 10 s begins a ban (reported once), for 30 s
    ([(0, "fail", A), (1, "fail", A), (2, "banned?", A), (3, "fail", A), (4, "banned?", A),
      (5, "fail", A), (32.9, "banned?", A), (33, "banned?", A)],
     [False, False, False, True, True, False, True, False]),
    # failures spread wider than the window never ban
    ([(0, "fail", A), (6, "fail", A), (12, "fail", A), (18, "fail", A), (19, "banned?", A)],
     [False, False, False, False, False]),
    # sources count apart
    ([(0, "fail", A), (0, "fail", B), (1, "fail", A), (1, "fail", B), (2, "banned?", A)],
     [False, False, False, False, False]),
    ([(0, "fail", A), (1, "fail", A), (2, "fail", A), (3, "banned?", B)],
     [False, False, True, False]),
    # after the ban, a fresh count
    ([(0, "fail", A), (1, "fail", A), (2, "fail", A), (40, "fail", A), (41, "fail", A),
      (41, "banned?", A), (42, "fail", A), (42, "banned?", A)],
     [False, False, True, False, False, False, True, True]),
])
def test_failed_logins(events: list[tuple[float, str, str]], expected: list[object]) -> None:
    assert run(guard.FailedLogins(limit=3, window=10, ban=30), events) == expected


def test_limit_zero_never_bans() -> None:
    table = guard.FailedLogins(limit=0, window=10, ban=30)
    assert [table.failed(A, t) for t in range(20)] == [False] * 20
    assert not table.banned(A, 20) and table.sizes() == (0, 0)


def test_the_table_is_bounded_under_a_flood_of_addresses() -> None:
    table = guard.FailedLogins(limit=2, window=10, ban=30, capacity=100)
    for i in range(10_000):
        table.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.001 * i)
    assert table.sizes() == (100, 0)
    for i in range(10_000):  # each one banned
        source = f"10.0.{i >> 8 & 255}.{i & 255}"
        table.failed(source, 20 + 0.001 * i)
        table.failed(source, 20 + 0.001 * i)
    assert table.sizes()[1] == 100
    assert table.banned("10.0.39.15", 31)  # the latest bans are the ones kept
    assert not table.banned("10.0.39.15", 61)  # and they end
    assert table.sizes() == (0, 0)


def test_old_failures_are_pruned() -> None:
    table = guard.FailedLogins(limit=5, window=10, ban=30)
    table.failed(A, 0)
    table.failed(B, 5)
    assert table.sizes() == (2, 0)
    table.banned(A, 12)
    assert table.sizes() == (1, 0)
    table.banned(A, 16)
    assert table.sizes() == (0, 0)
