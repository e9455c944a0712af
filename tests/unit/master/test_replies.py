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
