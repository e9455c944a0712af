"""Durable metadata with real processes: a SIGKILLed master keeps every acknowledged change,
deletes and renames done while a slave is down hold when it returns, conflicting copies are
both kept, an unchanged slave re-merges partially, SITE REMERGE forces a full merge."""

from __future__ import annotations

import ftplib
import signal

import pytest

from common import launcher
from tests.integration.conftest import Cluster, download, upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def names(cluster: Cluster, path: str = "/") -> set[str]:
    with cluster.ftp() as ftp:
        return {n.rsplit("/", 1)[-1] for n in ftp.nlst(path)}


def owners(cluster: Cluster, path: str = "/") -> dict[str, str]:
    """name -> owner, from LIST."""
    lines: list[str] = []
    with cluster.ftp() as ftp:
        ftp.retrlines(f"LIST {path}", lines.append)
    return {line.split(None, 8)[8]: line.split()[2] for line in lines}


def online_now(cluster: Cluster) -> list[str]:
    """SITE SLAVES' online slaves (unlike Cluster.online, fine while a role is down)."""
    with cluster.ftp() as ftp:
        return launcher.online_slaves(ftp.sendcmd("SITE SLAVES"))


def kill_and_restart_master(cluster: Cluster) -> None:
    assert cluster.kill("master", signal.SIGKILL) == -signal.SIGKILL
    cluster.restart("master")
    cluster.wait_ready()


def master_log(cluster: Cluster) -> str:
    return cluster.roles["master"].log.read_text(errors="replace")


def test_sigkill_right_after_226_250_257_loses_nothing(cluster_factory):
    cluster = cluster_factory(slaves=1).start()
    with cluster.ftp() as ftp:
        assert ftp.mkd("/d") == "/d"  # 257
        assert upload(ftp, "/d/a.bin", b"a" * 1000, "pret").startswith("226")
    kill_and_restart_master(cluster)
    assert names(cluster, "/d") == {"a.bin"}
    assert owners(cluster, "/d")["a.bin"] == "admin"  # the record survived, not a re-adoption
    with cluster.ftp() as ftp:
        assert ftp.size("/d/a.bin") == 1000
        upload(ftp, "/d/b.bin", b"b" * 10, "relay")
        upload(ftp, "/d/c.bin", b"c" * 20, "active")
        assert ftp.rename("/d/b.bin", "/d/b2.bin").startswith("250")
        assert ftp.delete("/d/c.bin").startswith("250")
    kill_and_restart_master(cluster)
    assert names(cluster, "/d") == {"a.bin", "b2.bin"}
    assert owners(cluster, "/d")["b2.bin"] == "admin"
    with cluster.ftp() as ftp:
        assert download(ftp, "/d/b2.bin", "pret") == b"b" * 10
    assert not (cluster.slave_root("slave1") / "d" / "c.bin").exists()


def test_deletes_and_renames_while_the_slave_is_down_hold(cluster_factory):
    cluster = cluster_factory(slaves=1).start()
    with cluster.ftp() as ftp:
        ftp.mkd("/dir")
        for name in ("gone.bin", "old.bin", "dir/inner.bin", "kept.bin"):
            upload(ftp, f"/{name}", name.encode(), "pret")
    root = cluster.slave_root("slave1")
    cluster.kill("slave1", signal.SIGKILL)
    wait_for(lambda: "slave1" not in online_now(cluster), 15, "slave1 offline")
    with cluster.ftp() as ftp:
        assert ftp.delete("/gone.bin").startswith("250")
        assert ftp.rename("/old.bin", "/new.bin").startswith("250")
        assert ftp.rename("/dir", "/dir2").startswith("250")
    # The slave's disk has not changed yet; a master crash must not lose the queue either.
    assert (root / "gone.bin").exists() and (root / "old.bin").exists()
    assert cluster.kill("master", signal.SIGKILL) == -signal.SIGKILL
    cluster.restart("master")
    cluster.restart("slave1")
    cluster.wait_ready()
    assert names(cluster) == {"new.bin", "dir2", "kept.bin"}
    assert names(cluster, "/dir2") == {"inner.bin"}
    assert not (root / "gone.bin").exists() and not (root / "old.bin").exists()
    assert (root / "new.bin").read_bytes() == b"old.bin"
    assert (root / "dir2" / "inner.bin").exists() and not (root / "dir").exists()
    with cluster.ftp() as ftp:
        assert download(ftp, "/new.bin", "pret") == b"old.bin"
        assert download(ftp, "/dir2/inner.bin", "relay") == b"dir/inner.bin"


def test_same_path_different_sizes_keeps_both_copies(cluster_factory):
    cluster = cluster_factory(slaves=2)
    (cluster.slave_root("slave1") / "same.bin").write_bytes(b"1" * 10)
    (cluster.slave_root("slave2") / "same.bin").write_bytes(b"2" * 20)
    cluster.start()
    assert set(cluster.online()) == {"slave1", "slave2"}
    listed = names(cluster)
    assert len(listed) == 2 and "same.bin" in listed, listed
    [alias] = listed - {"same.bin"}
    newcomer = alias.removeprefix("same.bin.conflict-")
    assert newcomer in ("slave1", "slave2"), alias
    first = "slave2" if newcomer == "slave1" else "slave1"
    assert (cluster.slave_root(newcomer) / alias).exists()
    assert not (cluster.slave_root(newcomer) / "same.bin").exists()
    with cluster.ftp() as ftp:
        got = {download(ftp, "/same.bin", "pret"), download(ftp, f"/{alias}", "pret")}
    assert got == {b"1" * 10, b"2" * 20}
    assert (cluster.slave_root(first) / "same.bin").exists()
    assert "CONFLICT /same.bin" in master_log(cluster)


def test_restarted_slave_merges_partially_and_remerge_is_full(cluster_factory):
    cluster = cluster_factory(slaves=1)
    root = cluster.slave_root("slave1")
    for d in range(5):
        (root / f"d{d}").mkdir()
        for f in range(20):
            (root / f"d{d}" / f"f{f}").write_bytes(b"x" * f)
    cluster.start()
    assert len(names(cluster, "/d3")) == 20
    cluster.kill("slave1", signal.SIGKILL)
    wait_for(lambda: "slave1" not in online_now(cluster), 15, "slave1 offline")
    (root / "d1" / "f0").unlink()  # changed while the slave was down
    (root / "d2" / "extra").write_bytes(b"e")
    cluster.restart("slave1")
    cluster.wait_online(["slave1"], 30)
    assert "f0" not in names(cluster, "/d1") and "extra" in names(cluster, "/d2")
    assert len(names(cluster, "/d3")) == 20
    assert "partial merge, 2 directories listed" in master_log(cluster)
    # A file appearing on an online slave behind the master's back: only a merge sees it.
    (root / "d4" / "sneaky").write_bytes(b"s")
    assert "sneaky" not in names(cluster, "/d4")
    with cluster.ftp() as ftp:
        assert ftp.sendcmd("SITE REMERGE slave1").startswith("200")
        with pytest.raises(ftplib.error_perm, match="550"):
            ftp.sendcmd("SITE REMERGE nosuch")
    wait_for(lambda: "sneaky" in names(cluster, "/d4"), 20, "the remerge to adopt /d4/sneaky")
    wait_for(lambda: "full merge, 6 directories listed" in master_log(cluster), 20, "full merge log")
    assert set(cluster.online()) == {"slave1"}
