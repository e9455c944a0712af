"""Which slave serves a transfer: a filter chain and a weighted score per direction.

Pure: no sockets, no clock reads. The caller passes a snapshot of every slave (`SlaveLoad`,
built by master.slaves from the last stats plus what the master dispatched since) and
the policy from the master's `[placement]` config. The only state is the round-robin
memory (which slave was chosen last, per direction) that breaks ties.

Per direction ("upload", "download", "replication"), in this order:
1. Filters drop a slave and say why (shown by SITE SLAVESELECT): not online; stats stale
   (it stopped publishing); free space minus the size hint below the minimum (the
   per-slave minimum when configured; not for downloads); active transfers at the cap (the slave's own
   max_transfers, or the policy's max_active if lower); a path rule whose glob matches
   the path and that forbids the slave or allows only others.
2. Every remaining slave gets a score (higher is better):
     free_space       * free / largest free among the candidates      (0..1 per weight)
   - active_transfers * (active transfers + transfers started since the last stats / 2)
   - bandwidth        * bytes/s the slave's own transfers move in that direction / 100 MB/s
   - load             * load average per CPU
   + prefer points of matching path rules, + HOLDER_POINTS for a current holder (uploads
     that overwrite a file stay on the slave that has it).
3. Ties (scores within TIE_EPSILON = 0.01 points, e.g. free space differing by under 1 %)
   go to the slave chosen least recently for that direction.

Transfers started since the last stats count half in the active term so that a burst of
short uploads (each finished before the next stats arrive) still spreads.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

from common.config import DirectionPolicy, PathRule, PlacementSection

Direction = Literal["upload", "download", "replication"]
DIRECTIONS: tuple[Direction, ...] = ("upload", "download", "replication")

BANDWIDTH_UNIT_BPS = 100_000_000.0
"""The bandwidth term counts one point per 100 MB/s in use, times its weight."""
HOLDER_POINTS = 1_000_000.0
"""A current holder of an overwritten file wins over any score difference."""
TIE_EPSILON = 0.01
"""Scores closer than this are a tie (disks of equal slaves never report the same free bytes)."""


@dataclass(frozen=True, slots=True)
class SlaveLoad:
    """One slave's figures at decision time (see master.slaves for how they are built)."""

    name: str
    disk_free: int
    """Bytes free from the slave's last stats, minus what the master has reserved since."""
    active_transfers: int
    """From the last stats or what the master has dispatched, whichever is larger."""
    max_transfers: int
    load_per_cpu: float = 0.0
    disk_total: int = 0
    state: str = "online"
    """online, merging or offline (master.slaves.SlaveState values)."""
    fresh: bool = True
    """Stats are recent (or none arrived yet since the slave joined)."""
    rx_bps: float = 0.0
    tx_bps: float = 0.0
    """Bytes/s the slave's own transfers receive / send (stats net_rx_bps / net_tx_bps),
    never its machine's NIC counters (host_net_*, shared by every slave on the machine)."""
    recent_starts: int = 0
    """Transfers the master started on this slave since its last stats."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One slave's outcome: a score, or the reason it was excluded (then score is None)."""

    name: str
    score: float | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Selection:
    chosen: str | None
    verdicts: tuple[Verdict, ...]

    def excluded(self) -> dict[str, str]:
        return {v.name: v.reason for v in self.verdicts if v.score is None}

    def scores(self) -> dict[str, float]:
        return {v.name: v.score for v in self.verdicts if v.score is not None}


def _matching_rules(policy: DirectionPolicy, path: str) -> list[PathRule]:
    return [rule for rule in policy.rules if path and fnmatch.fnmatchcase(path, rule.glob)]


