"""A real cluster for integration tests: broker, master and N slaves as separate processes.

`Cluster` writes the configs (with `common.launcher.render_configs`, free ports, data under
tmp_path; CURVE on, as `ftpcluster up` runs, unless curve=False), starts every role as `python -m <role> --config FILE` with its output in
tmp_path/.../log/<role>.log, waits for readiness by polling (the 220 banner, then
`SITE SLAVES` showing every slave online) with a deadline, and always tears everything
down (SIGTERM, then SIGKILL). The tail of every role's log is attached to a failing test's
report. Transfer helpers drive Python's ftplib in the three data modes:

- "active": PORT, the slave connects to the client;
- "pret": PRET then PASV, the client connects to the slave;
- "relay": plain PASV, the master carries the bytes.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from common import launcher
from common.launcher import BrokerPorts, ClusterPlan, User

REPO = Path(__file__).resolve().parents[2]
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
CONTROL_TIMEOUT_S = 30.0
CHUNK = 1 << 20

_HASHES: dict[str, str] = {}
_ACTIVE: list["Cluster"] = []


def password_hash(password: str) -> str:
    if password not in _HASHES:
        from master.users import hash_password
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class RoleProcess:
    """One role: a config file, a log file, and the current process (restartable)."""

    def __init__(self, name: str, module: str, config: Path, log: Path) -> None:
        self.name, self.module, self.config, self.log = name, module, config, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert not self.alive(), f"{self.name} is already running"
        with open(self.log, "ab") as log:
            log.write(f"----- start {self.name} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = launcher.spawn_role(self.module, self.config, log, new_group=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


class Cluster:
    """Broker, master and `slaves` slaves on free ports under `base` (see the module doc)."""

    def __init__(self, base: Path, slaves: int = 2, *, master_extra: dict | None = None,
                 slave_extra: dict | None = None, log_level: str = "info", curve: bool = True,
                 per_slave: dict | None = None) -> None:
        *bp, self.ftp_port = launcher.free_ports(5)  # four broker ports and the FTP port, distinct
        self.plan = ClusterPlan(
            data=base, ftp_host="127.0.0.1", ftp_port=self.ftp_port, slaves=slaves,
            ports=BrokerPorts.of(bp),
            users=(User(ADMIN_USER, password_hash(ADMIN_PASSWORD)),),
            log_level=log_level, master_extra=master_extra or {}, slave_extra=slave_extra or {},
            curve=curve, per_slave=per_slave or {})
        paths = launcher.write_configs(self.plan)
        self.roles = {name: RoleProcess(name, module, paths[name], self.plan.log_dir / f"{name}.log")
                      for name, module in self.plan.roles()}

    # ------------------------------------------------------------ lifecycle

    @property
    def slave_names(self) -> list[str]:
        return self.plan.slave_names()

    def start(self, timeout: float = READY_TIMEOUT_S) -> "Cluster":
        _ACTIVE.append(self)
        for role in self.roles.values():
            role.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """The master answers with a 220 banner and every slave is online."""
        deadline = time.monotonic() + timeout
        self.wait_banner(deadline - time.monotonic())
        self.wait_online(self.slave_names, max(0.1, deadline - time.monotonic()))

    def _check_alive(self) -> None:
        dead = [r for r in self.roles.values() if r.proc is not None and not r.alive()]
        if dead:
            raise AssertionError("role process exited: " + ", ".join(
                f"{r.name} (code {r.proc.returncode})" for r in dead) + "\n" + self.logs())

    def wait_banner(self, timeout: float) -> None:
        def banner() -> bool:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.ftp_port), timeout=2) as s:
                    return s.makefile("rb").readline().startswith(b"220")
            except OSError:
                return False
        try:
            wait_for(banner, timeout, "the master's 220 banner")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def online(self) -> list[str]:
        """Slaves the master reports online (SITE SLAVES)."""
        with self.ftp() as ftp:
            return launcher.online_slaves(ftp.sendcmd("SITE SLAVES"))

    def wait_online(self, names: list[str], timeout: float, exact: bool = False) -> None:
        """Every slave in `names` is online (and, with exact, no other)."""
        last: list[str] = []

        def check() -> bool:
            nonlocal last
            self._check_alive()
            try:
                last = self.online()
            except (OSError, EOFError, ftplib.Error):
                return False
            return set(names) <= set(last) and (not exact or set(last) == set(names))
        try:
            wait_for(check, timeout, f"slaves {names} online", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc} (last SITE SLAVES online: {last})\n{self.logs()}") from None

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Send `sig` to a role and wait until its process has exited."""
        role = self.roles[name]
        role.signal(sig)
        return role.wait(timeout)

    def restart(self, name: str) -> None:
        """Start a role again (after kill) with the same config and ports."""
        self.roles[name].start()

    def pids(self) -> dict[str, int]:
        return {name: r.pid for name, r in self.roles.items() if r.alive()}

    def close(self) -> None:
        """SIGTERM every role, SIGKILL what is left after STOP_GRACE_S. Always safe to call."""
        launcher.stop_processes([r.proc for r in self.roles.values() if r.proc is not None],
                                grace=STOP_GRACE_S)
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    # ------------------------------------------------------------ inspection

    def slave_root(self, name: str) -> Path:
        return self.plan.slave_root(name)

    @property
    def master_state_dir(self) -> Path:
        return self.plan.master_state_dir

    def holders(self, vpath: str) -> list[str]:
        """Slaves that have the file `vpath` on their disk."""
        rel = vpath.lstrip("/")
        return [n for n in self.slave_names if (self.slave_root(n) / rel).is_file()]

    def relayed_bytes(self) -> int:
        """The master's SITE STATUS relayed_bytes counter."""
        with self.ftp() as ftp:
            reply = ftp.sendcmd("SITE STATUS")
        match = re.search(r"relayed_bytes\s*[=:]?\s*(\d+)", reply)
        assert match, f"no relayed_bytes in SITE STATUS reply: {reply!r}"
        return int(match.group(1))

    def logs(self, lines: int = 60) -> str:
        return "\n".join(f"===== {name} ({r.log})\n{r.tail(lines)}" for name, r in self.roles.items())

    # ------------------------------------------------------------ clients

    def ftp(self, user: str = ADMIN_USER, password: str = ADMIN_PASSWORD,
            timeout: float = CONTROL_TIMEOUT_S) -> ftplib.FTP:
        """A logged-in ftplib client that trusts the 227 address (needed for PRET+PASV), in
        TYPE I: the helpers move binary data (the FTP default, TYPE A, converts line ends)."""
        ftp = ftplib.FTP(timeout=timeout)
        ftp.trust_server_pasv_ipv4_address = True
        ftp.connect("127.0.0.1", self.ftp_port)
        try:
            ftp.login(user, password)
            ftp.voidcmd("TYPE I")
        except BaseException:
            ftp.close()
            raise
        return ftp

    def stats_args(self) -> list[str]:
        """`ftpcluster stats` options for this cluster's feed: its endpoint and, with CURVE,
        the stats key the cluster made."""
        args = ["--endpoint", self.plan.ports.endpoint("stats_out")]
        if self.plan.curve:
            args += ["--key", str(self.plan.secret_key("stats", launcher.STATS_KEY_NAME)),
                     "--broker-key", str(self.plan.public_key("broker", "broker"))]
        return args

    @property
    def url(self) -> str:
        return f"ftp://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{self.ftp_port}"


