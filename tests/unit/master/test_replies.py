"""master.replies: the refusal for each kind of path a command cannot use, as a table."""

from __future__ import annotations

import pytest

from master import replies
from master.vpath import Entry

FILE = Entry("/f", False, 1, 0.0, "u", "g", None, frozenset({"s1"}))
DIR = Entry("/d", True, 0, 0.0, "u", "g", None, frozenset())


@pytest.mark.parametrize(("entry", "reply"), [
    (None, "550 No such file or directory."),
    (DIR, "550 Is a directory, not a file."),
])
def test_not_a_file(entry: Entry | None, reply: str) -> None:
    assert replies.not_a_file(entry) == reply


@pytest.mark.parametrize(("entry", "command", "code"), [
    (None, "MLSD", "550"),   # RFC 3659 7.2.1: a name that does not exist
    (FILE, "MLSD", "501"),   # RFC 3659 7.2.1: exists, but is not a directory
    (None, "CWD", "550"),
    (FILE, "CWD", "550"),
])
def test_not_a_directory(entry: Entry | None, command: str, code: str) -> None:
    assert replies.not_a_directory(entry, command).startswith(code + " ")


@pytest.mark.parametrize(("reply", "code", "text"), [
    (replies.foreign_data_connection("10.0.0.9", 2000), "425", "10.0.0.9:2000"),
    (replies.slave_listen_failed("EADDRINUSE"), "425", "EADDRINUSE"),
    (replies.route_rule_refusal("forbidden by rule /x/*"), "425", "/x/*"),
    (replies.relay_refused("RETR"), "425", "send PRET RETR <path>"),
    (replies.too_many_relays("STOR"), "425", "too many relayed transfers"),
    (replies.type_a_refusal("SIZE", "a"), "550", "ASCII mode"),
    (replies.type_a_refusal("REST", "a"), "501", "ASCII mode"),
    (replies.type_a_refusal("XCRC", "a"), "550", "ASCII mode"),
])
def test_composed_replies(reply: str, code: str, text: str) -> None:
    assert reply.startswith(code + " ") and text in reply and "\r" not in reply and "\n" not in reply


def test_type_i_refuses_nothing() -> None:
    assert [replies.type_a_refusal(c, "i") for c in ("SIZE", "REST", "XCRC", "RETR")] == ["", "", "", ""]
    assert replies.type_a_refusal("RETR", "a") == ""
