"""systemd's readiness protocol (sd_notify) without a dependency: one datagram to $NOTIFY_SOCKET.

Each role calls `ready()` once it is really serving (broker: sockets bound; master: FTP
listener open and registered with the broker; slave: Welcome received) and `stopping()`
when a graceful stop begins. Outside systemd (no NOTIFY_SOCKET) every call does nothing.
Errors are swallowed: readiness reporting must never stop a role.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping

__all__ = ["notify", "ready", "stopping", "reloading"]


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` ("READY=1", "STATUS=...", newline-separated) to systemd; returns
    whether it was sent. An address starting with "@" is in the abstract namespace."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str = "") -> bool:
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def reloading(done: bool, status: str = "") -> bool:
    """RELOADING=1 when a reload starts, READY=1 when it is over."""
    return notify(("RELOADING=1" if not done else "READY=1") + (f"\nSTATUS={status}" if status else ""))
