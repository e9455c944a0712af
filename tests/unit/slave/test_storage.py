"""Storage: path mapping refuses escapes; tree operations; inventory order and content."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from slave.storage import TEMP_PREFIX, PathRefused, Storage


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def storage(root: Path) -> Storage:
    return Storage(root)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root holding a file nothing may touch."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret").write_bytes(b"keep me")
    return out


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- path mapping

def test_real_maps_under_root(storage: Storage, root: Path) -> None:
    real_root = Path(os.path.realpath(root))
    assert storage.real("/a/b.txt") == real_root / "a" / "b.txt"
    assert storage.real("/a//./b.txt") == real_root / "a" / "b.txt"
    assert storage.real("/") == real_root


@pytest.mark.parametrize("vpath", [
    "/../x", "/a/../../x", "/a/..", "..", "a/b", "", "/a\x00b", "\x00", "//..//etc/passwd",
    f"/{TEMP_PREFIX}abc.file",
])
def test_real_refuses_escapes(storage: Storage, vpath: str) -> None:
    with pytest.raises(PathRefused) as info:
        storage.real(vpath)
    assert info.value.errno == errno.EACCES


def test_absolute_looking_path_stays_inside(storage: Storage, root: Path) -> None:
    # "//etc/passwd" is just /etc/passwd under the root, never the real /etc/passwd
    assert storage.real("//etc/passwd") == Path(os.path.realpath(root)) / "etc" / "passwd"


def test_symlink_to_outside_refused(storage: Storage, root: Path, outside: Path) -> None:
    os.symlink(outside, root / "link")
    with pytest.raises(PathRefused):
        storage.real("/link/secret")
    with pytest.raises(PathRefused):
        storage.delete("/link/secret")
    with pytest.raises(PathRefused):
        storage.mkdir("/link/new")
    with pytest.raises(PathRefused):
        storage.rename("/link/secret", "/stolen")
    # deleting the link itself removes the link, never its target
    storage.delete("/link")
    assert not (root / "link").exists()
    assert (outside / "secret").read_bytes() == b"keep me"


def test_symlink_inside_root_allowed(storage: Storage, root: Path) -> None:
    write(root / "real" / "f")
    os.symlink(root / "real", root / "alias")
    assert storage.real("/alias/f") == Path(os.path.realpath(root)) / "real" / "f"


def test_root_itself_protected(storage: Storage, root: Path) -> None:
    write(root / "f")
    with pytest.raises(PathRefused):
        storage.delete("/")
    with pytest.raises(PathRefused):
        storage.rename("/", "/x")
    assert (root / "f").exists()


# ---------------------------------------------------------------- tree operations

def test_delete_file_tree_and_missing(storage: Storage, root: Path, outside: Path) -> None:
    write(root / "f")
    write(root / "d" / "e" / "g")
    os.symlink(outside, root / "d" / "e" / "to_outside")
    storage.delete("/f")
    storage.delete("/d")
    storage.delete("/missing")
    storage.delete("/missing/deeper")
    assert sorted(os.listdir(root)) == []
    assert (outside / "secret").read_bytes() == b"keep me"


def test_rename_creates_parents_and_replaces_files(storage: Storage, root: Path) -> None:
    write(root / "d" / "f", b"tree")
    storage.rename("/d", "/x/y/d2")
    assert (root / "x" / "y" / "d2" / "f").read_bytes() == b"tree"
    assert not (root / "d").exists()
    write(root / "a", b"new")
    write(root / "b", b"old")
    storage.rename("/a", "/b")
    assert (root / "b").read_bytes() == b"new" and not (root / "a").exists()
    storage.rename("/nothing", "/elsewhere")  # missing src is success
    assert not (root / "elsewhere").exists()


def test_rename_onto_directory_or_into_itself_fails(storage: Storage, root: Path) -> None:
    write(root / "f")
    (root / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        storage.rename("/f", "/dir")
    with pytest.raises(OSError):
        storage.rename("/dir", "/dir/sub/dir")
    assert (root / "f").exists() and (root / "dir").is_dir()


def test_mkdir_and_rmdir(storage: Storage, root: Path) -> None:
    storage.mkdir("/a/b/c")
    storage.mkdir("/a/b/c")  # existing is fine
    assert (root / "a" / "b" / "c").is_dir()
    write(root / "file")
    with pytest.raises(NotADirectoryError):
        storage.mkdir("/file/sub")
    with pytest.raises(OSError) as info:
        storage.rmdir("/a")
    assert info.value.errno == errno.ENOTEMPTY
    storage.rmdir("/a/b/c")
    storage.rmdir("/a/b/c")  # missing is fine
    assert not (root / "a" / "b" / "c").exists()


def test_clean_temp(storage: Storage, root: Path) -> None:
    write(root / "d" / f"{TEMP_PREFIX}123.f")
    write(root / "d" / "keep")
    assert storage.clean_temp() == 1
    assert os.listdir(root / "d") == ["keep"]


# ---------------------------------------------------------------- inventory

def test_inventory_order_and_content(storage: Storage, root: Path, outside: Path) -> None:
    write(root / "b" / "z.txt", b"12345")
    write(root / "b" / "c" / "deep.bin", b"1")
    write(root / "a.txt", b"abc")
    (root / "empty").mkdir()
    write(root / "b" / f"{TEMP_PREFIX}x.part")  # an upload in progress
    os.symlink(outside, root / "link_dir")
    os.symlink(outside / "secret", root / "b" / "link_file")
    os.mkfifo(root / "fifo")

    entries = list(storage.inventory())
    paths = [e.path for e in entries]
    assert paths == ["/a.txt", "/b", "/b/c", "/b/c/deep.bin", "/b/z.txt", "/empty"]
    by_path = {e.path: e for e in entries}
    assert by_path["/b/z.txt"].size == 5 and not by_path["/b/z.txt"].is_dir
    assert by_path["/b"].is_dir and by_path["/empty"].is_dir
    st = os.stat(root / "a.txt")
    assert by_path["/a.txt"].mtime_ms == st.st_mtime_ns // 1_000_000


def test_inventory_directories_before_contents(storage: Storage, root: Path) -> None:
    for i in range(30):
        write(root / f"d{i % 3}" / f"s{i % 5}" / f"f{i}")
    seen: set[str] = set()
    files = 0
    for entry in storage.inventory():
        parent = entry.path.rsplit("/", 1)[0]
        assert parent == "" or parent in seen, entry.path
        seen.add(entry.path)
        files += not entry.is_dir
    assert files == 30


def test_inventory_empty_root(storage: Storage) -> None:
    assert list(storage.inventory()) == []


def test_rename_without_replace_refuses_an_existing_file(storage: Storage, root: Path) -> None:
    (root / "a").write_bytes(b"a")
    (root / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        storage.rename("/a", "/b", replace=False)
    assert (root / "b").read_bytes() == b"b"
    storage.rename("/a", "/c", replace=False)
    assert (root / "c").read_bytes() == b"a"


def test_summaries_follow_every_change(storage: Storage, root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"1")
    (root / f"{TEMP_PREFIX}x.f").write_bytes(b"partial")  # never counted
    first = {s.path: s for s in storage.summaries()}
    assert list(first) == ["/", "/d", "/d/e"]  # pre-order, root first
    assert (first["/d"].files, first["/d"].dirs, first["/"].files) == (1, 1, 0)
    assert all(0 <= s.digest < 2**63 for s in first.values())
    assert {s.path: s for s in storage.summaries()} == first  # stable
    os.utime(root / "d" / "f", ns=(1, 1))
    second = {s.path: s.digest for s in storage.summaries()}
    assert second["/d"] != first["/d"].digest and second["/"] == first["/"].digest
    assert second["/d/e"] == first["/d/e"].digest
    (root / "d" / "e" / "g").write_bytes(b"")
    assert {s.path: s.digest for s in storage.summaries()}["/d/e"] != first["/d/e"].digest


def test_list_dirs_lists_direct_entries_only(storage: Storage, root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "deep").write_bytes(b"")
    (root / "d" / "f").write_bytes(b"12")
    (root / "top").write_bytes(b"")
    got = [(e.path, e.is_dir, e.size) for e in storage.list_dirs(["/d", "/missing", "/"])]
    assert got == [("/d/e", True, 0), ("/d/f", False, 2), ("/d", True, 0), ("/top", False, 0)]
