"""master.mlsx: RFC 3659 facts from metadata entries, as tables."""

from __future__ import annotations

import pytest

from master import mlsx
from master.vpath import Entry

FILE = Entry("/d/a.txt", False, 12, 1_700_000_000.0, "demo", "ftpcluster", None, frozenset({"s1"}))
DIR = Entry("/d", True, 0, 1_700_000_000.0, "demo", "ftpcluster", None, frozenset())
RFC3659_FILE_LETTERS = set("adfrw")
RFC3659_DIR_LETTERS = set("cdeflmp")


@pytest.mark.parametrize(("user_perms", "is_dir", "fact"), [
    ("elradfmwMT", False, "adfrw"),
    ("elradfmwMT", True, "cdeflmp"),
    ("elr", False, "r"),
    ("elr", True, "el"),
    ("elrw", True, "cel"),
    ("elrm", True, "elm"),
    ("MT", False, ""),
    ("MT", True, ""),
    ("", False, ""),
])
def test_perm_fact(user_perms: str, is_dir: bool, fact: str) -> None:
    got = mlsx.perm_fact(user_perms, is_dir)
    assert got == fact
    assert set(got) <= (RFC3659_DIR_LETTERS if is_dir else RFC3659_FILE_LETTERS)


@pytest.mark.parametrize(("entry", "facts", "line"), [
    (FILE, ["type", "size", "unix.mode"], "size=12;type=file;unix.mode=0644; a.txt"),
    (DIR, ["type", "size", "unix.mode"], "size=0;type=dir;unix.mode=0755; d"),
    (FILE, ["unix.ownername", "unix.groupname"],
     "unix.groupname=ftpcluster;unix.ownername=demo; a.txt"),
    (FILE, ["unix.owner", "unix.group"], "unix.group=ftpcluster;unix.owner=demo; a.txt"),
    (FILE, ["modify"], "modify=20231114221320; a.txt"),
    (FILE, [], " a.txt"),
    (FILE, ["unix.uid", "unix.gid", "create"], " a.txt"),  # never invented
    (Entry("/x", False, 1, 0.0, "bad;name", "a b", None, frozenset()),
     ["unix.owner", "unix.ownername", "unix.group", "unix.groupname", "size"], "size=1; x"),
])
def test_facts_line(entry: Entry, facts: list[str], line: str) -> None:
    assert mlsx.facts_line(entry, entry.name, "elradfmwMT", facts) == line


def test_type_override_and_unique_is_stable() -> None:
    assert mlsx.facts_line(DIR, ".", "el", ["type"], kind="cdir") == "type=cdir; ."
    one = mlsx.facts_line(FILE, "a.txt", "", ["unique"])
    assert one == mlsx.facts_line(FILE, "a.txt", "", ["unique"])
    assert one != mlsx.facts_line(DIR, "d", "", ["unique"])


def test_a_time_out_of_range_leaves_modify_out() -> None:
    ancient = Entry("/old", False, 1, -1e20, "demo", "g", None, frozenset())
    assert mlsx.facts_line(ancient, "old", "", ["modify", "size"]) == "size=1; old"
