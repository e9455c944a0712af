"""`ftpcluster up`: a whole cluster on this machine, in the foreground, as separate processes.

It writes one TOML config per role under DATA/conf (only those that are missing: an existing
config is the operator's and is used as it is, see `decide_start`) and the CURVE key pairs of
every role under DATA/keys (missing ones only; see common.curve for the layout), so the
cluster runs with CURVE on; it starts the broker, the master and N
slaves (`python -m <role> --config FILE`, logs in DATA/log), prints one line with the FTP
URL once every slave is online, restarts a role that dies unexpectedly after a back-off
(1 s doubling to 10 s, as systemd would in a real deployment), and on Ctrl-C or SIGTERM
stops every process it started (SIGTERM, then SIGKILL after 5 s) and exits 0.

The decisions (config text, back-off, reading `SITE SLAVES`, the loopback check) are plain
functions; `run_local_cluster` is the I/O shell around them.
"""

from __future__ import annotations

import errno
import ftplib
import ipaddress
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
ADMIN_PERMS = "elradfmwMTS"

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0
"""A role that ran this long before dying starts again from the first back-off step."""
STOP_GRACE_S = 5.0
POLL_INTERVAL_S = 0.25
SLOW_START_NOTICE_S = 30.0


# ---------------------------------------------------------------- pure decisions

def loopback_refusal(host: str) -> str | None:
    """Why `host` must not be used with the demo password, or None when it is loopback.

    >>> loopback_refusal("127.0.0.1") is None
    True
    >>> loopback_refusal("0.0.0.0") is not None
    True
    """
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"refusing to listen on {host}: the demo password {DEMO_USER}/{DEMO_PASSWORD} "
            "is in use, so `ftpcluster up` only listens on a loopback address (127.0.0.1)")


def backoff_delay(previous: float | None) -> float:
    """Next restart delay: 1 s first, then doubling, at most 10 s."""
    if previous is None:
        return BACKOFF_FIRST_S
    return min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, previous * 2))


def online_slaves(reply: str) -> list[str]:
    """Names of the slaves in state "online" in a `SITE SLAVES` reply.

    The reply is multi-line: "200-..." then one line per slave
    " <name> <state> free=<bytes> total=<bytes> active=<n>", then "200 ...".
    """
    names = []
    for line in reply.splitlines():
        if not line.startswith(" "):
            continue
        words = line.split()
        if len(words) >= 2 and words[1].lower() == "online":
            names.append(words[0])
    return names


def _toml(value: object) -> str:
    """A TOML literal for a str, bool, int or list/tuple of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def _table(name: str, values: dict[str, object], array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    return "\n".join([head, *(f"{k} = {_toml(v)}" for k, v in values.items())]) + "\n"


@dataclass(frozen=True)
class BrokerPorts:
    master: int
    slave: int
    stats_in: int
    stats_out: int

    def endpoint(self, which: str) -> str:
        return f"tcp://127.0.0.1:{getattr(self, which)}"

    @classmethod
    def of(cls, ports: Sequence[int]) -> BrokerPorts:
        """The first four of `ports` (from free_ports), in field order."""
        return cls(master=ports[0], slave=ports[1], stats_in=ports[2], stats_out=ports[3])


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    perms: str = ADMIN_PERMS
    home: str = "/"


@dataclass(frozen=True)
class ClusterPlan:
    """Everything needed to write the configs of one local cluster."""

    data: Path
    ftp_host: str
    ftp_port: int
    slaves: int
    ports: BrokerPorts
    users: tuple[User, ...]
    log_level: str = "info"
    master_extra: dict[str, object] = field(default_factory=dict)
    slave_extra: dict[str, object] = field(default_factory=dict)
    curve: bool = True
    """CURVE on every broker socket, with the key pairs under keys_dir."""
    per_slave: dict[str, dict[str, object]] = field(default_factory=dict)
    """Keys for one slave's [slave] table only (its own TLS certificate), by slave name."""

    def slave_names(self) -> list[str]:
        return [f"slave{i}" for i in range(1, self.slaves + 1)]

    def slave_root(self, name: str) -> Path:
        return self.data / name

    @property
    def conf_dir(self) -> Path:
        return self.data / "conf"

    @property
    def keys_dir(self) -> Path:
        return self.data / "keys"

    def key_pairs(self) -> list[tuple[str, str]]:
        """(role, name) of every key pair the cluster uses: broker, master, each slave, and
        one for `ftpcluster stats`."""
        return [("broker", "broker"), ("master", "master"),
                *(("slave", name) for name in self.slave_names()), ("stats", STATS_KEY_NAME)]

    def secret_key(self, role: str, name: str) -> Path:
        from common.curve import key_paths
        return key_paths(self.keys_dir, role, name)[1]

    def public_key(self, role: str, name: str) -> Path:
        from common.curve import key_paths
        return key_paths(self.keys_dir, role, name)[0]

    def key_dir(self, role: str) -> Path:
        from common.curve import ROLE_DIRS
        return self.keys_dir / ROLE_DIRS[role]

    @property
    def log_dir(self) -> Path:
        return self.data / "log"

    @property
    def master_state_dir(self) -> Path:
        return self.data / "master"

    def config_path(self, role: str) -> Path:
        return self.conf_dir / f"{role}.toml"

    def roles(self) -> list[tuple[str, str]]:
        """(process name, module) in start order: broker, master, slaves."""
        return [("broker", "broker"), ("master", "master"),
                *((name, "slave") for name in self.slave_names())]


