"""IP address helpers: numeric literals only (never a DNS query), the master's source
address toward a slave, and a session's client address without the IPv4-mapped prefix."""

from __future__ import annotations

import socket


def numeric_address(host: str) -> str | None:
    """`host` as a canonical IP literal, or None if it is not one (never a DNS query).
    Slaves must announce an IP address as data_host (common.config checks it)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP,
                                   flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    return str(infos[0][4][0]) if infos else None


def local_address_toward(host: str) -> str:
    """The master's source address for connections to IP `host`: a UDP connect, which sends
    no packet and, on a numeric address, does no DNS lookup (a name gives "127.0.0.1")."""
    ip = numeric_address(host)
    if ip is None:
        return "127.0.0.1"
    probe = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((ip, 9))
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def client_ip(remote_ip: str) -> str:
    """A peer address as the slave compares it (no "::ffff:" prefix on IPv4)."""
    return remote_ip[7:] if remote_ip.startswith("::ffff:") else remote_ip
