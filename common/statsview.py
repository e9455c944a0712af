"""What `ftpcluster stats` shows: the board of slaves' latest stats and its renderings.

Pure: stats and `now` in; a rich renderable, JSON-able dicts or Prometheus samples out.
No sockets, no clock reads (common.statstool is the I/O loop around it).

A slave's state on the board comes from how long ago its last stats arrived:
online (fresh), stale (older than `stale_after`, default 5 s: two and a half stats
intervals, so a slave that stops publishing shows stale within 6 s) and offline (older
than `offline_after`, default 15 s: the broker has declared it dead by then). The first
stats of an incarnation may come from the broker's last-value cache, so they are
back-dated by their own age (ts_ms), capped at `offline_after`.

Rates: a slave's rx/tx (net_rx_bps / net_tx_bps) are what its own transfers moved, so the
totals row sums them. The host NIC counters (host_net_*) are the machine's, the same for
every slave on it: they are shown once per host, apart (`hosts()`), and never summed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

from common.messages import SlaveStats

STALE_AFTER_S = 5.0
OFFLINE_AFTER_S = 15.0
BAR_WIDTH = 8


@dataclass(slots=True)
class _Row:
    stats: SlaveStats
    received_at: float


@dataclass
class StatsBoard:
    stale_after: float = STALE_AFTER_S
    offline_after: float = OFFLINE_AFTER_S
    rows: dict[str, _Row] = field(default_factory=dict)
    messages: int = 0
    _reported: dict[str, str] = field(default_factory=dict)

    def update(self, stats: SlaveStats, now: float, wall: float | None = None) -> bool:
        """Keep `stats` if it is news (a new incarnation, or a higher seq); returns whether
        it was kept. `wall` (epoch seconds) back-dates the first stats of an incarnation."""
        row = self.rows.get(stats.name)
        if row is not None and row.stats.incarnation == stats.incarnation:
            if stats.seq <= row.stats.seq:
                return False
            received = now
        else:
            age = 0.0 if wall is None else min(max(0.0, wall - stats.ts_ms / 1000), self.offline_after)
            received = now - age
        self.rows[stats.name] = _Row(stats, received)
        self.messages += 1
        return True

    def state(self, name: str, now: float) -> str:
        age = now - self.rows[name].received_at
        if age > self.offline_after:
            return "offline"
        if age > self.stale_after:
            return "stale"
        return "online"

    def changes(self, now: float) -> list[tuple[str, str]]:
        """(name, state) for every slave whose state changed since the last call."""
        out = []
        for name in sorted(self.rows):
            state = self.state(name, now)
            if self._reported.get(name) != state:
                self._reported[name] = state
                out.append((name, state))
        return out

    # ------------------------------------------------------------ figures

    def slave(self, name: str, now: float) -> dict[str, Any]:
        """One slave's figures as a JSON-able dict."""
        row = self.rows[name]
        s = row.stats
        return {
            "name": s.name, "state": self.state(name, now), "incarnation": s.incarnation,
            "seq": s.seq, "ts_ms": s.ts_ms, "age_s": round(max(0.0, now - row.received_at), 3),
            "disk_free": s.disk_free, "disk_total": s.disk_total,
            "load1": s.load1, "ncpu": s.ncpu, "load_per_cpu": round(s.load1 / max(1, s.ncpu), 3),
            "active_up": s.active_up, "active_down": s.active_down,
            "net_rx_bps": s.net_rx_bps, "net_tx_bps": s.net_tx_bps,
            "host": s.host, "host_net_rx_bps": s.host_net_rx_bps, "host_net_tx_bps": s.host_net_tx_bps,
        }

    def hosts(self, now: float) -> list[dict[str, Any]]:
        """The machines' NIC rates, one entry per host of the slaves that are not offline and
        report them, from the most recent stats among that host's slaves."""
        latest: dict[str, _Row] = {}
        names: dict[str, list[str]] = {}
        for name in sorted(self.rows):
            row = self.rows[name]
            s = row.stats
            if s.host_net_rx_bps is None or s.host_net_tx_bps is None or self.state(name, now) == "offline":
                continue
            host = s.host or s.name
            names.setdefault(host, []).append(name)
            if host not in latest or row.received_at > latest[host].received_at:
                latest[host] = row
        return [{"host": host, "slaves": names[host],
                 "net_rx_bps": latest[host].stats.host_net_rx_bps,
                 "net_tx_bps": latest[host].stats.host_net_tx_bps} for host in sorted(latest)]

    def totals(self, now: float) -> dict[str, Any]:
        """Cluster totals over the slaves that are not offline (their own rates: the host
        NIC counters are not summed)."""
        live = [self.rows[n].stats for n in self.rows if self.state(n, now) != "offline"]
        return {
            "slaves": len(self.rows),
            "online": sum(1 for n in self.rows if self.state(n, now) == "online"),
            "disk_free": sum(s.disk_free for s in live), "disk_total": sum(s.disk_total for s in live),
            "active_up": sum(s.active_up for s in live), "active_down": sum(s.active_down for s in live),
            "net_rx_bps": sum(s.net_rx_bps for s in live), "net_tx_bps": sum(s.net_tx_bps for s in live),
        }

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"slaves": [self.slave(n, now) for n in sorted(self.rows)], "totals": self.totals(now),
                "hosts": self.hosts(now)}


# ---------------------------------------------------------------- text renderings