def _exclusion(policy: DirectionPolicy, direction: Direction, slave: SlaveLoad, size_hint: int,
               rules: list[PathRule]) -> str:
    """Why `slave` may not serve this transfer, or ""."""
    if slave.state != "online":
        return slave.state
    if policy.require_fresh_stats and not slave.fresh:
        return "stats stale"
    min_free = policy.min_free_by_slave.get(slave.name, policy.min_free_bytes)
    if direction != "download" and min_free > 0 and slave.disk_free - max(0, size_hint) < min_free:
        return f"free {slave.disk_free} below minimum {min_free}"
    cap = slave.max_transfers if not policy.max_active else min(slave.max_transfers, policy.max_active)
    if slave.active_transfers >= cap:
        return f"busy ({slave.active_transfers}/{cap} transfers)"
    for rule in rules:
        if slave.name in rule.forbid:
            return f"forbidden by rule {rule.glob}"
        if rule.allow and slave.name not in rule.allow:
            return f"rule {rule.glob} allows only {','.join(rule.allow)}"
    return ""


def _score(policy: DirectionPolicy, direction: Direction, slave: SlaveLoad, max_free: int,
           rules: list[PathRule], prefer: frozenset[str]) -> float:
    w = policy.weights
    bps = slave.rx_bps if direction == "upload" else slave.tx_bps
    score = w.free_space * (slave.disk_free / max_free if max_free > 0 else 0.0)
    score -= w.active_transfers * (slave.active_transfers + slave.recent_starts / 2)
    score -= w.bandwidth * bps / BANDWIDTH_UNIT_BPS
    score -= w.load * slave.load_per_cpu
    score += sum(rule.prefer_points for rule in rules if slave.name in rule.prefer)
    if slave.name in prefer:
        score += HOLDER_POINTS
    return score


@dataclass
class Placement:
    """The policy of the three directions plus the round-robin memory that breaks ties."""

    config: PlacementSection = field(default_factory=PlacementSection)
    _serial: int = 0
    _last_chosen: dict[str, dict[str, int]] = field(default_factory=dict)

    def policy(self, direction: Direction) -> DirectionPolicy:
        policy: DirectionPolicy = getattr(self.config, direction)
        return policy

    def rule_exclusion(self, direction: Direction, path: str, slave: str) -> str:
        """Why the path rules keep `slave` from serving `path` in `direction`, or "" (the
        rules only: for a slave picked earlier, e.g. by PRET for another path)."""
        for rule in _matching_rules(self.policy(direction), path):
            if slave in rule.forbid:
                return f"forbidden by rule {rule.glob}"
            if rule.allow and slave not in rule.allow:
                return f"rule {rule.glob} allows only {','.join(rule.allow)}"
        return ""

    def evaluate(self, direction: Direction, path: str, slaves: list[SlaveLoad],
                 size_hint: int = 0, prefer: frozenset[str] = frozenset()) -> Selection:
        """Scores and exclusions for every slave in `slaves`, and the one that would be
        chosen (None when every slave is excluded). Changes nothing."""
        policy = self.policy(direction)
        rules = _matching_rules(policy, path)
        reasons = {s.name: _exclusion(policy, direction, s, size_hint, rules) for s in slaves}
        eligible = [s for s in slaves if not reasons[s.name]]
        max_free = max((s.disk_free for s in eligible), default=0)
        verdicts = []
        scores: dict[str, float] = {}
        for s in sorted(slaves, key=lambda s: s.name):
            if reasons[s.name]:
                verdicts.append(Verdict(s.name, None, reasons[s.name]))
            else:
                scores[s.name] = _score(policy, direction, s, max_free, rules, prefer)
                verdicts.append(Verdict(s.name, scores[s.name]))
        chosen = None
        if scores:
            best = max(scores.values())
            last = self._last_chosen.get(direction, {})
            tied = [n for n, v in scores.items() if best - v <= TIE_EPSILON]
            chosen = min(tied, key=lambda n: (last.get(n, -1), n))
        return Selection(chosen, tuple(verdicts))

    def choose(self, direction: Direction, path: str, slaves: list[SlaveLoad],
               size_hint: int = 0, prefer: frozenset[str] = frozenset()) -> Selection:
        """evaluate(), then remember the choice for the round-robin tie-break."""
        selection = self.evaluate(direction, path, slaves, size_hint, prefer)
        if selection.chosen is not None:
            self._serial += 1
            self._last_chosen.setdefault(direction, {})[selection.chosen] = self._serial
        return selection
