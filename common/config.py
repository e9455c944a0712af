"""TOML configuration for every role, decoded into msgspec Structs.

A bad file stops the program with one line: the file, the key and what was expected
(ConfigError's message). Unknown keys are errors, so a misspelt key is never ignored.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from common.passwords import hash_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
LogLevel = Literal["debug", "info", "warning", "error"]
TlsMode = Literal["off", "allowed", "required"]
"""FTPS (RFC 4217) for the control or the data connections: never, when the client asks
(AUTH TLS, PROT P), or always (530 before AUTH TLS, 521 for a transfer without PROT P)."""


class ConfigError(Exception):
    """One line naming the file, the key and the problem."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Config sections reject unknown keys and are immutable once loaded."""


class LogSection(_Section, frozen=True):
    level: LogLevel = "info"


# ---------------------------------------------------------------- broker

class BrokerSection(_Section, frozen=True):
    master_endpoint: str = "tcp://127.0.0.1:5550"
    """ROUTER the master's DEALER connects to."""
    slave_endpoint: str = "tcp://127.0.0.1:5551"
    """ROUTER the slaves' DEALERs connect to."""
    stats_in_endpoint: str = "tcp://127.0.0.1:5552"
    """XSUB the slaves' stats PUBs connect to."""
    stats_out_endpoint: str = "tcp://127.0.0.1:5553"
    """XPUB stats subscribers (master, `ftpcluster stats`) connect to."""
    heartbeat_ms: Positive = 1000
    liveness: Positive = 5


class BrokerCurveSection(_Section, frozen=True):
    """CURVE on every broker socket: its own key pair and one public-key directory per role
    (each peer's key must be listed there; SIGHUP reloads the directories)."""

    secret_key: str
    """The broker's secret key file (`ftpcluster keygen broker`: broker.key_secret)."""
    master_keys: str
    """Directory of the master's public keys (*.key): admitted on master_endpoint, and as a
    subscriber on stats_out_endpoint."""
    slave_keys: str
    """Directory of slave public keys, each named <slave name>.key: admitted on slave_endpoint
    (registering that name only) and as a publisher on stats_in_endpoint."""
    stats_keys: str
    """Directory of stats subscribers' public keys (`ftpcluster stats`): stats_out only."""


class BrokerConfig(_Section, frozen=True):
    broker: BrokerSection = msgspec.field(default_factory=BrokerSection)
    log: LogSection = msgspec.field(default_factory=LogSection)
    curve: BrokerCurveSection | None = None
    """None: no CURVE (refused on any endpoint off loopback)."""


class ClientCurveSection(_Section, frozen=True):
    """A master's or a slave's CURVE identity towards the broker."""

    secret_key: str
    """This role's secret key file (from `ftpcluster keygen`)."""
    broker_key: str
    """The broker's public key file (broker.key)."""


# ---------------------------------------------------------------- slave

class SlaveSection(_Section, frozen=True):
    name: Name
    root: str
    """Storage directory; the slave never touches a path outside it."""
    create_root: bool = False
    """Create `root` when it is missing; by default a missing root stops the slave, so a typo
    never starts an empty store."""
    broker_endpoint: str = "tcp://127.0.0.1:5551"
    stats_endpoint: str = "tcp://127.0.0.1:5552"
    data_bind: str = "127.0.0.1"
    """Local address data sockets bind to (passive listeners, active connects)."""
    data_host: str = ""
    """Address clients are told in 227 replies; empty means data_bind."""
    passive_ports: tuple[Port, Port] | None = None
    """Inclusive port range for passive listeners; None lets the kernel choose."""
    passive_pool: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 32
    """Passive listeners opened at start and lent by the master one transfer at a time, so
    a PASV after PRET is answered without asking the slave (0: open one per PASV). With
    passive_ports set, at most half of that range is pooled."""
    max_transfers: Positive = 256
    stats_interval_ms: Positive = 2000
    fsync: bool = True
    """fsync every upload before reporting it done: an acknowledged upload survives a crash."""
    data_timeout: Positive = 300
    """Seconds a data connection may stall (or a listener wait) before it is dropped."""
    stop_timeout: Annotated[int, msgspec.Meta(ge=0)] = 10
    """SIGTERM: seconds to let running transfers finish (new ones are refused) before the
    rest are aborted; a second SIGTERM aborts at once."""
    tls_certfile: str = ""
    """PEM certificate (chain) this slave shows on PROT P data connections; empty: no TLS
    data connections on this slave (a PROT P transfer sent to it is refused)."""
    tls_keyfile: str = ""
    """PEM private key of tls_certfile; empty: the key is in tls_certfile."""