STATS_KEY_NAME = "stats"
"""The key pair `ftpcluster up` makes for `ftpcluster stats` (DATA/keys/stats/stats.key)."""


def render_configs(plan: ClusterPlan) -> dict[str, str]:
    """TOML text for every role of `plan`, keyed by process name ("broker", "master", "slaveN")."""
    p = plan.ports
    log = _table("log", {"level": plan.log_level})

    def client_curve(role: str, name: str) -> str:
        if not plan.curve:
            return ""
        return "\n" + _table("curve", {"secret_key": str(plan.secret_key(role, name)),
                                       "broker_key": str(plan.public_key("broker", "broker"))})

    broker_curve = "\n" + _table("curve", {
        "secret_key": str(plan.secret_key("broker", "broker")),
        "master_keys": str(plan.key_dir("master")),
        "slave_keys": str(plan.key_dir("slave")),
        "stats_keys": str(plan.key_dir("stats")),
    }) if plan.curve else ""
    out = {
        "broker": _table("broker", {
            "master_endpoint": p.endpoint("master"),
            "slave_endpoint": p.endpoint("slave"),
            "stats_in_endpoint": p.endpoint("stats_in"),
            "stats_out_endpoint": p.endpoint("stats_out"),
        }) + "\n" + log + broker_curve,
    }
    master = {
        "listen_host": plan.ftp_host,
        "listen_port": plan.ftp_port,
        "broker_endpoint": p.endpoint("master"),
        "stats_endpoint": p.endpoint("stats_out"),
        "state_dir": str(plan.master_state_dir),
        **plan.master_extra,
    }
    users = "\n".join(_table("users", {"name": u.name, "password_hash": u.password_hash,
                                       "home": u.home, "perms": u.perms}, array=True)
                      for u in plan.users)
    out["master"] = (_table("master", master) + "\n" + log + client_curve("master", "master")
                     + ("\n" + users if users else ""))
    for name in plan.slave_names():
        slave = {
            "name": name,
            "root": str(plan.slave_root(name)),
            "broker_endpoint": p.endpoint("slave"),
            "stats_endpoint": p.endpoint("stats_in"),
            "data_bind": "127.0.0.1",
            **plan.slave_extra,
            **plan.per_slave.get(name, {}),
        }
        out[name] = _table("slave", slave) + "\n" + log + client_curve("slave", name)
    return out


