"""Placement, admin SITE commands and `ftpcluster stats` against real processes."""

from __future__ import annotations

import collections
import ftplib
import json
import os
import signal
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
    return [sys.executable, "-m", "common.cli", "stats", *cluster.stats_args(), *args]


def slave_fields(cluster: Cluster) -> dict[str, dict[str, str]]:
    """SITE SLAVES as {name: {"state": ..., "free": ..., ...}} (the key=value fields of each line)."""
    with cluster.ftp() as ftp:
        reply = ftp.sendcmd("SITE SLAVES")
    out = {}
    for line in reply.splitlines():
        if line.startswith(" "):
            words = line.split()
            out[words[0]] = {"state": words[1], **dict(w.split("=", 1) for w in words[2:] if "=" in w)}
    return out


def test_30_uploads_in_a_row_land_on_all_three_slaves(cluster_factory) -> None:
    """Sequential uploads spread because the master counts the transfers it started since the
    slaves' last stats (half a point each), not only by round-robin among tied slaves.

    Deterministic set-up: slave1 leads by 0.3 points (a prefer rule), far beyond the 0.01 tie,
    so without that count it would take all 30. Every other term is switched off (free space,
    load and bandwidth vary with the machine), and the slaves publish stats once an hour, so
    no stats arrive to reset the count mid-run (require_fresh_stats off: the stats age).
    Then the scores are 1.3 - k1/2 and 1.0 - k/2: exactly 10 uploads each.
    """
    c = cluster_factory(slaves=3, slave_extra={"stats_interval_ms": 3_600_000})
    add_master_toml(c, '[placement.upload]\nrequire_fresh_stats = false\n\n'
                       '[placement.upload.weights]\nfree_space = 0.0\nbandwidth = 0.0\nload = 0.0\n\n'
                       '[[placement.upload.rules]]\nglob = "/*"\nprefer = ["slave1"]\nprefer_points = 0.3\n')
    c.start()
    before = {name: f.get("stats") for name, f in slave_fields(c).items()}
    began = time.monotonic()
    with c.ftp() as ftp:
        first = ftp.sendcmd("SITE SLAVESELECT up /f00")
        assert " chosen: slave1" in first and " slave1 score=0.30" in first, first
        for i in range(30):
            upload(ftp, f"/f{i:02d}", f"file {i}".encode(), ("pret", "active", "relay")[i % 3])
    elapsed = time.monotonic() - began
    counts = collections.Counter(holder for i in range(30) for holder in c.holders(f"/f{i:02d}"))
    # No stats reset the count mid-run (else the figures below are not exact): every slave
    # still shows no stats, or stats older than the run.
    after = slave_fields(c)
    for name, stats_age in before.items():
        now_age = after[name].get("stats")
        assert now_age == "none" or float(now_age.rstrip("s")) >= elapsed - 1, (name, stats_age, now_age)
    assert counts == {"slave1": 10, "slave2": 10, "slave3": 10}, counts


def test_min_free_steers_uploads_and_slaveselect_explains(cluster_factory) -> None:
    c = cluster_factory(slaves=3)
    # slave1's minimum is far beyond any disk: as if its disk were full (the exact filter text
    # and the path rules; test_upload_avoids_a_slave_whose_disk_fills_past_its_minimum below
    # fills a disk for real).
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


MIB = 1024 ** 2


