"""Who may connect to the broker: the ZAP handler (pyzmq's zmq.auth) and refusal logging.

One ZAP domain per broker socket, each admitting the public keys of the directories of
its roles (DOMAIN_ROLES). A CURVE peer whose key is listed gets as User-Id the name the
key is listed under (its file's stem): the broker binds a slave's Hello name to it
(broker.registry). Every refusal is logged with the peer's address, once per peer, port
and reason a minute (RefusalLog):
- an unknown key: from the ZAP request (which carries the address);
- no CURVE at all (a NULL-mechanism peer) or a failed CURVE handshake: libzmq refuses
  those before ZAP, so a monitor thread reads the accepted connection's address from its
  file descriptor. That read races libzmq closing the connection: the address can be
  missing ("address unknown") for a peer that hangs up at once; a retrying peer (every
  zmq client) is logged with its address at one of its next attempts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from common.config import BrokerCurveSection
from common.curve import read_key_dir

logger = logging.getLogger("broker.auth")

DOMAIN_ROLES: dict[str, tuple[str, ...]] = {
    "master": ("master",),
    "slave": ("slave",),
    "stats_in": ("slave",),
    "stats_out": ("stats", "master"),
}
"""ZAP domain (= broker socket) -> roles whose keys it admits. A subscriber's key is not
admitted on stats_in, so it cannot publish stats."""
REFUSAL_EVERY_S = 60.0
REFUSAL_PEERS = 4096
"""Peers RefusalLog remembers; beyond it those quiet for a minute are forgotten (no growth
without bound from an attacker with many addresses)."""
MONITOR_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def role_dirs(section: BrokerCurveSection) -> dict[str, Path]:
    return {"master": Path(section.master_keys), "slave": Path(section.slave_keys),
            "stats": Path(section.stats_keys)}


def load_domains(dirs: dict[str, Path]) -> tuple[dict[str, dict[bytes, str]], dict[str, int]]:
    """(ZAP domain -> {z85 public key: listed name}, role -> how many keys it lists);
    raises common.curve.KeyFileError."""
    by_role = {role: read_key_dir(path) for role, path in dirs.items()}
    domains: dict[str, dict[bytes, str]] = {}
    for domain, roles in DOMAIN_ROLES.items():
        merged: dict[bytes, str] = {}
        for role in reversed(roles):  # the first role's name wins for a key in two
            merged.update(by_role[role])
        domains[domain] = merged
    return domains, {role: len(keys) for role, keys in by_role.items()}


class RefusalLog:
    """When to log a refusal: the first of each (domain, address, reason), then at most
    one a `every` seconds with the count since. Pure: the caller passes the time."""

    def __init__(self, every: float = REFUSAL_EVERY_S) -> None:
        self.every = every
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}

    def note(self, domain: str, address: str, reason: str, now: float) -> int | None:
        """A refusal at `now`: how many to report (this one and the unlogged ones before
        it) when a line is due, else None."""
        key = (domain, address, reason)
        if key not in self._last and len(self._last) >= REFUSAL_PEERS:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.every}
        last = self._last.get(key)
        if last is None or now - last[0] >= self.every:
            self._last[key] = (now, 0)
            return 1 + (last[1] if last is not None else 0)
        self._last[key] = (last[0], last[1] + 1)
        return None


@dataclass(frozen=True)
class Refusal:
    domain: str
    address: str
    reason: str


def refusal_line(refusal: Refusal, count: int) -> str:
    """The log line for a refusal (`count` > 1: that many since the last line)."""
    times = f" ({count} times in the last minute)" if count > 1 else ""
    return (f"refused a connection on the {refusal.domain} port from "
            f"{refusal.address or 'an unknown address'}: {refusal.reason}{times}")


class Refusals:
    """RefusalLog behind a lock: the ZAP thread and the monitor thread both log."""

    def __init__(self) -> None:
        self._log = RefusalLog()
        self._lock = threading.Lock()

    def report(self, refusal: Refusal) -> None:
        with self._lock:
            count = self._log.note(refusal.domain, refusal.address, refusal.reason, time.monotonic())
        if count is not None:
            logger.warning("%s", refusal_line(refusal, count))


class KeyAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, admitting in each domain the keys listed for its roles."""

    def __init__(self, ctx: zmq.Context[Any], dirs: dict[str, Path], refusals: Refusals) -> None:
        # pyzmq's own (debug) lines go to a child logger of ours.
        super().__init__(ctx, log=logging.getLogger("broker.auth.zap"))
        self.dirs = dirs
        self.refusals = refusals
        self.names: dict[str, dict[bytes, str]] = {}
        self._request: tuple[str, str] = ("", "")
        """(domain, address) of the ZAP request being answered (one at a time, in its thread)."""

    def load(self) -> dict[str, int]:
        """(Re)read the key directories; raises KeyFileError and then keeps the old keys.
        Returns how many keys each role directory lists."""
        domains, counts = load_domains(self.dirs)
        self.names = domains
        for domain, keys in domains.items():
            self.certs[domain] = dict.fromkeys(keys, True)
        return counts

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 6:
            self._request = (msg[2].decode("utf-8", "replace"), msg[3].decode("utf-8", "replace"))
        await super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The name the key is listed under in the request's domain (it was admitted there)."""
        z85_key = z85.encode(client_public_key)
        return self.names.get(self._request[0], {}).get(z85_key, z85_key.decode("ascii"))

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            domain, address = self._request
            reason = status_text.decode("utf-8", "replace")
            if reason == "Unknown key":
                reason = "its CURVE key is not listed for this port"
            self.refusals.report(Refusal(domain, address, reason))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


