"""Self-signed TLS certificates for a local cluster (`ftpcluster up`): one for the master,
one per slave, so a client can tell which one a data connection reached.

Made once and kept: an existing pair is used as it is (a restart shows the same
certificates, so a client that pinned one keeps working).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 3650


def cert_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """(certificate, key) of `name` ("master", "slave1", ...) under `directory`."""
    return directory / f"{name}.crt", directory / f"{name}.key"


def ensure_self_signed(directory: Path, name: str, now: datetime.datetime | None = None) -> tuple[Path, Path]:
    """The certificate and key of `name` in `directory`, made (P-256, self-signed, for
    localhost, 127.0.0.1 and ::1) when either is missing."""
    cert_path, key_path = cert_paths(directory, name)
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ftpcluster {name}")])
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
