"""Placement, admin SITE commands and `ftpcluster stats` against real processes."""

from __future__ import annotations

import collections
import ftplib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, upload, wait_for

pytestmark = pytest.mark.integration

GB = 1024 ** 3


def add_master_toml(cluster: Cluster, text: str) -> None:
    """Append tables (e.g. [placement...]) to the master's config before it starts."""
    path = cluster.roles["master"].config
    path.write_text(path.read_text() + "\n" + text)


def stats_cmd(cluster: Cluster, *args: str) -> list[str]:
    return [sys.executable, "-m", "common.cli", "stats",
            "--endpoint", cluster.plan.ports.endpoint("stats_out"), *args]


def test_30_uploads_in_a_row_land_on_all_three_slaves(cluster_factory) -> None:
    c = cluster_factory(slaves=3).start()
    with c.ftp() as ftp:
        for i in range(30):
            upload(ftp, f"/f{i:02d}", f"file {i}".encode(), ("pret", "active", "relay")[i % 3])
    counts = collections.Counter(holder for i in range(30) for holder in c.holders(f"/f{i:02d}"))
    assert set(counts) == set(c.slave_names), counts
    assert sum(counts.values()) == 30
    assert min(counts.values()) >= 5, counts  # round-robin among equal slaves, give or take stats


def test_min_free_steers_uploads_and_slaveselect_explains(cluster_factory) -> None:
    c = cluster_factory(slaves=3)
    # slave1's minimum is far beyond any disk: as if its disk were full.
    add_master_toml(c, '[placement.upload.min_free_by_slave]\nslave1 = 1000000000000000000\n\n'
                       '[[placement.upload.rules]]\nglob = "/archive/*"\nallow = ["slave3"]\n')
    c.start()
    with c.ftp() as ftp:
        ftp.mkd("/archive")
        for i in range(12):
            upload(ftp, f"/g{i}", b"x" * 100, "pret")
        for i in range(12):
            upload(ftp, f"/archive/a{i}", b"y" * 100, "active")
        reply = ftp.sendcmd("SITE SLAVESELECT up /archive/new")
        down = ftp.sendcmd("SITE SLAVESELECT down /g0")
        with pytest.raises(ftplib.error_perm, match="^501"):
            ftp.sendcmd("SITE SLAVESELECT sideways /x")
    placed = collections.Counter(h for i in range(12) for h in c.holders(f"/g{i}"))
    assert set(placed) == {"slave2", "slave3"}, placed
    assert all(c.holders(f"/archive/a{i}") == ["slave3"] for i in range(12))
    assert " chosen: slave3" in reply
    assert " slave1 excluded: free " in reply and "below minimum 1000000000000000000" in reply
    assert " slave2 excluded: rule /archive/* allows only slave3" in reply
    assert " slave3 score=" in reply
    assert f" chosen: {c.holders('/g0')[0]}" in down


def test_site_who_shows_a_running_transfer(cluster_factory) -> None:
    c = cluster_factory(slaves=1).start()
    with c.ftp() as ftp, c.ftp() as admin:
        ftp.set_pasv(True)
        conn = ftp.transfercmd("STOR /slow.bin")  # relay: the master counts the bytes
        try:
            conn.sendall(b"z" * 70000)

            def shows() -> str | None:
                text = admin.sendcmd("SITE WHO")
                return text if "STOR /slow.bin on slave1" in text else None
            who = wait_for(shows, 10, "SITE WHO to show the upload")
            assert "admin 127.0.0.1:" in str(who)
        finally:
            conn.close()
        ftp.voidresp()
        line = wait_for(lambda: next((x for x in admin.sendcmd("SITE SLAVES").splitlines()
                                      if " up=" in x), None), 10, "stats in SITE SLAVES")
        assert str(line).startswith(" slave1 online free=") and " stats=" in str(line)


