"""master.users: scrypt hashes and the virtual-path authorizer."""

from __future__ import annotations

import base64
import os.path

import pytest
from pyftpdlib.exceptions import AuthenticationFailed

from common.config import UserEntry
from master.users import ClusterAuthorizer, hash_password, verify_password

SECRET = "s3cret pass"


@pytest.fixture(scope="module")
def hashed() -> str:
    return hash_password(SECRET)


def test_hash_format(hashed: str) -> None:
    algo, n, r, p, salt, key = hashed.split("$")
    assert (algo, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(key, validate=True)) == 32
    assert SECRET not in hashed


def test_hashes_are_salted() -> None:
    assert hash_password("x") != hash_password("x")


def test_round_trip(hashed: str) -> None:
    assert verify_password(SECRET, hashed)
    unicode_hash = hash_password("pässwörd 日本")
    assert verify_password("pässwörd 日本", unicode_hash)
    assert verify_password("", hash_password(""))


@pytest.mark.parametrize("attempt", ["", "s3cret", SECRET + " ", SECRET.upper(), "\ud800"])
def test_wrong_password(hashed: str, attempt: str) -> None:
    assert not verify_password(attempt, hashed)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SALT, KEY = _b64(b"s" * 16), _b64(b"k" * 32)


@pytest.mark.parametrize("encoded", [
    "",
    "scrypt",
    SECRET,
    f"bcrypt$16384$8$1${SALT}${KEY}",
    f"scrypt$16384$8$1${SALT}",
    f"scrypt$16384$8$1${SALT}${KEY}$extra",
    f"scrypt$x$8$1${SALT}${KEY}",
    f"scrypt$16384$8$${SALT}${KEY}",
    f"scrypt$16383$8$1${SALT}${KEY}",  # N not a power of two
    f"scrypt$1$8$1${SALT}${KEY}",
    f"scrypt${2 ** 30}$8$1${SALT}${KEY}",  # absurd memory
    f"scrypt$16384$0$1${SALT}${KEY}",
    f"scrypt$16384$8$99${SALT}${KEY}",
    f"scrypt$-16384$8$1${SALT}${KEY}",
    f"scrypt$16384$8$1$not base64!${KEY}",
    f"scrypt$16384$8$1${SALT}$***",
    f"scrypt$16384$8$1$${KEY}",  # empty salt
    f"scrypt$16384$8$1${SALT}${_b64(b'k' * 4)}",  # key too short
    "scrypt$16384$8$1$é$é",
])
def test_malformed_hash_is_false(encoded: str) -> None:
    assert verify_password(SECRET, encoded) is False


# ------------------------------------------------------------------ authorizer

@pytest.fixture
def authorizer(hashed: str, monkeypatch: pytest.MonkeyPatch) -> ClusterAuthorizer:
    def no_disk(*args: object) -> bool:
        raise AssertionError("the authorizer must not look at the master's disk")

    monkeypatch.setattr(os.path, "isdir", no_disk)
    monkeypatch.setattr(os.path, "realpath", no_disk)
    return ClusterAuthorizer([
        UserEntry(name="alice", password_hash=hashed, home="/pub/alice", perms="elr"),
        UserEntry(name="bob", password_hash=hashed, home="/", perms="elradfmwMTS"),
        UserEntry(name="carol", password_hash=hash_password("other"), home="/x/../drop/", perms="elrw"),
    ])


def test_authentication(authorizer: ClusterAuthorizer) -> None:
    authorizer.validate_authentication("alice", SECRET, None)
    authorizer.validate_authentication("alice", SECRET, None)  # remembered: still fine
    authorizer.validate_authentication("carol", "other", None)
    for user, password in [("alice", "wrong"), ("alice", ""), ("carol", SECRET), ("nobody", SECRET),
                           ("anonymous", ""), ("alice", "\ud800")]:
        with pytest.raises(AuthenticationFailed):
            authorizer.validate_authentication(user, password, None)


def test_stores_only_the_hash(authorizer: ClusterAuthorizer, hashed: str) -> None:
    assert authorizer.user_table["alice"]["pwd"] == hashed
    assert SECRET not in repr(authorizer.user_table)


