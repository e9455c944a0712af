"""Users from the master's TOML: scrypt password hashes and a virtual-path authorizer.

Passwords are never stored in plain text: `ftpcluster hash-password` prints the
`scrypt$N$r$p$salt$hash` string that goes in the config.

The authorizer never looks at the master's disk: homes and the paths pyftpdlib asks about
(the result of our AbstractedFS.ftp2fs) are virtual paths. Permission letters are
pyftpdlib's "elradfmwMT" plus our own "S" (SITE admin commands).

Cost: one scrypt check takes about 40 ms of CPU; the master runs it on a small worker pool
(`check_password`), never on its IOLoop thread.
A successful login is remembered as an HMAC of the password under a per-process random key,
so a user logging in again with the same password is checked in microseconds; a wrong
password always pays the full scrypt cost.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.exceptions import AuthenticationFailed

from common.config import TlsMode, UserEntry
from common.passwords import (  # noqa: F401
    KEY_BYTES,
    SALT_BYTES,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    hash_password as hash_password,
    parse_hash,
    verify_password as verify_password,
)

log = logging.getLogger(__name__)

PERM_LETTERS = "elradfmwMTS"
ADMIN_PERM = "S"
VERIFY_THREADS = 2
"""Worker threads for scrypt checks (hashlib.scrypt releases the GIL): the IOLoop never runs one."""

_parse = parse_hash  # the old private name


def _virtual(path: str) -> str:
    """Normalised absolute virtual path (no disk access); "" for a path with NUL."""
    if "\x00" in path:
        return ""
    return posixpath.normpath("/" + path).replace("//", "/")


def _within(path: str, home: str) -> bool:
    return home == "/" or path == home or path.startswith(home + "/")


class ClusterAuthorizer(DummyAuthorizer):
    """pyftpdlib authorizer over virtual paths: never looks at the master's own disk."""

    user_table: dict[str, Any]  # DummyAuthorizer's (untyped) table

    def __init__(self, users: list[UserEntry]) -> None:
        """Raises ValueError for a duplicate user, an unknown permission letter, a relative
        home or a password hash that is not a well-formed scrypt hash."""
        super().__init__()
        self._login_key = os.urandom(32)
        self._remembered: dict[str, bytes] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._tls: dict[str, tuple[TlsMode | None, TlsMode | None]] = {}
        for user in users:
            self.add_user(user.name, user.password_hash, user.home, user.perms)
            self._tls[user.name] = (user.tls_control, user.tls_data)

    # -- users
    def add_user(self, username: str, password: str, homedir: str, perm: str = "elr",
                 msg_login: str = "Login successful.", msg_quit: str = "Goodbye.") -> None:
        """Add a user. `password` is a hash from `hash_password` (never plain text) and
        `homedir` a virtual path; raises ValueError."""
        if self.has_user(username):
            raise ValueError(f"user {username!r} already exists")
        if _parse(password) is None:
            raise ValueError(f"user {username!r}: password is not a scrypt hash from "
                             "`ftpcluster hash-password`")
        if not homedir.startswith("/") or not _virtual(homedir):
            raise ValueError(f"user {username!r}: home {homedir!r} is not an absolute virtual path")
        bad = sorted(set(perm) - set(PERM_LETTERS))
        if bad:
            raise ValueError(f"user {username!r}: no such permission {''.join(bad)!r}")
        self.user_table[username] = {
            "pwd": password, "home": _virtual(homedir), "perm": perm, "operms": {},
            "msg_login": str(msg_login), "msg_quit": str(msg_quit),
        }

    def add_anonymous(self, homedir: str, **kwargs: Any) -> None:
        raise NotImplementedError("anonymous access is not supported; configure a [[users]] entry")

    def override_perm(self, username: str, directory: str, perm: str, recursive: bool = False) -> None:
        raise NotImplementedError("per-directory permissions are not supported")

    def replace_users(self, users: list[UserEntry]) -> None:
        """Swap the whole user table (SIGHUP reload): validated first, so on ValueError the
        old users stay. Logged-in sessions keep going with their user's new permissions."""
        fresh = ClusterAuthorizer(users)
        self.user_table = fresh.user_table
        self._tls = fresh._tls
        self._remembered.clear()

    def remove_user(self, username: str) -> None:
        super().remove_user(username)
        self._remembered.pop(username, None)

    # -- authentication
    def _fingerprint(self, username: str, password: str) -> bytes:
        data = f"{username}\x00{password}".encode("utf-8", "surrogatepass")
        return hmac.new(self._login_key, data, hashlib.sha256).digest()

    def validate_authentication(self, username: str, password: str, handler: object) -> None:
        """Raises AuthenticationFailed for an unknown user or a wrong password.

        An unknown user costs a full scrypt check too, so timing does not reveal which
        names exist.
        """
        table = self.user_table
        user = table.get(username)
        if user is None:
            verify_password(password, _DUMMY_HASH)
            raise AuthenticationFailed("Authentication failed.")
        fingerprint = self._fingerprint(username, password)
        remembered = self._remembered.get(username)
        if remembered is not None and hmac.compare_digest(remembered, fingerprint):
            return
        if not verify_password(password, user["pwd"]):
            raise AuthenticationFailed("Authentication failed.")
        if self.user_table is table:  # not replaced (SIGHUP) while this ran on a worker
            self._remembered[username] = fingerprint

    def check_password(self, username: str, password: str,
                       done: Callable[[AuthenticationFailed | None], None]) -> None:
        """validate_authentication on a worker thread: `done(None)` on success, else
        `done(AuthenticationFailed)`, called on the worker thread (the caller posts it back to
        its loop). A remembered login is answered at once, on the caller's thread."""
        user = self.user_table.get(username)
        if user is not None:
            remembered = self._remembered.get(username)
            if remembered is not None and hmac.compare_digest(
                    remembered, self._fingerprint(username, password)):
                done(None)
                return

        def work() -> None:
            try:
                self.validate_authentication(username, password, None)
            except AuthenticationFailed as err:
                done(err)
            except Exception:
                log.exception("password check for %r failed", username)
                done(AuthenticationFailed("Authentication failed."))
            else:
                done(None)

        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=VERIFY_THREADS,
                                                thread_name_prefix="pwcheck")
            pool = self._pool
        pool.submit(work)

    def close(self) -> None:
        """Stop the worker pool (checks already queued still run)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    # -- questions pyftpdlib and the SITE commands ask
    def get_home_dir(self, username: str) -> str:
        """The user's virtual home directory."""
        return str(self.user_table[username]["home"])

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        """Whether `username` has permission letter `perm` (one of "elradfmwMTS").

        With `path` (a virtual path, as returned by our ftp2fs), also False when the path is
        outside the user's home. An unknown user has no permission.
        """
        user = self.user_table.get(username)
        if user is None or len(perm) != 1 or perm not in user["perm"]:
            return False
        if path is None:
            return True
        virtual = _virtual(path)
        return bool(virtual) and _within(virtual, user["home"])

    def is_admin(self, username: str) -> bool:
        """Whether the user may run SITE admin commands (permission letter "S")."""
        return self.has_perm(username, ADMIN_PERM)

    def tls_override(self, username: str) -> tuple[TlsMode | None, TlsMode | None]:
        """The user's own tls_control and tls_data (None: the master's); (None, None) for
        an unknown name, so a refusal never tells which names exist."""
        return self._tls.get(username, (None, None))

    def get_msg_login(self, username: str) -> str:
        return str(self.user_table[username]["msg_login"])

    def get_msg_quit(self, username: str) -> str:
        user = self.user_table.get(username)
        return str(user["msg_quit"]) if user is not None else "Goodbye."


_DUMMY_HASH = "scrypt$16384$8$1$" + base64.b64encode(b"\x00" * SALT_BYTES).decode() + "$" + \
    base64.b64encode(b"\x00" * KEY_BYTES).decode()
"""Checked against for unknown users (never matches a real login: no user has this name)."""
