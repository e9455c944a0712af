"""The servers under test, each started as child processes and always stopped.

- `ClusterServer`: broker, master and N slaves (configs from common.launcher), each slave
  optionally bound to its own loopback address (data_bind = data_host = 127.0.1.N).
- `PyftpdlibServer`: stock pyftpdlib over a local directory (bench.pyftpd_peer).
- `VsftpdServer`: vsftpd in the foreground with a config of our own and a local user.

Every server exposes host, port, user, password, `pret` (whether passive transfers need
PRET) and `root`: the directory whose files the server serves (for the cluster, slave1's
storage root; files put there before start() are picked up by the inventory merge).
"""

from __future__ import annotations

import ftplib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import launcher
from common.launcher import BrokerPorts, ClusterPlan, User

USER = "bench"
PASSWORD = "bench-secret"
VSFTPD_USER = "ftpbench"
READY_TIMEOUT_S = 60.0


def wait_banner(host: str, port: int, timeout: float, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:3]} exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                if s.makefile("rb").readline().startswith(b"220"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no 220 banner on {host}:{port} after {timeout:g} s")
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen]) -> None:
    launcher.stop_processes([p for p in procs if p is not None], grace=5.0)


class ClusterServer:
    name = "cluster"
    pret = True

    def __init__(self, base: Path, slaves: int = 1, *, own_addresses: bool = False,
                 master_extra: dict | None = None, slave_extra: dict | None = None,
                 log_level: str = "warning", name: str = "cluster") -> None:
        from master.users import hash_password

        self.name = name
        self.host = "127.0.0.1"
        self.user, self.password = USER, PASSWORD
        *bp, self.port = launcher.free_ports(5)  # four broker ports and the FTP port, distinct
        self.plan = ClusterPlan(
            data=base, ftp_host=self.host, ftp_port=self.port, slaves=slaves,
            ports=BrokerPorts.of(bp),
            users=(User(USER, hash_password(PASSWORD)),), log_level=log_level,
            master_extra=master_extra or {}, slave_extra=slave_extra or {})
        self.own_addresses = own_addresses
        self.procs: dict[str, subprocess.Popen] = {}
        for name in self.plan.slave_names():
            self.plan.slave_root(name).mkdir(parents=True, exist_ok=True)

    def slave_address(self, index: int) -> str:
        """Data address of slave number `index` (1-based)."""
        return f"127.0.1.{index}" if self.own_addresses else "127.0.0.1"

    def slave_root(self, index: int) -> Path:
        return self.plan.slave_root(f"slave{index}")

    @property
    def root(self) -> Path:
        return self.slave_root(1)

    def start(self) -> "ClusterServer":
        paths = launcher.write_configs(self.plan)
        texts = launcher.render_configs(self.plan)
        if self.own_addresses:
            for i, name in enumerate(self.plan.slave_names(), 1):
                addr = self.slave_address(i)
                text = texts[name].replace('data_bind = "127.0.0.1"',
                                           f'data_bind = "{addr}"\ndata_host = "{addr}"')
                paths[name].write_text(text)
        for name, module in self.plan.roles():
            with open(self.plan.log_dir / f"{name}.log", "ab") as log:
                self.procs[name] = launcher.spawn_role(module, paths[name], log)
        try:
            wait_banner(self.host, self.port, READY_TIMEOUT_S, list(self.procs.values()))
            deadline = time.monotonic() + READY_TIMEOUT_S
            want = set(self.plan.slave_names())
            while True:
                online = launcher.query_online(self.host, self.port, self.user, self.password)
                if online is not None and want <= set(online):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"slaves not online after {READY_TIMEOUT_S:g} s: {online}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_visible(self, paths: dict[str, int], timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until the master knows every path (the inventory merge) with its size."""
        deadline = time.monotonic() + timeout
        left = dict(paths)
        with self.ftp() as ftp:
            ftp.voidcmd("TYPE I")
            while left:
                for path, size in list(left.items()):
                    try:
                        if ftp.size(path) == size:
                            del left[path]
                    except ftplib.error_perm:
                        pass
                if left:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"files not visible on the master: {sorted(left)[:3]}...")
                    time.sleep(0.2)

    def ftp(self) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=60)
        ftp.trust_server_pasv_ipv4_address = True
        ftp.connect(self.host, self.port)
        ftp.login(self.user, self.password)
        return ftp

    def relayed_bytes(self) -> int:
        with self.ftp() as ftp:
            reply = ftp.sendcmd("SITE STATUS")
        match = re.search(r"relayed_bytes\s*[=:]?\s*(\d+)", reply)
        if not match:
            raise RuntimeError(f"no relayed_bytes in {reply!r}")
        return int(match.group(1))

    @property
    def master_pid(self) -> int:
        return self.procs["master"].pid

    def stop(self) -> None:
        _stop(list(self.procs.values()))

    def __enter__(self) -> "ClusterServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PyftpdlibServer:
    name = "pyftpdlib"
    pret = False

    def __init__(self, root: Path, log: Path, *, certfile: Path | None = None,
                 name: str = "pyftpdlib") -> None:
        self.name = name
        self.certfile = certfile
        self.tls = certfile is not None
        """Stock TLS_FTPHandler (bench.pyftpd_peer --certfile): clients use PROT P."""
        self.host = "127.0.0.1"
        self.port = launcher.free_ports(1)[0]
        self.user, self.password = USER, PASSWORD
        self.root = root
        self.log = log
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self) -> "PyftpdlibServer":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.pyftpd_peer", "--root", str(self.root),
                 "--host", self.host, "--port", str(self.port), "--user", self.user,
                 "--password", self.password,
                 *(["--certfile", str(self.certfile)] if self.certfile else [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            wait_banner(self.host, self.port, READY_TIMEOUT_S, [self.proc])
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            _stop([self.proc])

    def __enter__(self) -> "PyftpdlibServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def vsftpd_unavailable() -> str | None:
    """Why vsftpd cannot run here, or None."""
    if shutil.which("vsftpd") is None and not Path("/usr/sbin/vsftpd").exists():
        return "vsftpd is not installed (apt-get install vsftpd)"
    if os.geteuid() != 0:
        return "vsftpd needs root (it runs as root and logs a local user in)"
    return None


class VsftpdServer:
    """vsftpd 3 in the foreground; logs in the local user `ftpbench` (created if missing)."""

    name = "vsftpd"
    pret = False

    def __init__(self, root: Path, work: Path) -> None:
        self.host = "127.0.0.1"
        self.port = launcher.free_ports(1)[0]
        self.user, self.password = VSFTPD_USER, PASSWORD
        self.root = root
        self.work = work
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def _ensure_user(self) -> None:
        try:
            subprocess.run(["id", self.user], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/bash", self.user],
                           check=True, capture_output=True)
        subprocess.run(["usermod", "--home", str(self.root), self.user], check=True, capture_output=True)
        subprocess.run(["chpasswd"], input=f"{self.user}:{self.password}\n", text=True,
                       check=True, capture_output=True)

    def config_text(self) -> str:
        return "\n".join([
            "listen=YES", "listen_ipv6=NO", f"listen_address={self.host}",
            f"listen_port={self.port}", "background=NO", "seccomp_sandbox=NO",
            "anonymous_enable=NO", "local_enable=YES", "write_enable=YES",
            f"local_root={self.root}", "connect_from_port_20=NO", "port_enable=YES",
            "pasv_enable=YES", "pasv_promiscuous=NO", "use_sendfile=YES",
            "max_clients=0", "max_per_ip=0", "xferlog_enable=NO", "dirmessage_enable=NO",
            "pam_service_name=vsftpd", "secure_chroot_dir=/var/run/vsftpd/empty",
            "delay_failed_login=0", "delay_successful_login=0", "idle_session_timeout=600",
            "data_connection_timeout=300", "accept_timeout=60", "connect_timeout=60", ""])

    def start(self) -> "VsftpdServer":
        self._ensure_user()
        Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
        for parent in [self.root, *self.root.parents]:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            os.chmod(parent, mode | 0o055)  # let the local user reach its root
        shutil.chown(self.root, self.user)
        for path in self.root.rglob("*"):
            shutil.chown(path, self.user)
        conf = self.work / "vsftpd.conf"
        conf.write_text(self.config_text())
        with open(self.work / "vsftpd.log", "ab") as log:
            self.proc = subprocess.Popen(["vsftpd", str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_banner(self.host, self.port, 20, [self.proc])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            # vsftpd forks a process per session: stop the whole session group.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> "VsftpdServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