class SlaveConfig(_Section, frozen=True):
    slave: SlaveSection
    log: LogSection = msgspec.field(default_factory=LogSection)
    curve: ClientCurveSection | None = None


# ---------------------------------------------------------------- master

class UserEntry(_Section, frozen=True):
    name: Name
    password_hash: str
    """From `ftpcluster hash-password`; plain-text passwords are refused."""
    home: str = "/"
    perms: str = "elr"
    """pyftpdlib permission letters: e l r a d f m w M T (plus S for SITE admin commands)."""
    tls_control: TlsMode | None = None
    """This user's control-connection TLS, instead of master.tls_control."""
    tls_data: TlsMode | None = None
    """This user's data-connection TLS, instead of master.tls_data."""


class MasterSection(_Section, frozen=True):
    listen_host: str = "127.0.0.1"
    listen_port: Port = 2121
    broker_endpoint: str = "tcp://127.0.0.1:5550"
    stats_endpoint: str = "tcp://127.0.0.1:5553"
    state_dir: str = "./var/master"
    passive_without_pret: Literal["relay", "refuse"] = "relay"
    """PASV/EPSV without PRET (or EPSV to a slave not on the master's address)."""
    passive_ports: tuple[Port, Port] | None = None
    """Port range of the master's own passive listeners (listings and relay)."""
    masquerade_address: str = ""
    max_connections: Positive = 512
    max_connections_per_ip: Annotated[int, msgspec.Meta(ge=0)] = 16
    """Control connections at once from one address (beyond it: 421); 0 = no limit, which
    lets one address take all of max_connections."""
    login_timeout: Positive = 30
    """Seconds a connection may stay without logging in before it is closed (421), so idle
    connections cannot hold the slots for idle_timeout."""
    failed_login_limit: Annotated[int, msgspec.Meta(ge=0)] = 10
    """Failed logins from one address (an IPv6 /64), across connections, within
    failed_login_window seconds that ban it for failed_login_ban seconds; 0 = no ban."""
    failed_login_window: Positive = 60
    failed_login_ban: Positive = 300
    idle_timeout: Positive = 300
    request_timeout: Positive = 10
    """Seconds to wait for a slave's answer to a command before failing the FTP command."""
    banner: str = "ftpcluster ready."
    allow_demo_password_off_loopback: bool = False
    stop_timeout: Annotated[int, msgspec.Meta(ge=0)] = 30
    """Seconds SIGTERM waits for running transfers (no new connections meanwhile); a second
    SIGTERM stops at once."""
    max_relays: Positive = 64
    """Relayed transfers (PASV/EPSV without PRET: one copying thread each) at once; beyond
    it the transfer command gets 425 and the client is told to use PRET."""
    tls_certfile: str = ""
    """PEM certificate (chain) for AUTH TLS on the control connection and for the master's
    own TLS data connections (listings, relayed transfers); empty: no FTPS at all."""
    tls_keyfile: str = ""
    """PEM private key of tls_certfile; empty: the key is in tls_certfile."""
    tls_control: TlsMode = "allowed"
    """AUTH TLS on the control connection (with tls_certfile set)."""
    tls_data: TlsMode = "allowed"
    """PROT P data connections (with tls_certfile set); users may override both."""


class PlacementWeights(_Section, frozen=True):
    """Score weights (master.placement documents the terms); 0 switches a term off."""

    free_space: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    active_transfers: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    bandwidth: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    load: Annotated[float, msgspec.Meta(ge=0)] = 1.0