DEFAULT_FTP_HOST = "127.0.0.1"
DEFAULT_FTP_PORT = 2121
DEFAULT_SLAVES = 3
MAX_SLAVES = 64
PORT_FIELDS = ("master", "slave", "stats_in", "stats_out")
_SLAVE_FILE = re.compile(r"^slave([1-9][0-9]*)\.toml$")
_TCP_PORT = re.compile(r"^tcp://(?:\[[^\]]*\]|[^:/\[\]]+):([0-9]{1,5})$")


def endpoint_port(endpoint: str) -> int | None:
    """The port of a "tcp://HOST:PORT" endpoint, or None for any other form.

    >>> endpoint_port("tcp://127.0.0.1:6001"), endpoint_port("ipc:///run/x")
    (6001, None)
    """
    match = _TCP_PORT.match(endpoint)
    return int(match[1]) if match and 0 < int(match[1]) < 65536 else None


@dataclass(frozen=True)
class ExistingConfigs:
    """What a data directory's conf/ already holds (read by `read_existing`)."""

    conf_dir: Path
    roles: frozenset[str] = frozenset()
    """Process names with a config file: "broker", "master", "slave<k>"."""
    ports: dict[str, int] = field(default_factory=dict)
    """The broker ports those files agree on (PORT_FIELDS), from broker.toml first, then
    from the master's and the first slave's endpoints."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """PORT_FIELDS whose endpoint is not tcp://HOST:PORT: "FILE: key KEY" for the message."""
    listen: tuple[str, int] | None = None
    """master.toml's listen_host and listen_port."""
    curve: bool | None = None
    """Whether broker.toml has a [curve] section (None: no broker.toml)."""

    @property
    def slave_numbers(self) -> list[int]:
        return sorted(int(r[5:]) for r in self.roles if r.startswith("slave"))


@dataclass(frozen=True)
class StartDecision:
    """What `ftpcluster up` runs, given the existing configs and the command line."""

    ftp_host: str
    ftp_port: int
    slaves: int
    ports: BrokerPorts
    write: tuple[str, ...]
    """Process names whose config is missing and is written now (in start order)."""
    notices: tuple[str, ...] = ()
    """One line each: which of a differing option and an existing config wins, and so on."""


def decide_start(existing: ExistingConfigs, *, port: int | None, host: str | None,
                 slaves: int | None, fresh_ports: Sequence[int]) -> StartDecision:
    """Which configs to write and what to run. An existing config always wins: it is kept
    as it is (the operator's edits, the broker's random ports, the demo password hash).

    - No configs: write all, with --port/--host/--slaves or their defaults and the first
      four of `fresh_ports` that are distinct from each other.
    - master.toml exists: its listen_host/listen_port are used; a differing --port or
      --host is ignored with one notice line naming the file.
    - Slaves: --slaves N runs slave1..N (missing configs written; configs of higher
      numbers are kept but not started, with a notice); without --slaves, slave1 up to the
      highest existing slave<k>.toml (3 when there is none).
    - A missing config gets the broker ports the existing ones use (broker.toml first, then
      master.toml's and a slave's endpoints), fresh ports for any nobody names.
    Raises ConfigError when a missing config needs a port an existing file names in a
    form other than tcp://HOST:PORT.
    """
    from common.config import ConfigError

    conf = existing.conf_dir
    notices: list[str] = []
    count = slaves if slaves is not None else max(existing.slave_numbers, default=DEFAULT_SLAVES)
    if existing.listen is not None:
        ftp_host, ftp_port = existing.listen
        for option, given, kept, key in (("--port", port, ftp_port, "listen_port"),
                                         ("--host", host, ftp_host, "listen_host")):
            if given is not None and given != kept:
                notices.append(f"{conf / 'master.toml'} has {key} = {_toml(kept)}, which wins over "
                               f"{option} {given} (edit that file to change it)")
    else:
        ftp_host = host if host is not None else DEFAULT_FTP_HOST
        ftp_port = port if port is not None else DEFAULT_FTP_PORT
    wanted = ["broker", "master", *(f"slave{i}" for i in range(1, count + 1))]
    write = tuple(name for name in wanted if name not in existing.roles)
    idle = [f"slave{k}" for k in existing.slave_numbers if k > count]
    if idle:
        notices.append(f"--slaves {count}: not starting {', '.join(idle)} "
                       f"(their configs stay in {conf})")
    needs = {"broker": PORT_FIELDS, "master": ("master", "stats_out")}
    needed = {f for name in write for f in needs.get(name, ("slave", "stats_in"))}
    for f in sorted(needed & existing.unreadable.keys()):
        raise ConfigError(f"{existing.unreadable[f]}: expected tcp://HOST:PORT to write "
                          f"{', '.join(n + '.toml' for n in write)} from it")
    spare = iter(p for p in dict.fromkeys(fresh_ports) if p not in existing.ports.values())
    ports = {f: existing.ports[f] if f in existing.ports else next(spare) for f in PORT_FIELDS}
    return StartDecision(ftp_host=ftp_host, ftp_port=ftp_port, slaves=count,
                         ports=BrokerPorts(**ports), write=write, notices=tuple(notices))


