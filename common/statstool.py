"""`ftpcluster stats`: subscribe to the broker's stats feed and show it.

The I/O shell around common.statsview: a SUB socket on the broker's stats XPUB (the
broker replays its last-value cache to a new subscriber, so a snapshot is complete
almost at once), a poll loop with a short tick so that staleness shows even when nothing
arrives, and the outputs: a live rich table (default), `--once` (one snapshot, then
exit), `--json` (one JSON object per line) and `--prometheus HOST:PORT` (a /metrics
endpoint served from a thread, reading the board under a lock).

With CURVE the tool subscribes with a key of its own (`find_keys`: --key and --broker-key,
or the stats key `ftpcluster up` made in its data directory); the broker admits it on the
stats feed only, so it can read stats but never publish any.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator

import zmq

from common import wire, zmqsock
from common.config import BrokerConfig, ConfigError, MasterConfig, load
from common.curve import ClientKeys, KeyFileError, key_paths, read_pair, read_public
from common.statsview import OFFLINE_AFTER_S, STALE_AFTER_S, StatsBoard, prometheus_samples, render_table

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5553"
DEFAULT_DATA = "./var"
"""`ftpcluster up`'s default data directory: with no options, stats reads DATA/conf/broker.toml."""
TICK_S = 0.5
ONCE_WAIT_S = 2.5
"""--once collects this long: the broker's cache replays at once, but a slave whose first
stats were published before its PUB connected appears only with its next stats (2 s)."""