# ---------------------------------------------------------------- transfer helpers

MODES = ("active", "pret", "relay")


def open_data(ftp: ftplib.FTP, cmd: str, mode: str, rest: int | None = None) -> socket.socket:
    """Open the data connection for `cmd` ("RETR x", "STOR x", "APPE x") in `mode`."""
    if mode == "active":
        ftp.set_pasv(False)
    elif mode == "pret":
        ftp.set_pasv(True)
        ftp.sendcmd(f"PRET {cmd}")
    elif mode == "relay":
        ftp.set_pasv(True)
    else:
        raise ValueError(mode)
    return ftp.transfercmd(cmd, rest)


def upload(ftp: ftplib.FTP, path: str, source: Path | bytes, mode: str, *, cmd: str = "STOR",
           rest: int | None = None, offset: int = 0) -> str:
    """Send `source` (from byte `offset`) with `cmd` in TYPE I; returns the final reply (226)."""
    ftp.voidcmd("TYPE I")  # binary data; ftplib's nlst/retrlines leave the session in TYPE A
    with open_data(ftp, f"{cmd} {path}", mode, rest) as conn:
        if isinstance(source, bytes):
            conn.sendall(source[offset:])
        else:
            with open(source, "rb") as f:
                f.seek(offset)
                while chunk := f.read(CHUNK):
                    conn.sendall(chunk)
    return ftp.voidresp()