def read_existing(conf_dir: Path) -> ExistingConfigs:
    """Read (and validate) the configs under `conf_dir`; raises ConfigError for a bad one."""
    from common.config import BrokerConfig, MasterConfig, SlaveConfig, load

    roles: set[str] = set()
    ports: dict[str, int] = {}
    unreadable: dict[str, str] = {}
    listen = None
    curve = None

    def note(fieldname: str, endpoint: str, where: str) -> None:
        if fieldname in ports or fieldname in unreadable:
            return
        number = endpoint_port(endpoint)
        if number is None:
            unreadable[fieldname] = f"{where}: {endpoint!r}"
        else:
            ports[fieldname] = number

    broker_path = conf_dir / "broker.toml"
    if broker_path.is_file():
        roles.add("broker")
        broker_config = load(broker_path, BrokerConfig)
        curve = broker_config.curve is not None
        b = broker_config.broker
        for f in PORT_FIELDS:
            note(f, getattr(b, f"{f}_endpoint"), f"{broker_path}: key broker.{f}_endpoint")
    master_path = conf_dir / "master.toml"
    if master_path.is_file():
        roles.add("master")
        m = load(master_path, MasterConfig).master
        listen = (m.listen_host, m.listen_port)
        note("master", m.broker_endpoint, f"{master_path}: key master.broker_endpoint")
        note("stats_out", m.stats_endpoint, f"{master_path}: key master.stats_endpoint")
    slave_files = sorted((int(match[1]), path) for path in conf_dir.glob("slave*.toml")
                         if (match := _SLAVE_FILE.match(path.name)) and path.is_file())
    for number, path in slave_files:
        roles.add(f"slave{number}")
        sl = load(path, SlaveConfig).slave
        note("slave", sl.broker_endpoint, f"{path}: key slave.broker_endpoint")
        note("stats_in", sl.stats_endpoint, f"{path}: key slave.stats_endpoint")
    return ExistingConfigs(conf_dir=conf_dir, roles=frozenset(roles), ports=ports,
                           unreadable=unreadable, listen=listen, curve=curve)


# ---------------------------------------------------------------- FTPS certificates

TLS_DIR = "tls"
"""Under the data directory: the self-signed certificates of the master and each slave."""


def tls_settings(data: Path, slaves: Sequence[str]) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    """The master's and each slave's TLS config keys, with a self-signed certificate for
    each made under DATA/tls when missing (kept on restart: common.certs)."""
    from common.certs import ensure_self_signed

    directory = data / TLS_DIR
    cert, key = ensure_self_signed(directory, "master")
    master: dict[str, object] = {"tls_certfile": str(cert), "tls_keyfile": str(key)}
    per_slave: dict[str, dict[str, object]] = {}
    for name in slaves:
        cert, key = ensure_self_signed(directory, name)
        per_slave[name] = {"tls_certfile": str(cert), "tls_keyfile": str(key)}
    return master, per_slave


# ---------------------------------------------------------------- small I/O helpers