class PathRule(_Section, frozen=True):
    """For virtual paths matching `glob` (fnmatch; `*` also matches "/")."""

    glob: str
    allow: list[Name] = msgspec.field(default_factory=list)
    """Non-empty: only these slaves."""
    forbid: list[Name] = msgspec.field(default_factory=list)
    prefer: list[Name] = msgspec.field(default_factory=list)
    prefer_points: float = 100.0


class DirectionPolicy(_Section, frozen=True):
    require_fresh_stats: bool = True
    """Exclude a slave whose stats stopped arriving (a slave that never sent any is not stale)."""
    min_free_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * 1024 * 1024
    min_free_by_slave: dict[str, Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=dict)
    max_active: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Cap on a slave's active transfers for this direction; 0 = the slave's max_transfers."""
    weights: PlacementWeights = msgspec.field(default_factory=PlacementWeights)
    rules: list[PathRule] = msgspec.field(default_factory=list)


class PlacementSection(_Section, frozen=True):
    upload: DirectionPolicy = msgspec.field(default_factory=DirectionPolicy)
    download: DirectionPolicy = msgspec.field(default_factory=DirectionPolicy)
    """Free space is never a filter for downloads (min_free_* are ignored there)."""
    replication: DirectionPolicy = msgspec.field(default_factory=DirectionPolicy)


class MasterConfig(_Section, frozen=True):
    master: MasterSection = msgspec.field(default_factory=MasterSection)
    users: list[UserEntry] = msgspec.field(default_factory=list)
    log: LogSection = msgspec.field(default_factory=LogSection)
    placement: PlacementSection = msgspec.field(default_factory=PlacementSection)
    curve: ClientCurveSection | None = None


C = TypeVar("C", BrokerConfig, SlaveConfig, MasterConfig)

_SCRYPT_HASH = re.compile(r"^scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]+)`(?: - at `\$(?P<at>[^`]*)`)?")
_MISSING = re.compile(r"Object missing required field `(?P<key>[^`]+)`(?: - at `\$(?P<at>[^`]*)`)?")
_AT = re.compile(r"^(?P<what>.*?) - at `\$(?P<at>[^`]*)`$")


def _dotted(at: str, key: str | None = None) -> str:
    """`$.master.users[0]` style location -> `master.users[0]`."""
    path = at.lstrip(".")
    if key:
        path = f"{path}.{key}" if path else key
    return path or "(top level)"


def _allowed_values(kind: type, at: str) -> str:
    """For an enum error at `$.a.b`, the allowed values of that Literal field ('' if unknown)."""
    import typing
    current: object = kind
    for part in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[\d+\]", at):
        if isinstance(current, type) and issubclass(current, msgspec.Struct):
            if not part:
                return ""
            current = typing.get_type_hints(current).get(part)
        elif typing.get_origin(current) is list and not part:
            current = typing.get_args(current)[0]
        else:
            return ""
    if typing.get_origin(current) is Literal:
        return ", ".join(repr(v) for v in typing.get_args(current))
    return ""


def format_validation_error(path: str, message: str, kind: type | None = None) -> str:
    """Turn a msgspec validation message into 'FILE: key KEY: problem'."""
    if kind is not None and (match := _AT.match(message)) and message.startswith("Invalid enum value"):
        allowed = _allowed_values(kind, match["at"])
        if allowed:
            return (f"{path}: key {_dotted(match['at'])}: "
                    f"{match['what'][:1].lower()}{match['what'][1:]}, expected one of {allowed}")
    if match := _UNKNOWN.match(message):
        return f"{path}: key {_dotted(match['at'] or '', match['key'])}: unknown key"
    if match := _MISSING.match(message):
        return f"{path}: key {_dotted(match['at'] or '', match['key'])}: required key is missing"
    if match := _AT.match(message):
        return f"{path}: key {_dotted(match['at'])}: {match['what'][:1].lower()}{match['what'][1:]}"
    return f"{path}: {message}"


def load(path: str | Path, kind: type[C]) -> C:
    """Read and validate a TOML config file; raises ConfigError with a one-line message."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return loads(raw.decode("utf-8", errors="replace"), kind, str(path))


