"""CURVE keys: key files (zmq.auth certificates), key directories per role, and the checks
that turn a missing or unreadable key into one ConfigError line.

Layout (what `ftpcluster keygen` and `ftpcluster up` write under a keys directory):
  broker.key, broker.key_secret     the broker's pair; every client needs broker.key
  master/<name>.key(_secret)        the master's pair
  slaves/<name>.key(_secret)        one pair per slave; <name> is the slave's name
  stats/<name>.key(_secret)         one pair per stats subscriber (`ftpcluster stats`)
The broker lists one public-key directory per role; the stem of a public key's file is the
name that key is listed under (for a slave: the only name it may register).

No sockets here: the broker's authenticator (broker.auth) and the socket factories
(common.zmqsock) use what this module reads.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

ROLES = ("broker", "master", "slave", "stats")
ROLE_DIRS = {"master": "master", "slave": "slaves", "stats": "stats"}
"""Subdirectory of a keys directory holding each client role's keys."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class KeyFileError(Exception):
    """A key file or directory that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class ServerKeys:
    """A bound socket's CURVE identity (the broker's key pair)."""

    public: bytes
    secret: bytes


@dataclass(frozen=True)
class ClientKeys:
    """A connecting socket's CURVE identity and the broker's public key it expects."""

    public: bytes
    secret: bytes
    server: bytes


def key_paths(keys_dir: Path, role: str, name: str) -> tuple[Path, Path]:
    """(public, secret) key file of `name` in `role` under `keys_dir` (see the layout)."""
    if role == "broker":
        base = keys_dir / "broker"
    else:
        base = keys_dir / ROLE_DIRS[role] / name
    return base.with_name(base.name + ".key"), base.with_name(base.name + ".key_secret")


def generate(keys_dir: Path, role: str, name: str, *, keep: bool = False) -> tuple[Path, Path]:
    """Write a key pair for `name` in `role` (zmq.auth.create_certificates); returns the
    (public, secret) paths. An existing pair is kept with `keep`, else KeyFileError."""
    if role not in ROLES:
        raise KeyFileError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    if role != "broker" and not NAME.match(name):
        raise KeyFileError(f"bad name {name!r}: letters, digits, '_', '.', '-' (at most 64)")
    public, secret = key_paths(keys_dir, role, name)
    if public.exists() or secret.exists():
        if keep and public.exists() and secret.exists():
            return public, secret
        raise KeyFileError(f"{public if public.exists() else secret} already exists: not overwritten")
    public.parent.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)  # the secret key file is readable by its owner only
    try:
        made_public, made_secret = zmq.auth.create_certificates(public.parent, public.stem)
    finally:
        os.umask(old)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def read_public(path: Path) -> bytes:
    """The public key in a key file (public or secret); raises KeyFileError."""
    return _read(path, secret=False)[0]


def read_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a secret key file; raises KeyFileError."""
    public, secret = _read(path, secret=True)
    assert secret is not None
    return public, secret


def _read(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        if path.is_dir():
            raise KeyFileError(f"{path}: is a directory, not a key file")
        with open(path, "rb"):
            pass  # a clear strerror for a missing or unreadable file
        public, secret_key = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyFileError(f"{path}: not a key file (no public-key line)") from None
    if len(public) != 40 or (secret and (secret_key is None or len(secret_key) != 40)):
        what = "secret-key" if secret else "public-key"
        raise KeyFileError(f"{path}: no valid {what} line (a secret key file from "
                        "`ftpcluster keygen` is needed)" if secret else f"{path}: bad {what} line")
    return public, secret_key


def read_key_dir(directory: Path) -> dict[bytes, str]:
    """Public key -> the name it is listed under (its file's stem) for every *.key file in
    `directory`; raises KeyFileError for an unreadable directory or file, a bad name, or one key
    listed under two names."""
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix == ".key")
    except OSError as exc:
        raise KeyFileError(f"{directory}: cannot read the key directory: {exc.strerror or exc}") from None
    names: dict[bytes, str] = {}
    for path in files:
        if not NAME.match(path.stem):
            raise KeyFileError(f"{path}: {path.stem!r} is not a usable name (letters, digits, '_', '.', '-')")
        public = read_public(path)
        if public in names:
            raise KeyFileError(f"{path}: the same key is also listed as {names[public]!r}")
        names[public] = path.stem
    return names


def server_keys(secret_key: str, source: str, key: str) -> ServerKeys:
    """The broker's pair from its config; raises ConfigError naming the file and key."""
    from common.config import ConfigError
    try:
        public, secret = read_pair(Path(secret_key))
    except KeyFileError as exc:
        raise ConfigError(f"{source}: key {key}: {exc}") from None
    return ServerKeys(public=public, secret=secret)


def client_keys(secret_key: str, broker_key: str, source: str, section: str = "curve") -> ClientKeys:
    """A client's pair and the broker's public key from its config; raises ConfigError."""
    from common.config import ConfigError
    try:
        public, secret = read_pair(Path(secret_key))
    except KeyFileError as exc:
        raise ConfigError(f"{source}: key {section}.secret_key: {exc}") from None
    try:
        server = read_public(Path(broker_key))
    except KeyFileError as exc:
        raise ConfigError(f"{source}: key {section}.broker_key: {exc}") from None
    return ClientKeys(public=public, secret=secret, server=server)


def endpoint_is_local(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address or "localhost"; a wildcard
    ("*", 0.0.0.0, ::), an interface name or any other address is not local."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rpartition(":")[0].strip("[]") if ":" in rest else rest
    if ";" in host:  # "source;destination" form of a connect: the destination counts
        host = host.rpartition(";")[2]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
