"""ZeroMQ socket set-up in one place: linger 0, ZMTP heartbeats, reconnect back-off.

Every role creates its sockets here, so transport security (CURVE) can be switched on
in one module later. See shared/reference/zeromq.md for why each option is set.
"""

from __future__ import annotations

from typing import Callable, cast

import zmq

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


def bound_router(ctx: zmq.SyncContext, endpoint: str) -> zmq.SyncSocket:
    """A ROUTER that raises on unroutable sends (EHOSTUNREACH) instead of dropping silently."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, 10000)
    sock.setsockopt(zmq.RCVHWM, 10000)
    sock.bind(endpoint)
    return sock


def connected_dealer(ctx: zmq.SyncContext, endpoint: str) -> zmq.SyncSocket:
    """A DEALER to the broker; auto-generated routing id (the name travels in Hello)."""
    sock = ctx.socket(zmq.DEALER)
    _common(sock)
    sock.setsockopt(zmq.SNDHWM, 10000)
    sock.setsockopt(zmq.RCVHWM, 10000)
    # Queue only towards completed connections: messages for a dead broker are not
    # replayed to a restarted one that never saw our Hello.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(endpoint)
    return sock


def bound_xsub(ctx: zmq.SyncContext, endpoint: str) -> zmq.SyncSocket:
    sock = ctx.socket(zmq.XSUB)
    _common(sock)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.bind(endpoint)
    return sock


def bound_xpub(ctx: zmq.SyncContext, endpoint: str) -> zmq.SyncSocket:
    """XPUB that reports every subscription, so the broker can replay its last-value cache."""
    sock = ctx.socket(zmq.XPUB)
    _common(sock)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    # Subscribers may send arbitrary frames upstream; stats are small.
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.bind(endpoint)
    return sock


def connected_pub(ctx: zmq.SyncContext, endpoint: str) -> zmq.SyncSocket:
    sock = ctx.socket(zmq.PUB)
    _common(sock)
    sock.connect(endpoint)
    return sock


def connected_sub(ctx: zmq.SyncContext, endpoint: str, prefix: bytes = b"") -> zmq.SyncSocket:
    sock = ctx.socket(zmq.SUB)
    _common(sock)
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
