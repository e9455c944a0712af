"""The broker process: sockets, one poll loop, and the stats last-value cache.

This module owns all of the broker's I/O. Routing and liveness decisions live in
`broker.registry`; here frames are decoded (common.wire; a BadFrame is logged and
dropped), handed to the registry, and the `Send` values it returns are sent NOBLOCK on
ROUTER_MANDATORY sockets. A failed send goes back to the registry: `zmq.Again` (over
HWM) fails a command with Undeliverable, EHOSTUNREACH means the peer is gone.

Stats: the broker subscribes upstream on its XSUB to b"stats." itself, forwards every
valid stats message to its XPUB, and keeps the last one per topic. When the XPUB reports
a subscription (XPUB_VERBOSE: b"\\x01" + prefix) the cached stats matching that prefix
are re-sent, so a late subscriber sees every live slave at once. XPUB sends go to every
matching subscriber, so earlier subscribers may see a value twice; `seq` tells them.

CURVE ([curve] in the config): every socket is a CURVE server in its own ZAP domain and
broker.auth admits only listed keys (SIGHUP reloads the key directories). The name a
slave's key is listed under comes with each of its messages (User-Id) and is handed to
the registry, which refuses a Hello of any other name; stats from a slave key count only
for that slave's name. Without CURVE the broker refuses to bind off loopback.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import time
from dataclasses import dataclass
from types import FrameType
from typing import Callable

import zmq

from broker.auth import HandshakeWatcher, KeyAuthenticator, Refusal, Refusals, role_dirs
from broker.registry import Registry, Send
from common import log, messages as m, sdnotify, wire, zmqsock
from common.config import BrokerConfig, BrokerCurveSection, BrokerSection, ConfigError, load
from common.curve import KeyFileError, ServerKeys, endpoint_is_local, server_keys

logger = logging.getLogger("broker")

SUBSCRIBE = b"\x01"
TICKS_PER_INTERVAL = 4
DRAIN_LIMIT = 1000
"""Messages taken from one socket per loop pass, so no socket starves the others."""


@dataclass
class CachedStats:
    frames: list[bytes]
    name: str
    incarnation: str
    received_at: float


class Broker:
    """The broker's sockets and loop. `bind()`, then `serve()` until `stop()`, then `close()`."""

    def __init__(self, settings: BrokerSection, clock: Callable[[], float] = time.monotonic,
                 curve: BrokerCurveSection | None = None, keys: ServerKeys | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.keys = keys if curve is not None else None
        self.refusals = Refusals()
        self.registry = Registry(settings.heartbeat_ms, settings.liveness)
        self.stats_cache: dict[bytes, CachedStats] = {}
        self.ctx = zmqsock.new_context()
        self.master_sock: zmq.SyncSocket | None = None
        self.slave_sock: zmq.SyncSocket | None = None
        self.xsub: zmq.SyncSocket | None = None
        self.xpub: zmq.SyncSocket | None = None
        self.auth = KeyAuthenticator(self.ctx, role_dirs(curve), self.refusals) if curve else None
        self.watcher: HandshakeWatcher | None = None
        self._stopping = False
        self._reload = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ------------------------------------------------------------ life cycle

    def load_keys(self) -> dict[str, int]:
        """Read the key directories (CURVE only); raises KeyFileError. Keys per role."""
        return self.auth.load() if self.auth is not None else {}

    def bind(self) -> None:
        """Bind all four sockets (after starting the ZAP thread, with CURVE); raises
        zmq.ZMQError (e.g. address in use)."""
        s = self.settings
        if self.auth is not None:
            self.auth.start()
        keys = self.keys
        self.master_sock = zmqsock.bound_router(self.ctx, s.master_endpoint, keys, "master")
        self.slave_sock = zmqsock.bound_router(self.ctx, s.slave_endpoint, keys, "slave")
        self.xsub = zmqsock.bound_xsub(self.ctx, s.stats_in_endpoint, keys, "stats_in")
        self.xpub = zmqsock.bound_xpub(self.ctx, s.stats_out_endpoint, keys, "stats_out")
        if keys is not None:
            self.watcher = HandshakeWatcher({"master": self.master_sock, "slave": self.slave_sock,
                                             "stats_in": self.xsub, "stats_out": self.xpub},
                                            self.refusals)
            self.watcher.start()
        try:
            self.xsub.send(SUBSCRIBE + wire.STATS_TOPIC_PREFIX, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # includes zmq.Again
            logger.error("stats: subscribing upstream failed: %s", exc)
        logger.info("listening%s: master %s, slaves %s, stats in %s, stats out %s",
                    " with CURVE" if keys is not None else " without CURVE", s.master_endpoint,
                    s.slave_endpoint, s.stats_in_endpoint, s.stats_out_endpoint)

    def stop(self) -> None:
        """Ask `serve()` to return; safe from a signal handler (a byte on the self-pipe wakes the poll)."""
        self._stopping = True
        self._wake()

    def reload_keys(self) -> None:
        """Ask `serve()` to re-read the key directories; safe from a signal handler."""
        self._reload = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # pipe full: a wake-up is already pending

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.auth is not None:
            self.auth.stop()
        for sock in (self.master_sock, self.slave_sock, self.xsub, self.xpub):
            if sock is not None:
                sock.close(linger=0)
        self.ctx.term()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------ the loop

    def serve(self) -> None:
        """Poll all sockets until `stop()`; heartbeats and expiry run several times an interval."""
        assert self.master_sock and self.slave_sock and self.xsub and self.xpub, "bind() first"
        poller = zmq.Poller()
        for sock in (self.master_sock, self.slave_sock, self.xsub, self.xpub):
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        # Several ticks per interval, so a heartbeat due just after a tick is not a whole
        # interval late.
        tick_every = self.registry.interval / TICKS_PER_INTERVAL
        next_tick = self.clock() + tick_every
        while not self._stopping:
            timeout_ms = max(0, math.ceil((next_tick - self.clock()) * 1000))
            ready = dict(poller.poll(timeout_ms))
            if self._wake_r.fileno() in ready:
                self._drain_wakeups()
            if self._reload:
                self._reload = False
                self._reload_keys()
            curve = self.keys is not None
            if ready.get(self.slave_sock):
                zmqsock.drain_from(self.slave_sock, self._on_slave_frames, curve, DRAIN_LIMIT)
            if ready.get(self.master_sock):
                zmqsock.drain(self.master_sock, self._on_master_frames, DRAIN_LIMIT)
            if ready.get(self.xsub):
                zmqsock.drain_from(self.xsub, self._on_stats_frames, curve, DRAIN_LIMIT)
            if ready.get(self.xpub):
                zmqsock.drain(self.xpub, self._on_subscription, DRAIN_LIMIT)
            now = self.clock()
            if now >= next_tick:
                self._deliver(self.registry.tick(now))
                self._prune_stats(now)
                next_tick = now + tick_every
        logger.info("stopping")

    def _reload_keys(self) -> None:
        if self.auth is None:
            logger.info("SIGHUP: no CURVE configured, no keys to reload")
            return
        try:
            counts = self.auth.load()
        except KeyFileError as exc:
            logger.error("reloading the keys failed, keeping the old ones: %s", exc)
            return
        logger.info("reloaded the keys: %s", ", ".join(f"{n} {role}" for role, n in counts.items()))

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    # ------------------------------------------------------------ inbound

    def _on_slave_frames(self, frames: list[bytes], peer: zmqsock.Peer) -> None:
        routing_id = frames[0]
        try:
            msg = wire.decode(frames[1:], wire.SLAVE_TO_BROKER)
        except wire.BadFrame as exc:
            logger.warning("slave %s: dropped bad frame: %s", routing_id.hex(), exc)
            return
        self._deliver(self.registry.from_slave(routing_id, msg, self.clock(), peer.key_name))
        for reason in self.registry.take_refusals():
            self.refusals.report(Refusal("slave", peer.address, reason))

    def _on_master_frames(self, frames: list[bytes]) -> None:
        routing_id = frames[0]
        try:
            msg = wire.decode(frames[1:], wire.MASTER_TO_BROKER)
        except wire.BadFrame as exc:
            logger.warning("master %s: dropped bad frame: %s", routing_id.hex(), exc)
            return
        if isinstance(msg, m.MasterHello):
            logger.info("master %s (incarnation %s) connected", routing_id.hex(), msg.incarnation)
        self._deliver(self.registry.from_master(routing_id, msg, self.clock()))

    def _on_stats_frames(self, frames: list[bytes], peer: zmqsock.Peer) -> None:
        try:
            stats = wire.decode_stats(frames)
        except wire.BadFrame as exc:
            logger.warning("stats: dropped bad frame: %s", exc)
            return
        if peer.key_name is not None and stats.name != peer.key_name:
            self.refusals.report(Refusal("stats_in", peer.address, (
                f"stats for slave {stats.name!r} from the key of {peer.key_name!r} dropped")))
            return
        topic = bytes(frames[0])
        self.stats_cache[topic] = CachedStats(frames=[bytes(f) for f in frames], name=stats.name,
                                              incarnation=stats.incarnation,
                                              received_at=self.clock())
        self._publish(self.stats_cache[topic].frames)

    def _on_subscription(self, frames: list[bytes]) -> None:
        event = bytes(frames[0]) if frames else b""
        if not event.startswith(SUBSCRIBE):
            return  # unsubscribe (b"\x00"...) or anything else: nothing to do
        prefix = event[1:]
        for topic, cached in list(self.stats_cache.items()):
            if topic.startswith(prefix) and self.registry.is_up(cached.name, cached.incarnation):
                self._publish(cached.frames)

    # ------------------------------------------------------------ outbound

    def _publish(self, frames: list[bytes]) -> None:
        assert self.xpub is not None
        try:
            self.xpub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # includes zmq.Again
            logger.debug("stats: publish failed: %s", exc)

    def _deliver(self, sends: list[Send]) -> None:
        """Send everything; failures go back to the registry, whose answers are sent too."""
        queue = list(sends)
        while queue:
            send = queue.pop(0)
            sock = self.master_sock if send.to == "master" else self.slave_sock
            assert sock is not None
            try:
                sock.send_multipart([send.routing_id, *wire.encode(send.msg)], zmq.NOBLOCK)
                continue
            except zmq.Again:
                gone = False
                logger.warning("%s %s: over HWM, %s not sent", send.to, send.routing_id.hex(),
                               type(send.msg).__name__)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    logger.error("%s %s: send failed: %s", send.to, send.routing_id.hex(), exc)
                    continue
                gone = True
                logger.info("%s %s: connection gone, %s not sent", send.to, send.routing_id.hex(),
                            type(send.msg).__name__)
            queue.extend(self.registry.send_failed(send, gone, self.clock()))
        self._note_changes()

    def _note_changes(self) -> None:
        for change in self.registry.take_changes():
            if isinstance(change, m.SlaveUp):
                logger.info("slave %s up (incarnation %s, data host %s)",
                            change.name, change.incarnation, change.data_host)
                continue
            logger.info("slave %s down (incarnation %s): %s",
                        change.name, change.incarnation, change.reason)
            topic = wire.stats_topic(change.name)
            cached = self.stats_cache.get(topic)
            if cached is not None and cached.incarnation == change.incarnation:
                del self.stats_cache[topic]

    def _prune_stats(self, now: float) -> None:
        """Forget stats of slaves that never registered (or went away) once they are stale."""
        for topic, cached in list(self.stats_cache.items()):
            if (not self.registry.is_up(cached.name, cached.incarnation)
                    and now - cached.received_at >= self.registry.expiry):
                del self.stats_cache[topic]


def run(config_path: str) -> int:
    """The `ftpcluster broker` command: serve until SIGTERM/SIGINT, then return 0.

    A bad config raises common.config.ConfigError (the CLI prints it and exits 2);
    an endpoint that cannot be bound returns 1.
    """
    config = load(config_path, BrokerConfig)
    refusal = curve_refusal(config.broker, config.curve is not None)
    if refusal:
        raise ConfigError(f"{config_path}: {refusal}")
    keys = None
    if config.curve is not None:
        keys = server_keys(config.curve.secret_key, config_path, "curve.secret_key")
    log.setup("broker", config.log.level)
    broker = Broker(config.broker, curve=config.curve, keys=keys)
    try:
        counts = broker.load_keys()
    except KeyFileError as exc:
        broker.close()
        raise ConfigError(f"{config_path}: [curve]: {exc}") from None
    if counts:
        logger.info("CURVE keys listed: %s", ", ".join(f"{n} {role}" for role, n in counts.items()))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        broker.stop()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        broker.reload_keys()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    try:
        try:
            broker.bind()
        except zmq.ZMQError as exc:
            logger.error("cannot bind: %s", exc)
            return 1
        sdnotify.ready("broker bound")
        broker.serve()
        sdnotify.stopping()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        broker.close()


def curve_refusal(settings: BrokerSection, curve: bool) -> str:
    """Why the broker must not start, or "": without CURVE every endpoint must be local
    (loopback, ipc://, inproc://), since anyone who reaches a port could act as a role."""
    if curve:
        return ""
    for key in ("master_endpoint", "slave_endpoint", "stats_in_endpoint", "stats_out_endpoint"):
        endpoint = getattr(settings, key)
        if not endpoint_is_local(endpoint):
            return (f"key broker.{key}: refusing to listen on {endpoint} without CURVE (add a "
                    "[curve] section with keys from `ftpcluster keygen`, or listen on 127.0.0.1)")
    return ""