def download(ftp: ftplib.FTP, path: str, mode: str, rest: int | None = None,
             sink: Path | None = None) -> bytes | tuple[int, str]:
    """RETR `path` in TYPE I: the bytes, or with `sink` (length, sha256) after writing them there."""
    ftp.voidcmd("TYPE I")  # binary data; ftplib's nlst/retrlines leave the session in TYPE A
    digest, parts, size = hashlib.sha256(), [], 0
    out = open(sink, "wb") if sink else None
    try:
        with open_data(ftp, f"RETR {path}", mode, rest) as conn:
            while chunk := conn.recv(CHUNK):
                size += len(chunk)
                if out:
                    out.write(chunk)
                    digest.update(chunk)
                else:
                    parts.append(chunk)
        ftp.voidresp()
    finally:
        if out:
            out.close()
    return (size, digest.hexdigest()) if sink else b"".join(parts)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, CHUNK)
            f.write(os.urandom(n))
            left -= n
    return path


# ---------------------------------------------------------------- ftpcluster up

def cli_cmd(*args: str) -> list[str]:
    """`ftpcluster ARGS` from this checkout, runnable with any cwd (see cli_env)."""
    return [sys.executable, "-m", "common.cli", *args]


def cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))


class UpProcess:
    """`ftpcluster up ARGS` as a subprocess in its own process group, with `cwd` (its data
    directory is `data`: --data, or cwd/var), and its output read line by line."""

    def __init__(self, *args: str, cwd: Path, data: Path) -> None:
        self.data = data
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(cli_cmd("up", *args), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=cli_env(), start_new_session=True)
        self._children: list[psutil.Process] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put("")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.data / "log").glob("*.log")))

    def expect(self, fragment: str, timeout: float) -> str:
        """The next output line containing `fragment`; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is not None:
                self.seen.append(line)
                if fragment in line:
                    return line
            if line == "" and self.proc.poll() is not None or time.monotonic() >= deadline:
                raise AssertionError(f"no line with {fragment!r}; output so far: {self.seen}\n{self.logs()}")

    def children(self) -> list[psutil.Process]:
        """The roles it runs (remembered, so that close() can kill them if it must)."""
        kids = psutil.Process(self.proc.pid).children()
        self._children = list({c.pid: c for c in [*self._children, *kids]}.values())
        return kids

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait for it; its exit code. Past `timeout`: SIGKILL everything, raise."""
        if self.proc.poll() is None:
            try:
                self.children()
            except psutil.Error:
                pass
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._reader.join(timeout=5)
            if self.proc.stdout:
                self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL its process group and every role it started (each runs in its own)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        for child in self._children:
            try:
                child.kill()  # psutil checks that the pid is still that process
            except psutil.Error:
                pass
        psutil.wait_procs(self._children, timeout=5)
        self._reader.join(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def up_factory() -> Iterator[Callable[..., UpProcess]]:
    """Start `ftpcluster up` processes that are always torn down after the test."""
    started: list[UpProcess] = []

    def start(*args: str, cwd: Path, data: Path | None = None) -> UpProcess:
        up = UpProcess(*args, cwd=cwd, data=data if data is not None else cwd / "var")
        started.append(up)
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            try:
                up.stop()
            except subprocess.TimeoutExpired:
                pass
        up.kill()


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Make clusters (not started: call .start()) that are always torn down after the test."""
    made: list[Cluster] = []

    def make(slaves: int = 2, **kw) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", slaves, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One running cluster with 2 slaves, shared by the tests of a module that do not disturb it."""
    c = Cluster(tmp_path_factory.mktemp("cluster"), slaves=2)
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and _ACTIVE:
        for c in _ACTIVE:
            report.sections.append((f"cluster logs ({c.plan.data})", c.logs()))


def slave_receiving(cluster, name: str, min_bytes: int) -> Callable[[], bool]:
    """A predicate: some slave holds a file for upload `name` started after this call (the
    target or its temp file .ftpc-part.<hex>) with at least `min_bytes` written."""
    def candidates() -> set[Path]:
        return {p for n in cluster.slave_names for pattern in (name[1:], ".ftpc-part.*")
                for p in cluster.slave_root(n).glob(pattern)}
    earlier = candidates()

    def receiving() -> bool:
        for p in candidates() - earlier:
            try:
                if p.stat().st_size >= min_bytes:
                    return True
            except OSError:
                pass
        return False
    return receiving
