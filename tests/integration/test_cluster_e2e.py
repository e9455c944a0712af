"""The whole cluster end to end: real broker, master and slave processes, real FTP clients.

The tests at the top share one module-scoped cluster (2 slaves) and do not disturb it; the
kill/restart tests and the no-slave test build their own clusters with `cluster_factory`.
"""

from __future__ import annotations

import ftplib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import (
    ADMIN_PASSWORD, ADMIN_USER, Cluster, cli_cmd, cli_env, download, open_data, random_file,
    sha256_file, slave_receiving, upload, wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BIG = 64 * 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 64 MiB random file and its sha256."""
    path = random_file(tmp_path_factory.mktemp("big") / "big.bin", BIG)
    return path, sha256_file(path)


def assert_on_one_slave(cluster: Cluster, vpath: str, sha: str) -> None:
    holders = cluster.holders(vpath)
    assert len(holders) == 1, f"{vpath} is on {holders}, expected exactly one slave"
    assert sha256_file(cluster.slave_root(holders[0]) / vpath.lstrip("/")) == sha


def assert_not_under_master(cluster: Cluster, min_size: int) -> None:
    """No file of `min_size` bytes or more anywhere under the master's state dir."""
    if not cluster.master_state_dir.exists():
        return
    # The metadata database (and its write-ahead log) is expected there: it holds no file data.
    big = [p for p in cluster.master_state_dir.rglob("*") if p.is_file() and p.stat().st_size >= min_size
           and not p.name.startswith("vfs.sqlite3")]
    assert big == [], f"file data under the master's state dir: {big}"


# ---------------------------------------------------------------- 64 MiB round trips

@pytest.mark.parametrize("mode", ["active", "pret", "relay"])
def test_64mib_round_trip_with_ftplib(cluster, big_file, tmp_path, mode):
    source, sha = big_file
    name = f"/ftplib-{mode}.bin"
    before = cluster.relayed_bytes()
    with cluster.ftp() as ftp:
        assert upload(ftp, name, source, mode).startswith("226")
        assert ftp.size(name) == BIG
        assert download(ftp, name, mode, sink=tmp_path / "back.bin") == (BIG, sha)
    relayed = cluster.relayed_bytes() - before
    if mode == "relay":
        assert relayed >= 2 * BIG, "relay mode must count the bytes it carried"
    else:
        assert relayed == 0, f"{mode} mode must not go through the master"
    assert_on_one_slave(cluster, name, sha)
    assert_not_under_master(cluster, BIG // 2)


def test_64mib_round_trip_with_curl_pret(cluster, big_file, tmp_path):
    curl = shutil.which("curl")
    if not curl:
        pytest.skip("curl is not installed")
    source, sha = big_file
    before = cluster.relayed_bytes()
    url = f"{cluster.url}/curl-pret.bin"
    flags = [curl, "-sS", "--fail", "--ftp-pret", "--no-ftp-skip-pasv-ip", "--max-time", "120"]
    run([*flags, "-T", str(source), url])
    run([*flags, "-o", str(tmp_path / "back.bin"), url])
    assert sha256_file(tmp_path / "back.bin") == sha
    assert cluster.relayed_bytes() == before
    assert_on_one_slave(cluster, "/curl-pret.bin", sha)


def test_64mib_round_trip_with_lftp_pret(cluster, big_file, tmp_path):
    lftp = shutil.which("lftp")
    if not lftp:
        pytest.skip("lftp is not installed (apt-get install lftp)")
    source, sha = big_file
    before = cluster.relayed_bytes()
    script = "; ".join([
        "set ftp:use-pret true", "set ftp:passive-mode true", "set ftp:ssl-allow false",
        "set net:max-retries 1", "set net:timeout 30", "set xfer:clobber true",
        "set cmd:fail-exit true",
        f"open -u {ADMIN_USER},{ADMIN_PASSWORD} -p {cluster.ftp_port} 127.0.0.1",
        f"put {source} -o /lftp-pret.bin",
        f"get /lftp-pret.bin -o {tmp_path / 'back.bin'}",
    ])
    run([lftp, "-c", script])
    assert sha256_file(tmp_path / "back.bin") == sha
    assert cluster.relayed_bytes() == before
    assert_on_one_slave(cluster, "/lftp-pret.bin", sha)


def run(argv: list[str], timeout: float = 150) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    assert result.returncode == 0, (f"{argv[0]} exited {result.returncode}: "
                                    f"{result.stderr.decode(errors='replace')[-2000:]}")
    return result


# ---------------------------------------------------------------- resume, append, trees

def test_rest_resume_of_an_interrupted_upload(cluster):
    data = os.urandom(8 * 1024 * 1024 + 123)
    name = "/resume-up.bin"  # a new file: a failed overwrite would keep the old one instead
    with cluster.ftp() as ftp:
        # The client dies midway: 3 MiB sent, then the data socket is reset (SO_LINGER 0:
        # RST, no FIN), so the slave cannot mistake it for the end of the file.
        receiving = slave_receiving(cluster, name, 1024 * 1024)
        with open_data(ftp, f"STOR {name}", "pret") as conn:
            conn.sendall(data[:3 * 1024 * 1024])
            wait_for(receiving, 15, "the slave to write the first MiB")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with pytest.raises(ftplib.error_temp, match=r"^(426|451)"):
            ftp.voidresp()
        n = ftp.size(name)
        assert n is not None and 0 < n <= 3 * 1024 * 1024
        holders = cluster.holders(name)
        assert len(holders) == 1 and (cluster.slave_root(holders[0]) / name[1:]).stat().st_size == n
        assert upload(ftp, name, data, "pret", rest=n, offset=n).startswith("226")
        assert ftp.size(name) == len(data)
        assert download(ftp, name, "pret") == data
    assert_on_one_slave(cluster, name, hashlib.sha256(data).hexdigest())


def test_rest_resume_of_an_interrupted_download(cluster):
    data = os.urandom(8 * 1024 * 1024 + 77)
    name = "/resume-down.bin"
    with cluster.ftp() as ftp:
        upload(ftp, name, data, "active")
        got = b""
        with open_data(ftp, f"RETR {name}", "pret") as conn:
            while len(got) < 2 * 1024 * 1024:
                chunk = conn.recv(65536)
                assert chunk, "data connection closed early"
                got += chunk
        try:
            ftp.voidresp()  # we hung up: 426 (or 226 if it all fitted in the socket buffers)
        except ftplib.Error as exc:
            assert str(exc)[:3] in ("426", "451"), exc
        rest = download(ftp, name, "pret", rest=len(got))
        assert got + rest == data
        # and in active mode
        assert download(ftp, name, "active", rest=len(data) - 1000) == data[-1000:]


def test_appe_appends(cluster):
    first, second = os.urandom(300_000), os.urandom(700_001)
    name = "/appended.bin"
    with cluster.ftp() as ftp:
        upload(ftp, name, first, "active")
        assert upload(ftp, name, second, "pret", cmd="APPE").startswith("226")
        assert ftp.size(name) == len(first) + len(second)
        assert download(ftp, name, "active") == first + second
        # APPE to a file that does not exist yet creates it
        upload(ftp, "/appe-new.bin", second, "active", cmd="APPE")
        assert download(ftp, "/appe-new.bin", "pret") == second
    assert_on_one_slave(cluster, name, hashlib.sha256(first + second).hexdigest())


@pytest.mark.parametrize("mode", ["active", "pret"])
def test_a_failed_overwrite_leaves_the_old_file(cluster, mode):
    original = os.urandom(500_000)
    name = f"/overwrite-reset-{mode}.bin"
    with cluster.ftp() as ftp:
        assert upload(ftp, name, original, "active").startswith("226")
        # The overwrite's data connection is reset midway (RST, not a clean end of file).
        receiving = slave_receiving(cluster, name, 100_000)
        conn = open_data(ftp, f"STOR {name}", mode)
        try:
            conn.sendall(os.urandom(200_000))
            wait_for(receiving, 15, "the slave to write the first 100 kB")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            conn.close()
        with pytest.raises(ftplib.Error):
            ftp.voidresp()  # 426
        assert ftp.size(name) == len(original)
        assert download(ftp, name, "pret") == original
    # Placed on the other slave, the overwrite's partial file there is deleted (queued op).
    wait_for(lambda: len(cluster.holders(name)) == 1, 10, "the partial copy deleted")
    assert_on_one_slave(cluster, name, hashlib.sha256(original).hexdigest())


def test_stat_during_a_slow_direct_retr_counts_bytes(cluster):
    data = os.urandom(16 * 1024 * 1024)
    name = "/slow-retr.bin"
    with cluster.ftp() as ftp, cluster.ftp() as admin:
        upload(ftp, name, data, "pret")
        got = 0
        seen = ""
        with open_data(ftp, f"RETR {name}", "active") as conn:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                chunk = conn.recv(65536)  # a slow reader: about 3 MB/s
                assert chunk, "data connection closed early"
                got += len(chunk)
                time.sleep(0.02)
                if got >= 2 * 1024 * 1024:
                    seen = ftp.sendcmd("STAT")
                    match = re.search(r"Total bytes sent: (\d+)", seen)
                    if match and int(match.group(1)) > 0:
                        break
            else:
                raise AssertionError(f"STAT never showed bytes sent: {seen!r}")
            who = admin.sendcmd("SITE WHO")
            assert re.search(rf"RETR {name} on \S+ [1-9]\d* bytes", who), who
            while chunk := conn.recv(1 << 20):
                got += len(chunk)
        assert ftp.voidresp().startswith("226")
        assert got == len(data)


def test_rename_and_delete_a_directory_tree(cluster):
    files = {"/tree/a.txt": os.urandom(1000), "/tree/sub/b.txt": os.urandom(2000),
             "/tree/sub/deeper/c.txt": os.urandom(3000), "/tree/sub/d.txt": os.urandom(10)}
    with cluster.ftp() as ftp:
        for d in ("/tree", "/tree/sub", "/tree/sub/deeper"):
            ftp.mkd(d)
        for i, (path, data) in enumerate(files.items()):
            upload(ftp, path, data, ("active", "pret")[i % 2])
        ftp.rename("/tree", "/moved")
        assert sorted(Path(p).name for p in ftp.nlst("/moved/sub")) == ["b.txt", "d.txt", "deeper"]
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.cwd("/tree")
        for path, data in files.items():
            moved = path.replace("/tree", "/moved", 1)
            assert download(ftp, moved, "pret") == data
            assert len(cluster.holders(moved)) == 1
            assert cluster.holders(path) == []
        for n in cluster.slave_names:
            assert not (cluster.slave_root(n) / "tree").exists(), f"/tree left on {n}'s disk"

        # delete the tree the way clients do: files, then directories bottom-up
        for path in files:
            ftp.delete(path.replace("/tree", "/moved", 1))
        for d in ("/moved/sub/deeper", "/moved/sub", "/moved"):
            ftp.rmd(d)
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.cwd("/moved")
        assert "moved" not in [Path(p).name for p in ftp.nlst("/")]
    for n in cluster.slave_names:
        assert not (cluster.slave_root(n) / "moved").exists(), f"/moved left on {n}'s disk"


def test_a_stored_file_lies_on_exactly_one_slave_and_not_on_the_master(cluster):
    data = os.urandom(1 << 20)
    with cluster.ftp() as ftp:
        upload(ftp, "/where.bin", data, "pret")
    assert_on_one_slave(cluster, "/where.bin", hashlib.sha256(data).hexdigest())
    assert_not_under_master(cluster, 1 << 19)


# ---------------------------------------------------------------- bad input

def test_dotdot_cannot_escape(cluster):
    with cluster.ftp() as ftp:
        ftp.cwd("/../..")
        assert ftp.pwd() == "/"
        with pytest.raises(ftplib.error_perm, match="^550"):
            download(ftp, "../../etc/passwd", "relay")
        with pytest.raises(ftplib.error_perm, match="^550"):
            download(ftp, "/../../../../etc/passwd", "pret")
        upload(ftp, "../../escape-probe.txt", b"inside", "pret")
        assert download(ftp, "/escape-probe.txt", "pret") == b"inside"
    for n in cluster.slave_names:
        root = cluster.slave_root(n)
        for up in (root.parent, root.parent.parent):
            assert not (up / "escape-probe.txt").exists()
    assert len(cluster.holders("/escape-probe.txt")) == 1


def disk_snapshot(cluster: Cluster) -> set[str]:
    return {str(p) for n in cluster.slave_names for p in cluster.slave_root(n).rglob("*")}


def test_nul_in_a_path_is_501_and_changes_nothing(cluster):
    with cluster.ftp() as ftp:
        upload(ftp, "/nul-target.txt", b"x", "active")
        listing, disk = sorted(ftp.nlst("/")), disk_snapshot(cluster)
        for cmd in ("MKD bad\0dir", "DELE nul-target.txt\0", "RNFR nul\0target.txt", "CWD /\0",
                    "SIZE nul-target.txt\0x", "RMD a\0b"):
            with pytest.raises(ftplib.error_perm, match="^501"):
                ftp.sendcmd(cmd)
        for cmd in ("STOR bad\0name.txt", "RETR nul-target.txt\0"):
            with pytest.raises(ftplib.error_perm, match="^501"):
                open_data(ftp, cmd, "relay").close()
        assert ftp.pwd() == "/"
        assert sorted(ftp.nlst("/")) == listing
    assert disk_snapshot(cluster) == disk


def test_retr_of_a_missing_file_is_550(cluster):
    with cluster.ftp() as ftp:
        for mode in ("active", "pret", "relay"):
            with pytest.raises(ftplib.error_perm, match="^550"):
                download(ftp, "/no-such-file.bin", mode)
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.size("/no-such-file.bin")
        ftp.voidcmd("NOOP")  # the session is still usable


@pytest.mark.parametrize("arg", ["1,2,3", "127,0,0,1,a,b", "127,0,0,1,300,1", "127,0,0,1,1,1,1",
                                 "", "127.0.0.1,20,20"])
def test_malformed_port_is_501(cluster, arg):
    with cluster.ftp() as ftp:
        with pytest.raises(ftplib.error_perm, match="^501"):
            ftp.sendcmd(f"PORT {arg}".rstrip())
        ftp.voidcmd("NOOP")


def test_a_config_with_a_misspelt_key_stops_the_role_with_one_line(tmp_path):
    bad = tmp_path / "master.toml"
    bad.write_text('[master]\nlisten_prot = 2121\n')
    result = subprocess.run([sys.executable, "-m", "master", "--config", str(bad)],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=30, cwd=REPO)
    err = result.stderr.decode().strip()
    assert result.returncode == 2
    assert len(err.splitlines()) == 1 and str(bad) in err and "master.listen_prot" in err, err


# ---------------------------------------------------------------- failures of processes

def test_stor_with_no_slave_online_is_4xx(cluster_factory):
    c = cluster_factory(slaves=0).start()
    with c.ftp() as ftp:
        for mode in ("active", "pret", "relay"):
            with pytest.raises(ftplib.error_temp, match="^4"):
                upload(ftp, f"/nowhere-{mode}.bin", b"data", mode)
            ftp.voidcmd("NOOP")
        assert ftp.nlst("/") == []


def test_slave_killed_during_retr(cluster_factory):
    c = cluster_factory(slaves=2)
    victim_data, other_data = os.urandom(32 << 20), os.urandom(1 << 20)
    # Files placed on the disks before start are adopted by the inventory merge.
    (c.slave_root("slave1") / "victim.bin").write_bytes(victim_data)
    (c.slave_root("slave2") / "other.bin").write_bytes(other_data)
    c.start()
    with c.ftp() as ftp:
        conn = open_data(ftp, "RETR /victim.bin", "pret")
        got = conn.recv(1 << 20)
        assert got
        c.kill("slave1", signal.SIGKILL)
        t0 = time.monotonic()
        conn.settimeout(10)
        try:
            while chunk := conn.recv(1 << 20):
                got += chunk
        except OSError:
            pass
        conn.close()
        assert len(got) < len(victim_data)
        ftp.sock.settimeout(max(0.5, 10 - (time.monotonic() - t0)))
        with pytest.raises(ftplib.error_temp, match="^4"):
            ftp.voidresp()
        assert time.monotonic() - t0 < 10, "the client must get a 4xx within 10 s"
        ftp.sock.settimeout(30)

    with c.ftp() as ftp:
        # the other slave's file is still served; the dead slave's file is a clear 4xx
        assert download(ftp, "/other.bin", "pret") == other_data
        assert download(ftp, "/other.bin", "active") == other_data
        t1 = time.monotonic()
        with pytest.raises(ftplib.error_temp, match="^4"):
            download(ftp, "/victim.bin", "pret")
        assert time.monotonic() - t1 < 12

    c.restart("slave1")
    c.wait_online(["slave1", "slave2"], timeout=20)
    with c.ftp() as ftp:
        assert download(ftp, "/victim.bin", "pret") == victim_data
        assert download(ftp, "/other.bin", "relay") == other_data


def test_broker_killed_and_restarted(cluster_factory):
    c = cluster_factory(slaves=1).start()
    payload = os.urandom(256 * 1024)
    with c.ftp() as ftp:
        upload(ftp, "/before.bin", payload, "pret")
    others = {n: pid for n, pid in c.pids().items() if n != "broker"}

    c.kill("broker", signal.SIGKILL)
    c.restart("broker")
    t0 = time.monotonic()
    errors: list[str] = []

    def transfer_works() -> bool:
        try:
            with c.ftp(timeout=max(1.0, 10 - (time.monotonic() - t0))) as ftp:
                upload(ftp, "/after.bin", payload, "pret")
                return download(ftp, "/before.bin", "pret") == payload
        except (OSError, EOFError, ftplib.Error) as exc:
            errors.append(f"{time.monotonic() - t0:.1f}s {exc!r}")
            return False

    try:
        wait_for(transfer_works, 10, "a transfer after the broker restart", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; attempts: {errors[-5:]}") from None
    assert c.pids() | {"broker": 0} == others | {"broker": 0}, "no other process may restart"
    assert all(c.roles[n].alive() for n in others)


# ---------------------------------------------------------------- ftpcluster up

def test_ftpcluster_up_smoke(tmp_path, up_factory):
    from common.launcher import free_ports
    port = free_ports(1)[0]
    up = up_factory("--port", str(port), "--slaves", "2", "--data", str(tmp_path / "var"),
                    cwd=REPO, data=tmp_path / "var")
    url_line = up.expect("is up with 2 slaves", 45)
    assert url_line == f"ftpcluster: ftp://demo:demo@127.0.0.1:{port}/ is up with 2 slaves"
    assert "listening with CURVE" in (tmp_path / "var" / "log" / "broker.log").read_text()
    assert (tmp_path / "var" / "keys" / "slaves" / "slave2.key").is_file()
    data = os.urandom(3 << 20)
    with ftplib.FTP() as ftp:
        ftp.trust_server_pasv_ipv4_address = True
        ftp.connect("127.0.0.1", port, timeout=30)
        ftp.login("demo", "demo")
        ftp.voidcmd("TYPE I")
        upload(ftp, "/smoke.bin", data, "pret")
        assert download(ftp, "/smoke.bin", "active") == data
    children = up.children()
    assert len(children) == 4, [c.cmdline() for c in children]

    # a role that dies is started again, and the launcher says so
    slave2 = next(c for c in children if any(a.endswith("slave2.toml") for a in c.cmdline()))
    slave2.kill()
    up.expect("slave2 exited unexpectedly", 10)
    up.expect("slave2 restarted", 10)
    children = up.children()
    assert len(children) == 4

    assert up.stop() == 0
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == [], f"children still running after SIGTERM: {alive}"
    assert [line for line in up.seen if "is up with" in line] == [url_line]


def stats_once_json(*args: str, cwd: Path) -> dict:
    out = subprocess.run(cli_cmd("stats", "--once", "--json", *args), capture_output=True, text=True,
                         timeout=30, cwd=cwd, env=cli_env())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_stats_with_no_options_finds_the_cluster_up_started_in_dot_var(tmp_path, up_factory):
    """`up` picks random broker ports; `stats` reads them from ./var/conf/broker.toml."""
    from common.launcher import free_ports
    up = up_factory("--port", str(free_ports(1)[0]), "--slaves", "3", cwd=tmp_path)
    up.expect("is up with 3 slaves", 45)
    assert (tmp_path / "var" / "conf" / "broker.toml").is_file()
    names = ["slave1", "slave2", "slave3"]

    def every_slave(*args: str, cwd: Path) -> bool:
        # A slave whose first stats went out before its PUB was connected shows with its next.
        return sorted(s["name"] for s in stats_once_json(*args, cwd=cwd)["slaves"]) == names
    wait_for(lambda: every_slave(cwd=tmp_path), 20, "every slave in `stats --once --json`", interval=0)
    assert every_slave("--data", str(tmp_path / "var"), cwd=REPO)
    assert up.stop() == 0


def test_up_keeps_edited_configs_across_restarts(tmp_path, up_factory):
    from common.launcher import free_ports
    from master.users import hash_password
    port, other_port = free_ports(2)
    data, conf = tmp_path / "var", tmp_path / "var" / "conf"
    first = up_factory("--port", str(port), "--slaves", "1", "--data", str(data), cwd=REPO, data=data)
    first.expect("is up with 1 slaves", 45)
    assert first.stop() == 0
    before = {p.name: p.read_text() for p in conf.glob("*.toml")}
    assert sorted(before) == ["broker.toml", "master.toml", "slave1.toml"]
    keys_before = {p: p.read_bytes() for p in (data / "keys").rglob("*") if p.is_file()}
    assert len(keys_before) == 8  # broker, master, slave1, stats: public and secret each

    # The operator adds a user and changes an option, as the README says.
    master = conf / "master.toml"
    edited = (master.read_text().replace("[master]\n", '[master]\npassive_without_pret = "refuse"\n')
              + f'\n[[users]]\nname = "alice"\npassword_hash = "{hash_password("wonderland")}"\n'
                'perms = "elradfmw"\n')
    master.write_text(edited)

    second = up_factory("--port", str(other_port), "--slaves", "2", "--data", str(data),
                        cwd=REPO, data=data)
    notice = second.expect("wins over --port", 10)
    assert notice == (f"ftpcluster: {master} has listen_port = {port}, which wins over --port "
                      f"{other_port} (edit that file to change it)")
    assert second.expect("existing configs", 10) == (
        f"ftpcluster: using the existing configs in {conf} (3 kept; wrote slave2.toml)")
    assert second.expect("is up with 2 slaves", 45) == (
        f"ftpcluster: ftp://demo:demo@127.0.0.1:{port}/ is up with 2 slaves")
    after = {p.name: p.read_text() for p in conf.glob("*.toml")}
    assert after == before | {"master.toml": edited, "slave2.toml": after["slave2.toml"]}
    assert after["slave2.toml"].replace("slave2", "slave1") == before["slave1.toml"]  # same broker ports
    assert all(p.read_bytes() == key for p, key in keys_before.items()), "keys are kept, like configs"
    assert (data / "keys" / "slaves" / "slave2.key_secret").is_file()
    with ftplib.FTP() as ftp:
        ftp.trust_server_pasv_ipv4_address = True
        ftp.connect("127.0.0.1", port, timeout=30)
        ftp.login("alice", "wonderland")
        upload(ftp, "/alice.bin", b"x" * 1000, "pret")
        with pytest.raises(ftplib.error_temp, match="^425 Passive mode without PRET"):
            ftp.retrbinary("RETR /alice.bin", lambda _chunk: None)
    assert second.stop() == 0
