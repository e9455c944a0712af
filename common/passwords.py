"""scrypt password hashes (`scrypt$N$r$p$salt$hash`): the pure parser and check, shared by the
config loader (which refuses a malformed hash with a one-line ConfigError) and master.users.

Parameters accepted from a config are capped (N <= 2^16, r <= 16: at most 128 MiB and a few
hundred ms of CPU per check) so that one login can never stall the master for long.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_N = 2 ** 16
"""Largest scrypt N accepted from a config."""
MAX_R = 16
"""Largest scrypt r accepted from a config."""
MAX_P = 16


def hash_password(password: str) -> str:
    """`scrypt$16384$8$1$<salt b64>$<hash b64>` with a fresh random 16-byte salt."""
    salt = os.urandom(SALT_BYTES)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                         dklen=KEY_BYTES)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode("ascii"), base64.b64encode(key).decode("ascii")))


def hash_problem(encoded: str) -> str:
    """Why `encoded` is not an acceptable hash ("" if it is)."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return "expected scrypt$N$r$p$salt$hash"
    try:
        n, r, p = (int(x, 10) for x in parts[1:4])
    except ValueError:
        return "N, r and p must be decimal integers"
    try:
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return "salt and hash must be base64"
    if not (2 <= n <= MAX_N and n & (n - 1) == 0):
        return f"N={n} must be a power of 2 between 2 and {MAX_N}"
    if not 1 <= r <= MAX_R:
        return f"r={r} must be between 1 and {MAX_R}"
    if not 1 <= p <= MAX_P:
        return f"p={p} must be between 1 and {MAX_P}"
    if not salt:
        return "empty salt"
    if not 16 <= len(key) <= 64:
        return "hash must be 16 to 64 bytes"
    return ""


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(n, r, p, salt, key) of a well-formed hash with sane parameters, else None."""
    if hash_problem(encoded):
        return None
    parts = encoded.split("$")
    return (int(parts[1]), int(parts[2]), int(parts[3]), base64.b64decode(parts[4]),
            base64.b64decode(parts[5]))


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check; False (never an exception) for a malformed hash. CPU-bound
    (about 40 ms at the default parameters): the master runs it on a worker thread."""
    parsed = parse_hash(encoded)
    if parsed is None:
        return False
    n, r, p, salt, key = parsed
    try:
        candidate = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r,
                                   p=p, dklen=len(key), maxmem=2 * 128 * n * r * p + (1 << 20))
    except (ValueError, MemoryError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(candidate, key)