def human_bytes(n: float) -> str:
    """1536 -> "1.5K"; decimal-free below 1 KiB; binary units."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(value) < 1024 or unit == "P":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}P"  # pragma: no cover


def human_rate(bps: float) -> str:
    return human_bytes(bps) + "/s"


def usage_bar(free: int, total: int, width: int = BAR_WIDTH) -> Text:
    """A bar of the used fraction of the disk (green, yellow past 75 %, red past 90 %)."""
    used = 0.0 if total <= 0 else min(1.0, max(0.0, (total - free) / total))
    filled = round(used * width)
    style = "red" if used > 0.9 else "yellow" if used > 0.75 else "green"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim")


_STATE_STYLE = {"online": "green", "stale": "yellow", "offline": "red"}


HOST_NAMES_SHOWN = 3
"""A host line names this many of its slaves, then counts the rest."""


def host_line(host: dict[str, Any]) -> str:
    """`host box (slave1, slave2): rx 1.2M/s tx 3.4M/s`: one machine's NIC rates."""
    names = host["slaves"]
    shown = ", ".join(names[:HOST_NAMES_SHOWN])
    if len(names) > HOST_NAMES_SHOWN:
        shown += f", +{len(names) - HOST_NAMES_SHOWN}"
    return (f"host {host['host']} ({shown}): rx {human_rate(host['net_rx_bps'])} "
            f"tx {human_rate(host['net_tx_bps'])}")


def render_table(board: StatsBoard, now: float, title: str = "ftpcluster stats") -> Table:
    """The live view: a row per slave (rx/tx: its own transfers) and a totals row, then a
    caption line per host with the machine's NIC rates (not part of the totals); fits 80
    columns without wrapping."""
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False,
                  show_footer=True, box=None, header_style="bold", caption_justify="left")
    totals = board.totals(now)
    table.add_column("slave", footer="total", no_wrap=True, max_width=14, overflow="ellipsis")
    table.add_column("state", footer=f"{totals['online']}/{totals['slaves']}", no_wrap=True)
    table.add_column("free/total",
                     footer=f"{human_bytes(totals['disk_free'])}/{human_bytes(totals['disk_total'])}",
                     no_wrap=True, justify="right")
    table.add_column("used", footer=usage_bar(totals["disk_free"], totals["disk_total"]), no_wrap=True)
    table.add_column("load", footer="", no_wrap=True, justify="right")
    table.add_column("up/dn", footer=f"{totals['active_up']}/{totals['active_down']}", no_wrap=True,
                     justify="right")
    table.add_column("rx", footer=human_rate(totals["net_rx_bps"]), no_wrap=True, justify="right")
    table.add_column("tx", footer=human_rate(totals["net_tx_bps"]), no_wrap=True, justify="right")
    for name in sorted(board.rows):
        s = board.rows[name].stats
        state = board.state(name, now)
        table.add_row(
            name, Text(state, style=_STATE_STYLE[state]),
            f"{human_bytes(s.disk_free)}/{human_bytes(s.disk_total)}", usage_bar(s.disk_free, s.disk_total),
            f"{s.load1 / max(1, s.ncpu):.2f}", f"{s.active_up}/{s.active_down}",
            human_rate(s.net_rx_bps), human_rate(s.net_tx_bps),
        )
    if not board.rows:
        table.caption = "waiting for stats..."
    elif hosts := board.hosts(now):
        table.caption = "\n".join(host_line(h) for h in hosts)
    return table


def prometheus_samples(board: StatsBoard, now: float) -> list[tuple[str, str, dict[str, str], float]]:
    """(metric, help, labels, value) for every figure: per slave, cluster totals, and per
    host the machine's NIC rates (label host; not in the totals)."""
    out: list[tuple[str, str, dict[str, str], float]] = []
    per_slave = [
        ("ftpcluster_slave_up", "1 while the slave's stats are fresh, else 0", None),
        ("ftpcluster_slave_stats_age_seconds", "Seconds since the slave's last stats", "age_s"),
        ("ftpcluster_slave_disk_free_bytes", "Free bytes on the slave's storage", "disk_free"),
        ("ftpcluster_slave_disk_total_bytes", "Size of the slave's storage", "disk_total"),
        ("ftpcluster_slave_load1", "1-minute load average", "load1"),
        ("ftpcluster_slave_cpus", "CPUs of the slave's host", "ncpu"),
        ("ftpcluster_slave_active_uploads", "Uploads in progress", "active_up"),
        ("ftpcluster_slave_active_downloads", "Downloads in progress", "active_down"),
        ("ftpcluster_slave_net_rx_bytes_per_second",
         "Bytes per second the slave's own transfers received", "net_rx_bps"),
        ("ftpcluster_slave_net_tx_bytes_per_second",
         "Bytes per second the slave's own transfers sent", "net_tx_bps"),
    ]
    for name in sorted(board.rows):
        figures = board.slave(name, now)
        for metric, help_text, key in per_slave:
            value = float(figures["state"] == "online") if key is None else float(figures[key])
            out.append((metric, help_text, {"slave": name}, value))
    totals = board.totals(now)
    for key in ("online", "disk_free", "disk_total", "active_up", "active_down", "net_rx_bps", "net_tx_bps"):
        out.append((f"ftpcluster_cluster_{key}", f"Cluster total of {key} (slaves not offline)", {},
                    float(totals[key])))
    for host in board.hosts(now):
        for metric, key, what in (("ftpcluster_host_net_rx_bytes_per_second", "net_rx_bps", "received"),
                                  ("ftpcluster_host_net_tx_bytes_per_second", "net_tx_bps", "sent")):
            out.append((metric, f"Bytes per second the host's network interfaces {what} (all traffic)",
                        {"host": host["host"]}, float(host[key])))
    return out