_HANDSHAKE_REASONS: dict[int, str] = {
    int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH): "it does not use CURVE (no CURVE key configured?)",
}


def _peer_of(fd: int) -> str:
    """The address of the peer on `fd` (a duplicate is read, libzmq keeps its own), or ""."""
    try:
        dup = os.dup(fd)
    except OSError:
        return ""
    try:
        with socket.socket(fileno=dup) as sock:
            peer = sock.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class HandshakeWatcher:
    """A thread reading the broker sockets' monitors: logs connections refused before ZAP."""

    def __init__(self, sockets: dict[str, zmq.SyncSocket], refusals: Refusals) -> None:
        self.refusals = refusals
        self._monitors = {domain: sock.get_monitor_socket(MONITOR_EVENTS) for domain, sock in sockets.items()}
        self._sockets = sockets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="handshake-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for sock in self._sockets.values():
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        for monitor in self._monitors.values():
            monitor.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        for monitor in self._monitors.values():
            poller.register(monitor, zmq.POLLIN)
        peers: dict[tuple[str, int], str] = {}
        failed: dict[str, str] = {}
        """domain -> why the connection whose DISCONNECTED comes next failed its handshake
        (libzmq's one I/O thread emits the two events back to back)."""
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(200))
            except zmq.ZMQError:
                return
            for domain, monitor in self._monitors.items():
                if monitor not in ready:
                    continue
                while True:
                    try:
                        event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
                    except zmq.ZMQError:
                        break
                    kind, value = event["event"], int(event["value"])
                    if kind == zmq.EVENT_ACCEPTED:
                        peers[(domain, value)] = _peer_of(value)
                    elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                        failed[domain] = _HANDSHAKE_REASONS.get(
                            value, f"CURVE handshake failed (protocol error {value:#x}; wrong broker key?)")
                    elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                        # A peer without CURVE often hangs up first, on seeing our greeting.
                        failed[domain] = ("it broke off the handshake (no CURVE key configured, or "
                                          f"the wrong broker key?): {os.strerror(value) if value else '-'}")
                    elif kind == zmq.EVENT_DISCONNECTED:
                        address = peers.pop((domain, value), "")
                        reason = failed.pop(domain, None)
                        if reason is not None:
                            self.refusals.report(Refusal(domain, address, reason))