def loads(text: str, kind: type[C], source: str = "<config>") -> C:
    """Validate TOML text; raises ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        config = msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(format_validation_error(source, str(exc), kind)) from None
    _check(config, source)
    return config


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_tls_files(source: str, section: str, certfile: str, keyfile: str) -> None:
    """The certificate and key load and match (so a bad file stops the program at start)."""
    if not certfile:
        if keyfile:
            raise ConfigError(f"{source}: key {section}.tls_keyfile: set without {section}.tls_certfile")
        return
    from common.tlsdata import TlsFileError, server_context
    try:
        server_context(certfile, keyfile)
    except TlsFileError as exc:
        raise ConfigError(f"{source}: key {section}.{exc.key}: {exc}") from None


def _check(config: BrokerConfig | SlaveConfig | MasterConfig, source: str) -> None:
    """Cross-field rules that types alone cannot express."""
    if isinstance(config, SlaveConfig):
        _check_tls_files(source, "slave", config.slave.tls_certfile, config.slave.tls_keyfile)
        ports = config.slave.passive_ports
        if ports is not None and ports[0] > ports[1]:
            raise ConfigError(f"{source}: key slave.passive_ports: first port is above the last")
        # 227 replies and the master's relay need a numeric address: never a name to resolve.
        key = "data_host" if config.slave.data_host else "data_bind"
        if not _is_ip(getattr(config.slave, key)):
            raise ConfigError(f"{source}: key slave.{key}: must be an IP address, not a host name")
    if isinstance(config, MasterConfig):
        section = config.master
        _check_tls_files(source, "master", section.tls_certfile, section.tls_keyfile)
        if not section.tls_certfile:
            for key in ("tls_control", "tls_data"):
                if getattr(section, key) == "required":
                    raise ConfigError(f"{source}: key master.{key}: \"required\" needs master.tls_certfile")
            for index, user in enumerate(config.users):
                for key in ("tls_control", "tls_data"):
                    if getattr(user, key) in ("allowed", "required"):
                        raise ConfigError(f"{source}: key users[{index}].{key}: "
                                          f"{getattr(user, key)!r} needs master.tls_certfile")
        if section.tls_control == "off":
            for index, user in enumerate(config.users):
                if user.tls_control in ("allowed", "required"):
                    raise ConfigError(f"{source}: key users[{index}].tls_control: {user.tls_control!r} "
                                      "cannot override master.tls_control = \"off\" (AUTH TLS "
                                      "comes before USER)")
        ports = config.master.passive_ports
        if ports is not None and ports[0] > ports[1]:
            raise ConfigError(f"{source}: key master.passive_ports: first port is above the last")
        for direction in ("upload", "download", "replication"):
            for index, rule in enumerate(getattr(config.placement, direction).rules):
                if not rule.glob.startswith("/"):
                    raise ConfigError(f"{source}: key placement.{direction}.rules[{index}].glob: "
                                      "must be an absolute virtual path pattern")
        seen: set[str] = set()
        for index, user in enumerate(config.users):
            if user.name in seen:
                raise ConfigError(f"{source}: key users[{index}].name: duplicate user {user.name!r}")
            seen.add(user.name)
            if not _SCRYPT_HASH.match(user.password_hash):
                raise ConfigError(
                    f"{source}: key users[{index}].password_hash: expected a hash from "
                    "`ftpcluster hash-password`, not a plain-text password")
            problem = hash_problem(user.password_hash)
            if problem:
                raise ConfigError(f"{source}: key users[{index}].password_hash: not a usable "
                                  f"scrypt hash ({problem}); make one with `ftpcluster hash-password`")
            if not user.home.startswith("/"):
                raise ConfigError(f"{source}: key users[{index}].home: must be an absolute virtual path")
            bad = set(user.perms) - set("elradfmwMTS")
            if bad:
                raise ConfigError(
                    f"{source}: key users[{index}].perms: unknown permission letters {''.join(sorted(bad))!r}")  # noqa: E501