def test_stats_once_json_shows_every_slave_with_disk_figures(cluster_factory) -> None:
    c = cluster_factory(slaves=3).start()
    out = subprocess.run(stats_cmd(c, "--once", "--json"), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert [s["name"] for s in snap["slaves"]] == c.slave_names
    for s in snap["slaves"]:
        assert s["state"] == "online"
        assert s["disk_total"] > 0 and 0 < s["disk_free"] <= s["disk_total"]
    assert snap["totals"]["disk_total"] == sum(s["disk_total"] for s in snap["slaves"])
    table = subprocess.run(stats_cmd(c, "--once"), capture_output=True, text=True, timeout=30,
                           env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert table.returncode == 0 and all(name in table.stdout for name in c.slave_names), table.stderr


def test_killed_slave_shows_stale_then_offline(cluster_factory) -> None:
    c = cluster_factory(slaves=2).start()
    proc = subprocess.Popen(stats_cmd(c, "--json", "--offline-after", "9"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    events: list[dict] = []
    reader = threading.Thread(target=lambda: events.extend(json.loads(line) for line in proc.stdout),
                              daemon=True)
    reader.start()
    try:
        def state_of(name: str, state: str) -> bool:
            return any(e.get("event") == "state" and e["name"] == name and e["state"] == state
                       for e in list(events))
        wait_for(lambda: state_of("slave1", "online") and state_of("slave2", "online"), 15, "both online")
        assert any(e["event"] == "stats" and e["slave"]["disk_total"] > 0 for e in list(events))
        c.kill("slave1")
        killed_at = time.monotonic()
        wait_for(lambda: state_of("slave1", "stale"), 10, "slave1 stale")
        assert time.monotonic() - killed_at <= 6.5
        wait_for(lambda: state_of("slave1", "offline"), 15, "slave1 offline")
        assert not state_of("slave2", "stale")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=5)
        err = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 0, err


def test_stats_prometheus_endpoint(cluster_factory) -> None:
    import urllib.request

    from common.launcher import free_ports

    c = cluster_factory(slaves=1).start()
    port = free_ports(1)[0]
    proc = subprocess.Popen(stats_cmd(c, "--prometheus", f"127.0.0.1:{port}"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        def scrape() -> str | None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return None
            return body if 'ftpcluster_slave_disk_free_bytes{slave="slave1"}' in body else None
        body = str(wait_for(scrape, 15, "metrics for slave1"))
        assert 'ftpcluster_slave_up{slave="slave1"} 1.0' in body
        assert "ftpcluster_cluster_disk_total " in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        err = proc.stderr.read() if proc.stderr else ""
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0, err


def test_stats_endpoint_from_config(tmp_path: Path, cluster_factory) -> None:
    from common.statstool import endpoint_from_config

    c = cluster_factory(slaves=1)
    assert endpoint_from_config(str(c.roles["broker"].config)) == c.plan.ports.endpoint("stats_out")
    assert endpoint_from_config(str(c.roles["master"].config)) == c.plan.ports.endpoint("stats_out")
    bad = tmp_path / "x.toml"
    bad.write_text("[slave]\nname='a'\nroot='/tmp'\n")
    out = subprocess.run([sys.executable, "-m", "common.cli", "stats", "--config", str(bad), "--once"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "neither a broker nor a master" in out.stderr


def test_allo_size_filters_slaves_without_room(cluster_factory) -> None:
    c = cluster_factory(slaves=2).start()
    with c.ftp() as ftp:
        assert ftp.sendcmd("ALLO 1000000000000000000").startswith("200")
        with pytest.raises(ftplib.error_temp, match="^452"):
            upload(ftp, "/huge.bin", b"x", "active")
        with pytest.raises(ftplib.error_perm, match="^501"):
            ftp.sendcmd("ALLO lots")
        ftp.sendcmd("ALLO 3")  # the refused upload did not use up the ALLO: replace it
        assert upload(ftp, "/small.bin", b"abc", "pret").startswith("226")
        assert upload(ftp, "/next.bin", b"def", "pret").startswith("226")  # ALLO applied once