PRIVATE_PORTS_FROM = 10000
"""free_ports picks from here up to the start of the kernel's ephemeral port range."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that were free on `host` a moment ago.

    They are chosen below the kernel's ephemeral range: a peer that connects (and retries,
    as zmq does) before its server has bound the port may otherwise be given that very
    port as its own source port and connect to itself (TCP simultaneous open), and the
    server then fails with EADDRINUSE. Outgoing connections never take these ports.
    """
    first_ephemeral = _ephemeral_range_start()
    if first_ephemeral - PRIVATE_PORTS_FROM < 100 * count:
        return _kernel_ports(count, host)  # an unusual range: fall back to the kernel's choice
    rng = random.SystemRandom()
    chosen: list[int] = []
    for _ in range(200 * count):
        port = rng.randrange(PRIVATE_PORTS_FROM, first_ephemeral)
        if port not in chosen and not port_in_use(host, port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise OSError(errno.EADDRINUSE, f"no {count} free ports in {PRIVATE_PORTS_FROM}-{first_ephemeral - 1}")


def _ephemeral_range_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems differ but rarely go lower


def _kernel_ports(count: int, host: str) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def write_configs(plan: ClusterPlan, only: Sequence[str] | None = None) -> dict[str, Path]:
    """Write every role's config, or only those named in `only` (and create the data
    directories); returns the paths of every role's config."""
    plan.conf_dir.mkdir(parents=True, exist_ok=True)
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    plan.master_state_dir.mkdir(parents=True, exist_ok=True)
    for name in plan.slave_names():
        plan.slave_root(name).mkdir(parents=True, exist_ok=True)
    if plan.curve:
        write_keys(plan)
    paths = {}
    for role, text in render_configs(plan).items():
        path = plan.config_path(role)
        if only is None or role in only:
            path.write_text(text)
        paths[role] = path
    return paths


def write_keys(plan: ClusterPlan) -> list[Path]:
    """Make every key pair of `plan` that is missing (existing ones are kept, as configs
    are); returns the secret key files written now."""
    from common.curve import generate
    made = []
    for role, name in plan.key_pairs():
        if not plan.secret_key(role, name).exists():
            made.append(generate(plan.keys_dir, role, name)[1])
        else:
            generate(plan.keys_dir, role, name, keep=True)
    for role in ("master", "slave", "stats"):
        plan.key_dir(role).mkdir(parents=True, exist_ok=True)
    return made


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM if the launcher itself is killed outright."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn_role(module: str, config: Path, log: IO[bytes], *,
               new_group: bool = True) -> subprocess.Popen[bytes]:
    """Start `python -m module --config config` with stdout and stderr going to `log`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=new_group,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def query_online(host: str, port: int, user: str, password: str, timeout: float = 2.0) -> list[str] | None:
    """Slaves online according to the master (None when it cannot be asked yet)."""
    try:
        with ftplib.FTP(timeout=timeout) as ftp:
            ftp.connect(host, port)
            ftp.login(user, password)
            return online_slaves(ftp.sendcmd("SITE SLAVES"))
    except (OSError, EOFError, ftplib.Error):
        return None


def stop_processes(procs: list[subprocess.Popen[bytes]], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every live process, wait up to `grace` seconds, then SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the supervisor

@dataclass
class _Role:
    name: str
    module: str
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay: float | None = None
    restart_at: float | None = None


def _say(text: str) -> None:
    print(f"ftpcluster: {text}", flush=True)


def run_local_cluster(port: int | None = None, slaves: int | None = None, data: str = "./var",
                      host: str | None = None) -> int:
    """Run broker, master and the slaves until Ctrl-C or SIGTERM; returns the exit code.
    None means "not given": the existing configs or the defaults decide (see decide_start).
    Raises ConfigError for a bad existing config."""
    if host is not None:
        refusal = loopback_refusal(host)
        if refusal:
            print(f"ftpcluster: {refusal}", file=sys.stderr)
            return 2
    if slaves is not None and not 1 <= slaves <= MAX_SLAVES:
        print(f"ftpcluster: --slaves must be between 1 and {MAX_SLAVES}, not {slaves}", file=sys.stderr)
        return 2
    if port is not None and not 1 <= port <= 65535:
        print(f"ftpcluster: --port must be between 1 and 65535, not {port}", file=sys.stderr)
        return 2

    data_dir = Path(data).resolve()
    existing = read_existing(data_dir / "conf")
    decision = decide_start(existing, port=port, host=host, slaves=slaves, fresh_ports=free_ports(8))
    if not 1 <= decision.slaves <= MAX_SLAVES:
        print(f"ftpcluster: {decision.slaves} slaves (slave1..slave{decision.slaves}.toml in "
              f"{existing.conf_dir}): at most {MAX_SLAVES}; pass --slaves N", file=sys.stderr)
        return 2
    host, port, slaves = decision.ftp_host, decision.ftp_port, decision.slaves
    if "master" in decision.write:
        refusal = loopback_refusal(host)
        if refusal:
            print(f"ftpcluster: {refusal}", file=sys.stderr)
            return 2
    if port_in_use(host, port):
        where = (f"edit listen_port in {existing.conf_dir / 'master.toml'}" if existing.listen
                 else "choose another with --port")
        print(f"ftpcluster: {host}:{port} is already in use ({where})", file=sys.stderr)
        return 1

    users: tuple[User, ...] = ()
    if "master" in decision.write:
        from master.users import hash_password
        users = (User(DEMO_USER, hash_password(DEMO_PASSWORD)),)
    # CURVE on, unless an existing broker.toml (the operator's) runs without it: then the
    # configs written now must not use it either.
    master_tls, slave_tls = tls_settings(data_dir, [f"slave{i}" for i in range(1, slaves + 1)])
    plan = ClusterPlan(data=data_dir, ftp_host=host, ftp_port=port, slaves=slaves,
                       ports=decision.ports, users=users, curve=existing.curve is not False,
                       master_extra=master_tls, per_slave=slave_tls)
    paths = write_configs(plan, only=decision.write)
    for notice in decision.notices:
        _say(notice)
    if existing.roles:
        kept = len(plan.roles()) - len(decision.write)
        wrote = f"; wrote {', '.join(n + '.toml' for n in decision.write)}" if decision.write else ""
        _say(f"using the existing configs in {plan.conf_dir} ({kept} kept{wrote})")
    roles = [_Role(name, module, paths[name], plan.log_dir / f"{name}.log")
             for name, module in plan.roles()]

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(role: _Role) -> None:
        with open(role.log_path, "ab") as log:
            role.proc = spawn_role(role.module, role.config, log)
        role.started_at = time.monotonic()
        role.restart_at = None

    try:
        for role in roles:
            start(role)
        up = False
        began = time.monotonic()
        noticed_slow = False
        next_poll = 0.0
        while not stopping:
            now = time.monotonic()
            for role in roles:
                if role.proc is not None and role.restart_at is None:
                    code = role.proc.poll()
                    if code is not None:
                        if now - role.started_at >= STABLE_AFTER_S:
                            role.delay = None
                        role.delay = backoff_delay(role.delay)
                        role.restart_at = now + role.delay
                        _say(f"{role.name} exited unexpectedly ({_describe_exit(code)}); "
                             f"restarting it in {role.delay:g} s (log: {role.log_path})")
                elif role.restart_at is not None and now >= role.restart_at:
                    start(role)
                    _say(f"{role.name} restarted (pid {role.proc.pid})")  # type: ignore[union-attr]  # start() sets proc
            if not up and now >= next_poll:
                next_poll = now + 0.5
                online = query_online(host, port, DEMO_USER, DEMO_PASSWORD)
                if online is not None and len(online) >= slaves:
                    up = True
                    _say(f"ftp://{DEMO_USER}:{DEMO_PASSWORD}@{_url_host(host)}:{port}/ "
                         f"is up with {slaves} slaves")
                elif not noticed_slow and now - began > SLOW_START_NOTICE_S:
                    noticed_slow = True
                    _say(f"still waiting for {slaves} slaves to come online "
                         f"({len(online or [])} so far); logs are in {plan.log_dir}")
            time.sleep(POLL_INTERVAL_S)
    finally:
        stop_processes([r.proc for r in roles if r.proc is not None])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