def test_upload_avoids_a_slave_whose_disk_fills_past_its_minimum(cluster_factory) -> None:
    """A real disk crossing its minimum (stats), not a minimum beyond any disk.

    The slaves share one filesystem here, so free space moves for all of them: only slave1
    gets a minimum close to the current free space (the others keep the default 64 MiB, far
    below it). Other processes on the machine may write or delete files meanwhile, so the
    margins are wide: the minimum is 32 MiB below the free space read from SITE SLAVES and
    128 MiB are written into slave1's root, and the crossing is checked (SLAVESELECT shows
    slave1 excluded for free space) before and after the uploads.
    """
    c = cluster_factory(slaves=3).start()
    master_log = c.roles["master"].log

    def fields() -> dict[str, dict[str, str]] | None:
        f = slave_fields(c)
        return f if all("up" in f[n] for n in c.slave_names) else None  # stats arrived
    free = int(wait_for(fields, 15, "stats from every slave")["slave1"]["free"])  # type: ignore[index]
    minimum = free - 32 * MIB
    add_master_toml(c, f"[placement.upload.min_free_by_slave]\nslave1 = {minimum}\n")
    reloads = master_log.read_text().count("reloaded ")
    c.roles["master"].signal(signal.SIGHUP)
    wait_for(lambda: master_log.read_text().count("reloaded ") > reloads, 10, "the master's reload")
    with c.ftp() as ftp:
        before = ftp.sendcmd("SITE SLAVESELECT up /h")
    assert " slave1 score=" in before, before  # not below its minimum yet

    filler = c.slave_root("slave1") / "filler.bin"
    with open(filler, "wb") as f:
        block = os.urandom(MIB)
        for _ in range(128):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())

    def slave1_free() -> int | None:
        value = int(slave_fields(c)["slave1"]["free"])
        return value if value < minimum else None
    wait_for(slave1_free, 15, f"slave1's free space (stats) below {minimum}", interval=0.2)

    reason = " slave1 excluded: free "
    with c.ftp() as ftp:
        select = ftp.sendcmd("SITE SLAVESELECT up /h")
        assert reason in select and f"below minimum {minimum}" in select, select
        assert " slave2 score=" in select and " slave3 score=" in select, select
        for i in range(12):
            upload(ftp, f"/h{i}", b"x" * 100, ("pret", "active", "relay")[i % 3])
        after = ftp.sendcmd("SITE SLAVESELECT up /h")
    assert reason in after, after  # still past the minimum: the uploads above had to avoid it
    placed = collections.Counter(h for i in range(12) for h in c.holders(f"/h{i}"))
    assert set(placed) == {"slave2", "slave3"}, placed
    assert sum(placed.values()) == 12


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
        # Stale 5 s after the last stats arrived (before the kill; they come every 2 s, so it is
        # never later than 5 s after it), plus the tool's 0.5 s tick and our 0.1 s poll.
        assert time.monotonic() - killed_at <= 6.0
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


def test_stats_once_without_stats_exits_1_with_one_line(tmp_path: Path) -> None:
    from common.launcher import free_ports, port_in_use
    from tests.integration.conftest import cli_cmd, cli_env

    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"  # nobody publishes there
    t0 = time.monotonic()
    out = subprocess.run(cli_cmd("stats", "--once", "--json", "--wait", "0.5", "--endpoint", endpoint),
                         capture_output=True, text=True, timeout=30, env=cli_env())
    assert out.returncode == 1 and out.stdout == "" and time.monotonic() - t0 < 20
    assert out.stderr.count("\n") == 1 and f"no stats arrived from {endpoint} (--endpoint) within 0.5 s" in out.stderr
    # No options and no ./var here: the default endpoint, and the line says where it looked
    # (unless something on this machine serves the default endpoint).
    if not port_in_use("127.0.0.1", 5553):
        out = subprocess.run(cli_cmd("stats", "--once", "--wait", "0.2"), capture_output=True, text=True,
                             timeout=30, cwd=tmp_path, env=cli_env())
        assert out.returncode == 1 and out.stdout == "" and out.stderr.count("\n") == 1
        assert "tcp://127.0.0.1:5553 (the default endpoint; no var/conf/broker.toml)" in out.stderr
    # --data that is not a cluster's: one line naming the file it looked for.
    out = subprocess.run(cli_cmd("stats", "--once", "--data", str(tmp_path / "none")), capture_output=True,
                         text=True, timeout=30, env=cli_env())
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert str(tmp_path / "none" / "conf" / "broker.toml") in out.stderr


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