def test_virtual_home(authorizer: ClusterAuthorizer) -> None:
    assert authorizer.get_home_dir("alice") == "/pub/alice"  # not on the master's disk
    assert authorizer.get_home_dir("bob") == "/"
    assert authorizer.get_home_dir("carol") == "/drop"


@pytest.mark.parametrize("user, perm, path, expected", [
    ("alice", "r", None, True),
    ("alice", "w", None, False),
    ("alice", "r", "/pub/alice/file", True),
    ("alice", "l", "/pub/alice", True),
    ("alice", "w", "/pub/alice/file", False),
    ("alice", "r", "/etc/passwd", False),  # outside the home
    ("alice", "r", "/pub/alice/../bob/f", False),
    ("alice", "r", "/pub/alicex", False),
    ("alice", "r", "/pub", False),
    ("alice", "r", "/pub/alice/\x00", False),
    ("alice", "S", None, False),
    ("bob", "w", "/anything/at/all", True),
    ("bob", "S", None, True),
    ("bob", "M", "/", True),
    ("bob", "", None, False),
    ("bob", "rw", None, False),  # one letter at a time
    ("carol", "w", "/drop/f", True),
    ("carol", "d", "/drop/f", False),
    ("nobody", "r", None, False),
])
def test_has_perm(authorizer: ClusterAuthorizer, user: str, perm: str, path: str | None,
                  expected: bool) -> None:
    assert authorizer.has_perm(user, perm, path) is expected


def test_admin_letter(authorizer: ClusterAuthorizer) -> None:
    assert authorizer.is_admin("bob")
    assert not authorizer.is_admin("alice")
    assert not authorizer.is_admin("nobody")
    assert "S" in authorizer.get_perms("bob")


def test_messages(authorizer: ClusterAuthorizer) -> None:
    assert authorizer.get_msg_login("alice") == "Login successful."
    assert authorizer.get_msg_quit("alice") == "Goodbye."
    assert authorizer.get_msg_quit("nobody") == "Goodbye."


def test_remove_user_forgets_login(authorizer: ClusterAuthorizer) -> None:
    authorizer.validate_authentication("alice", SECRET, None)
    authorizer.remove_user("alice")
    with pytest.raises(AuthenticationFailed):
        authorizer.validate_authentication("alice", SECRET, None)


@pytest.mark.parametrize("entry, message", [
    (UserEntry(name="u", password_hash="HASH", perms="elrX"), "permission"),
    (UserEntry(name="u", password_hash="plain-text", perms="elr"), "scrypt"),
    (UserEntry(name="u", password_hash="HASH", home="relative"), "home"),
])
def test_invalid_users(hashed: str, entry: UserEntry, message: str) -> None:
    import msgspec

    entry = msgspec.structs.replace(entry, password_hash=entry.password_hash.replace("HASH", hashed))
    with pytest.raises(ValueError, match=message):
        ClusterAuthorizer([entry])


def test_duplicate_user(hashed: str) -> None:
    entry = UserEntry(name="u", password_hash=hashed)
    with pytest.raises(ValueError, match="already exists"):
        ClusterAuthorizer([entry, entry])


def test_unsupported_disk_features(authorizer: ClusterAuthorizer) -> None:
    with pytest.raises(NotImplementedError):
        authorizer.add_anonymous("/")
    with pytest.raises(NotImplementedError):
        authorizer.override_perm("alice", "/pub/alice/x", "elr")


def test_tls_overrides_per_user_and_on_reload(hashed: str) -> None:
    auth = ClusterAuthorizer([UserEntry(name="strict", password_hash=hashed, tls_control="required"),
                              UserEntry(name="plain", password_hash=hashed, tls_data="off")])
    assert auth.tls_override("strict") == ("required", None)
    assert auth.tls_override("plain") == (None, "off")
    assert auth.tls_override("nobody") == (None, None)  # the master's policy: names are not revealed
    auth.replace_users([UserEntry(name="strict", password_hash=hashed, tls_data="required")])
    assert auth.tls_override("strict") == (None, "required")
    assert auth.tls_override("plain") == (None, None)