def endpoint_from_config(path: str) -> str:
    """The stats XPUB endpoint named by a broker config (stats_out_endpoint) or a master
    config (master.stats_endpoint); a wildcard bind address becomes 127.0.0.1.
    Raises ConfigError."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "broker" in raw:
        endpoint = load(path, BrokerConfig).broker.stats_out_endpoint
    elif "master" in raw:
        endpoint = load(path, MasterConfig).master.stats_endpoint
    else:
        raise ConfigError(f"{path}: neither a broker nor a master config (no [broker] or [master] table)")
    return endpoint.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


def find_endpoint(endpoint: str | None = None, config: str | None = None,
                  data: str | None = None) -> tuple[str, str]:
    """(stats endpoint, where it came from, for messages), in this order: --endpoint,
    --config, --data DIR (its conf/broker.toml must exist), the default data directory's
    conf/broker.toml when `ftpcluster up` wrote one, else DEFAULT_ENDPOINT.
    Raises ConfigError (a bad or, for --data, missing broker.toml)."""
    if endpoint:
        return endpoint, "--endpoint"
    if config:
        return endpoint_from_config(config), config
    broker = Path(data or DEFAULT_DATA) / "conf" / "broker.toml"
    if data is not None and not broker.is_file():
        raise ConfigError(f"{broker}: no such file: --data {data} is not the data directory of "
                          "an `ftpcluster up` cluster")
    if broker.is_file():
        return endpoint_from_config(str(broker)), str(broker)
    return DEFAULT_ENDPOINT, f"the default endpoint; no {broker}"


def find_keys(key: str | None = None, broker_key: str | None = None, config: str | None = None,
              data: str | None = None, endpoint: str | None = None) -> ClientKeys | None:
    """The CURVE keys to subscribe with, or None (no CURVE): --key and --broker-key (both or
    neither); else, without --endpoint, from the cluster whose config is used: a broker
    config's [curve] (its key pair gives the broker's public key; --key is then needed), a
    master config's [curve] (the master's own keys), or an `ftpcluster up` data directory
    whose broker.toml has [curve] (DATA/keys/stats/stats.key_secret). Raises ConfigError."""
    if (key is None) != (broker_key is None):
        raise ConfigError("--key and --broker-key go together (this tool's secret key file "
                          "and the broker's public key file)")
    if key is not None and broker_key is not None:
        return _keys(Path(key), Path(broker_key), "--key", "--broker-key")
    if endpoint:
        return None
    if config is None:
        broker = Path(data or DEFAULT_DATA) / "conf" / "broker.toml"
        if not broker.is_file() or load(broker, BrokerConfig).curve is None:
            return None
        keys_dir = broker.parent.parent / "keys"
        secret = key_paths(keys_dir, "stats", "stats")[1]
        return _keys(secret, key_paths(keys_dir, "broker", "broker")[0], str(secret), str(broker))
    raw = tomllib.loads(Path(config).read_text())
    if "broker" in raw:
        curve = load(config, BrokerConfig).curve
        if curve is None:
            return None
        raise ConfigError(f"{config}: has [curve]: give this tool's key with --key FILE "
                          f"--broker-key FILE (the broker's public key, next to {curve.secret_key})")
    master = load(config, MasterConfig).curve
    if master is None:
        return None
    return _keys(Path(master.secret_key), Path(master.broker_key), f"{config}: key curve.secret_key",
                 f"{config}: key curve.broker_key")


def _keys(secret: Path, broker: Path, secret_origin: str, broker_origin: str) -> ClientKeys:
    try:
        public, secret_key = read_pair(secret)
    except KeyFileError as exc:
        raise ConfigError(f"{secret_origin}: {exc}" if secret_origin != str(secret) else str(exc)) from None
    try:
        server = read_public(broker)
    except KeyFileError as exc:
        raise ConfigError(f"{broker_origin}: {exc}") from None
    return ClientKeys(public=public, secret=secret_key, server=server)


def parse_hostport(text: str) -> tuple[str, int]:
    """"HOST:PORT" or ":PORT" -> (host, port); raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class StatsFeed:
    """A SUB socket on the stats XPUB; `poll(timeout)` yields decoded SlaveStats."""

    def __init__(self, endpoint: str, keys: ClientKeys | None = None) -> None:
        self.ctx = zmqsock.new_context()
        self.sock = zmqsock.connected_sub(self.ctx, endpoint, wire.STATS_TOPIC_PREFIX, keys)
        self.bad_frames = 0

    def poll(self, timeout_s: float) -> Iterator[Any]:
        if not self.sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                yield wire.decode_stats(frames)
            except wire.BadFrame:
                self.bad_frames += 1

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def serve_prometheus(board: StatsBoard, lock: threading.Lock, host: str, port: int,
                     clock: Callable[[], float] = time.monotonic) -> Any:
    """Start the /metrics HTTP server (a daemon thread); returns the server."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

    class BoardCollector:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            with lock:
                samples = prometheus_samples(board, clock())
            families: dict[str, GaugeMetricFamily] = {}
            for metric, help_text, labels, value in samples:
                family = families.get(metric)
                if family is None:
                    family = families[metric] = GaugeMetricFamily(metric, help_text, labels=sorted(labels))
                family.add_metric([labels[k] for k in sorted(labels)], value)
            yield from families.values()

    # Our own registry: no process/platform collectors of the tool itself.
    registry = CollectorRegistry()
    registry.register(BoardCollector())
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def run(endpoint: str, *, once: bool = False, as_json: bool = False, prometheus: str = "",
        stale_after: float = STALE_AFTER_S, offline_after: float = OFFLINE_AFTER_S,
        wait: float = ONCE_WAIT_S, source: str = "", keys: ClientKeys | None = None) -> int:
    """The `ftpcluster stats` loop; returns the exit code (`once`: 1 when no stats arrived).
    `source` says where `endpoint` came from (for the error line)."""
    from rich.console import Console
    from rich.live import Live

    board = StatsBoard(stale_after=stale_after, offline_after=offline_after)
    lock = threading.Lock()
    stopping: list[int] = []
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, sort_keys=True) + "\n")
        out.flush()

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    feed = StatsFeed(endpoint, keys)
    server = None
    live = None
    try:
        if prometheus:
            host, port = parse_hostport(prometheus)
            server = serve_prometheus(board, lock, host, port)
            print(f"ftpcluster stats: serving metrics on http://{host}:{port}/metrics (feed {endpoint})",
                  file=sys.stderr, flush=True)
        if once:
            deadline = time.monotonic() + wait
            while not stopping and time.monotonic() < deadline:
                for stats in feed.poll(min(0.1, max(0.0, deadline - time.monotonic()))):
                    board.update(stats, time.monotonic(), time.time())
            now = time.monotonic()
            if not board.rows:
                if not stopping:
                    origin = f" ({source})" if source else ""
                    print(f"ftpcluster stats: no stats arrived from {endpoint}{origin} within {wait:g} s; "
                          "is the cluster running? (see --data, --config, --endpoint, --wait)",
                          file=sys.stderr, flush=True)
                return 1
            if as_json:
                emit(board.snapshot(now))
            else:
                Console(soft_wrap=False).print(render_table(board, now))
            return 0
        if not as_json and not prometheus:
            live = Live(render_table(board, time.monotonic()), auto_refresh=False, console=Console())
            live.start()
        while not stopping:
            for stats in feed.poll(TICK_S):
                now = time.monotonic()
                with lock:
                    kept = board.update(stats, now, time.time())
                if kept and as_json:
                    emit({"event": "stats", "slave": board.slave(stats.name, now)})
            now = time.monotonic()
            with lock:
                changes = board.changes(now)
            if as_json:
                for name, state in changes:
                    emit({"event": "state", "name": name, "state": state})
            if live is not None:
                live.update(render_table(board, now), refresh=True)
        return 0
    except ValueError as exc:
        print(f"ftpcluster stats: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ftpcluster stats: {exc}", file=sys.stderr)
        return 1
    finally:
        if live is not None:
            live.stop()
        if server is not None:
            server.shutdown()
        feed.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
