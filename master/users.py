"""Users from the master's TOML: scrypt password hashes and a virtual-path authorizer.

Passwords are never stored in plain text: `ftpcluster hash-password` prints the
`scrypt$N$r$p$salt$hash` string that goes in the config.
"""

from __future__ import annotations

from pyftpdlib.authorizers import DummyAuthorizer

from common.config import UserEntry


def hash_password(password: str) -> str:
    raise NotImplementedError


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check; False (never an exception) for a malformed hash."""
    raise NotImplementedError


class ClusterAuthorizer(DummyAuthorizer):
    """pyftpdlib authorizer over virtual paths: never looks at the master's own disk."""

    def __init__(self, users: list[UserEntry]) -> None:
        raise NotImplementedError
