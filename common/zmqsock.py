"""ZeroMQ socket set-up in one place: linger 0, ZMTP heartbeats, reconnect back-off.

Every role creates its sockets here, and CURVE is switched on here: a bound socket given
ServerKeys is a CURVE server whose peers the broker's ZAP handler (broker.auth) checks in
its ZAP domain; a connecting socket given ClientKeys authenticates with them. See
shared/reference/zeromq.md for why each option is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, cast

import zmq

from common.curve import ClientKeys, ServerKeys

# ZMTP-level heartbeats tear down dead TCP connections (a frozen peer, a vanished host)
# so that DEALERs reconnect; application heartbeats (1 s / 5 s) decide liveness.
ZMTP_HEARTBEAT_IVL_MS = 2000
ZMTP_HEARTBEAT_TIMEOUT_MS = 6000
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 2000
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def new_context() -> zmq.SyncContext:
    """A context whose sockets never block close/term on unsent messages (LINGER 0)."""
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    return ctx


def _common(sock: zmq.SyncSocket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)


def _server(sock: zmq.SyncSocket, keys: ServerKeys | None, domain: str) -> None:
    """CURVE server in ZAP domain `domain`; with no ZAP handler every peer is refused
    (ZAP_ENFORCE_DOMAIN), never admitted."""
    if keys is None:
        return
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def _client(sock: zmq.SyncSocket, keys: ClientKeys | None) -> None:
    if keys is None:
        return
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


def bound_router(ctx: zmq.SyncContext, endpoint: str, keys: ServerKeys | None = None,
                 domain: str = "") -> zmq.SyncSocket:
    """A ROUTER that raises on unroutable sends (EHOSTUNREACH) instead of dropping silently."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
    _server(sock, keys, domain)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, 10000)
    sock.setsockopt(zmq.RCVHWM, 10000)
    sock.bind(endpoint)
    return sock


def connected_dealer(ctx: zmq.SyncContext, endpoint: str, keys: ClientKeys | None = None) -> zmq.SyncSocket:
    """A DEALER to the broker; auto-generated routing id (the name travels in Hello)."""
    sock = ctx.socket(zmq.DEALER)
    _common(sock)
    _client(sock, keys)
    sock.setsockopt(zmq.SNDHWM, 10000)
    sock.setsockopt(zmq.RCVHWM, 10000)
    # Queue only towards completed connections: messages for a dead broker are not
    # replayed to a restarted one that never saw our Hello.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(endpoint)
    return sock


def bound_xsub(ctx: zmq.SyncContext, endpoint: str, keys: ServerKeys | None = None,
               domain: str = "") -> zmq.SyncSocket:
    sock = ctx.socket(zmq.XSUB)
    _common(sock)
    _server(sock, keys, domain)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.bind(endpoint)
    return sock


def bound_xpub(ctx: zmq.SyncContext, endpoint: str, keys: ServerKeys | None = None,
               domain: str = "") -> zmq.SyncSocket:
    """XPUB that reports every subscription, so the broker can replay its last-value cache."""
    sock = ctx.socket(zmq.XPUB)
    _common(sock)
    _server(sock, keys, domain)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    # Subscribers may send arbitrary frames upstream; stats are small.
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.bind(endpoint)
    return sock


def connected_pub(ctx: zmq.SyncContext, endpoint: str, keys: ClientKeys | None = None) -> zmq.SyncSocket:
    sock = ctx.socket(zmq.PUB)
    _common(sock)
    _client(sock, keys)
    sock.connect(endpoint)
    return sock


def connected_sub(ctx: zmq.SyncContext, endpoint: str, prefix: bytes = b"",
                  keys: ClientKeys | None = None) -> zmq.SyncSocket:
    sock = ctx.socket(zmq.SUB)
    _common(sock)
    _client(sock, keys)
    sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect(endpoint)
    return sock


def drain(sock: zmq.SyncSocket, handle: Callable[[list[bytes]], None], limit: int = 10000) -> int:
    """Receive every queued message without blocking; returns how many were handled.

    The zmq FD is edge-triggered: after any send or recv the socket may hold messages
    without the FD firing again, so callers drain on every wake-up and after every send.
    """
    count = 0
    while count < limit and cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        count += 1
        handle(frames)
    return count


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a message, from its frames' metadata: the name its CURVE key is listed under
    (None without CURVE) and its address."""

    key_name: str | None
    address: str


def _property(frame: zmq.Frame, name: str) -> str | None:
    try:
        value = frame.get(name)
    except zmq.ZMQError:  # not set: no CURVE (NULL mechanism)
        return None
    return value if isinstance(value, str) else None


def drain_from(sock: zmq.SyncSocket, handle: Callable[[list[bytes], Peer], None], curve: bool,
               limit: int = 10000) -> int:
    """`drain`, also telling `handle` who sent each message (metadata read only with `curve`)."""
    if not curve:
        return drain(sock, lambda frames: handle(frames, Peer(None, "")), limit)
    count = 0
    while count < limit and cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
        count += 1
        last = frames[-1]
        handle([f.bytes for f in frames],
               Peer(_property(last, "User-Id"), _property(last, "Peer-Address") or "?"))
    return count
