"""master.placement: filter chains, weighted scores and the round-robin tie-break."""

from __future__ import annotations

import collections

import pytest

from common.config import DirectionPolicy, MasterConfig, PathRule, PlacementSection, PlacementWeights, loads
from common.messages import SlaveStats, SlaveUp
from master.slaves import SlaveRegistry
from master.placement import HOLDER_POINTS, Placement, SlaveLoad

GB = 1024 ** 3
MB = 1024 ** 2


def load(name: str, free: int = 10 * GB, active: int = 0, max_transfers: int = 10,
         per_cpu: float = 0.0, **kw: object) -> SlaveLoad:
    return SlaveLoad(name=name, disk_free=free, active_transfers=active, max_transfers=max_transfers,
                     load_per_cpu=per_cpu, disk_total=100 * GB, **kw)  # type: ignore[arg-type]


def policy(**upload: object) -> Placement:
    return Placement(PlacementSection(upload=DirectionPolicy(**upload)))  # type: ignore[arg-type]


# ------------------------------------------------------------------ filters

def test_none_without_candidates() -> None:
    selection = Placement().choose("upload", "/f", [])
    assert selection.chosen is None and selection.verdicts == ()


@pytest.mark.parametrize("free, size_hint, ok", [
    (64 * MB, 0, True),  # exactly the default minimum
    (64 * MB - 1, 0, False),
    (64 * MB + 100, 100, True),
    (64 * MB + 99, 100, False),
    (64 * MB, -5, True),  # a negative hint counts as 0
    (0, 0, False),
])
def test_min_free_filter(free: int, size_hint: int, ok: bool) -> None:
    selection = Placement().choose("upload", "/f", [load("a", free=free)], size_hint=size_hint)
    assert selection.chosen == ("a" if ok else None)
    if not ok:
        assert "below minimum" in selection.excluded()["a"]


def test_below_min_free_never_chosen_whatever_the_score() -> None:
    # "low" scores far better (no transfers vs. 9) but is below its own minimum.
    p = policy(min_free_bytes=1 * GB, min_free_by_slave={"low": 50 * GB})
    slaves = [load("low", free=40 * GB), load("busy", free=2 * GB, active=9)]
    for _ in range(20):
        assert p.choose("upload", "/x", slaves).chosen == "busy"
    assert p.evaluate("upload", "/x", slaves).excluded() == {"low": f"free {40 * GB} below minimum {50 * GB}"}
    assert p.choose("upload", "/x", [load("low", free=40 * GB)]).chosen is None


def test_free_space_is_no_filter_for_downloads() -> None:
    assert Placement().choose("download", "/f", [load("a", free=0)]).chosen == "a"


def test_offline_merging_and_stale_excluded() -> None:
    slaves = [load("a", state="offline"), load("b", state="merging"), load("c", fresh=False), load("d")]
    selection = Placement().evaluate("upload", "/f", slaves)
    assert selection.chosen == "d"
    assert selection.excluded() == {"a": "offline", "b": "merging", "c": "stats stale"}
    relaxed = policy(require_fresh_stats=False).evaluate("upload", "/f", slaves[:3])
    assert relaxed.chosen == "c"


def test_max_active_filter() -> None:
    full = load("a", active=4, max_transfers=4)
    over = load("b", active=5, max_transfers=4)
    assert Placement().choose("upload", "/f", [full, over]).chosen is None
    assert Placement().choose("upload", "/f", [full, over, load("c", active=3, max_transfers=4)]).chosen == "c"
    capped = policy(max_active=2).evaluate("upload", "/f", [load("c", active=2)])
    assert capped.chosen is None and capped.excluded() == {"c": "busy (2/2 transfers)"}


ARCHIVE = PlacementSection(upload=DirectionPolicy(rules=[
    PathRule(glob="/archive/*", allow=["s3", "s4"]),
    PathRule(glob="/tmp/*", forbid=["s4"]),
    PathRule(glob="/fast/*", prefer=["s2"], prefer_points=50.0),
]))


def test_path_rule_allow_routes_archive_only_to_named_slaves() -> None:
    p = Placement(ARCHIVE)
    slaves = [load(f"s{i}") for i in range(1, 5)]
    chosen = collections.Counter(p.choose("upload", f"/archive/2026/f{i}", slaves).chosen for i in range(40))
    assert set(chosen) == {"s3", "s4"} and chosen["s3"] == chosen["s4"] == 20
    excluded = p.evaluate("upload", "/archive/x", slaves).excluded()
    assert excluded == {"s1": "rule /archive/* allows only s3,s4", "s2": "rule /archive/* allows only s3,s4"}
    # outside /archive every slave takes uploads
    assert {p.choose("upload", f"/other/f{i}", slaves).chosen for i in range(8)} == {"s1", "s2", "s3", "s4"}
    # the glob matches the path, not a prefix of its text
    assert p.evaluate("upload", "/archived", slaves).excluded() == {}


def test_path_rule_forbid_and_prefer() -> None:
    p = Placement(ARCHIVE)
    slaves = [load(f"s{i}") for i in range(1, 5)]
    assert p.evaluate("upload", "/tmp/a", slaves).excluded() == {"s4": "forbidden by rule /tmp/*"}
    fast = p.evaluate("upload", "/fast/a", slaves)
    assert fast.chosen == "s2" and fast.scores()["s2"] == pytest.approx(fast.scores()["s1"] + 50.0)


# ------------------------------------------------------------------ scores

def test_burst_of_50_uploads_within_one_stats_period_spreads_evenly() -> None:
    """The registry counts every dispatched transfer until the next stats arrive.

    "a" has 20 % more free space than the others: 1/6 of a point above them (far beyond the
    TIE_EPSILON of round-robin), so without the dispatched/recent-starts counters it would take
    all 50 uploads. Each running upload costs 1.5 points (1 active + 1/2 recent start), which
    outweighs the free-space lead after one upload: every slave gets one per round.
    """
    reg = SlaveRegistry()
    for name in ("a", "b", "c", "d", "e"):
        free = 60 * GB if name == "a" else 50 * GB
        reg.on_up(SlaveUp(name=name, incarnation="i", data_host="h", max_transfers=100,
                          disk_total=100 * GB, disk_free=free), now=0.0)
        reg.mark_online(name)
        reg.on_stats(stats(name, seq=1, free=free), now=0.0)
    p = Placement()
    first = p.evaluate("upload", "/burst/x", reg.loads(0.0))
    assert first.chosen == "a"
    assert first.scores()["a"] - first.scores()["b"] == pytest.approx(1 / 6)  # not a tie
    chosen = collections.Counter()
    for i in range(50):
        now = i / 50  # all within one second, no new stats
        slave = p.choose("upload", f"/burst/{i}", reg.loads(now)).chosen
        assert slave is not None
        reg.transfer_started(slave)
        chosen[slave] += 1
    assert chosen == {"a": 10, "b": 10, "c": 10, "d": 10, "e": 10}


def test_burst_of_short_uploads_spreads_too() -> None:
    """Uploads that finish before the next one starts still rotate (recent starts, round-robin).

    "a" has 20 % more free space (1/6 of a point, no tie): without counting the transfers
    started since the last stats it would take all 30. Each start costs half a point.
    """
    reg = SlaveRegistry()
    for name in ("a", "b", "c"):
        free = GB * 6 // 5 if name == "a" else GB
        reg.on_up(SlaveUp(name=name, incarnation="i", data_host="h", max_transfers=10,
                          disk_total=2 * GB, disk_free=free), now=0.0)
        reg.mark_online(name)
    p = Placement()
    first = p.evaluate("upload", "/f", reg.loads(0.5))
    assert first.chosen == "a" and first.scores()["a"] - first.scores()["b"] > 0.1
    chosen = collections.Counter()
    for i in range(30):
        slave = p.choose("upload", f"/f{i}", reg.loads(0.5)).chosen
        assert slave is not None
        reg.transfer_started(slave)
        reg.transfer_finished(slave)
        chosen[slave] += 1
    assert chosen == {"a": 10, "b": 10, "c": 10}


def stats(name: str, seq: int, free: int = 50 * GB, up: int = 0, down: int = 0) -> SlaveStats:
    return SlaveStats(name=name, incarnation="i", seq=seq, ts_ms=0, disk_free=free, disk_total=100 * GB,
                      load1=0.0, ncpu=4, net_tx_bps=0.0, net_rx_bps=0.0, active_up=up, active_down=down)


@pytest.mark.parametrize("holders, expected", [
    ([load("a", active=3), load("b", active=1), load("c", active=2)], "b"),
    ([load("a", active=1, per_cpu=0.9), load("b", active=1, per_cpu=0.2)], "b"),
    ([load("a", active=0, per_cpu=0.5), load("b", active=4, per_cpu=0.0)], "a"),
    ([load("a", active=2, max_transfers=2), load("b", active=9, max_transfers=10)], "b"),
    ([load("a", active=1, tx_bps=300e6), load("b", active=1)], "b"),  # bandwidth in use
])
def test_download_prefers_holder_with_fewer_active_transfers(holders: list[SlaveLoad], expected: str) -> None:
    assert Placement().choose("download", "/f", holders).chosen == expected


def test_download_holder_with_fewer_transfers_via_stats() -> None:
    reg = SlaveRegistry()
    for name, down in (("a", 5), ("b", 1)):
        reg.on_up(SlaveUp(name=name, incarnation="i", data_host="h", max_transfers=10), now=0.0)
        reg.mark_online(name)
        reg.on_stats(stats(name, seq=1, down=down), now=0.0)
    holders = frozenset({"a", "b"})
    assert Placement().choose("download", "/f", reg.loads(1.0, holders)).chosen == "b"


def test_upload_free_space_and_load_terms() -> None:
    p = Placement()
    assert p.evaluate("upload", "/f", [load("a", free=5 * GB), load("b", free=10 * GB)]).chosen == "b"
    assert p.evaluate("upload", "/f", [load("a", active=1, free=100 * GB), load("b", free=10 * GB)]).chosen == "b"
    scores = p.evaluate("upload", "/f", [load("a", per_cpu=2.0), load("b")]).scores()
    assert scores == {"a": pytest.approx(-1.0), "b": pytest.approx(1.0)}


def test_weights_switch_terms_off() -> None:
    p = policy(weights=PlacementWeights(free_space=0.0, active_transfers=0.0, bandwidth=0.0, load=0.0))
    scores = p.evaluate("upload", "/f", [load("a", active=5, per_cpu=3.0), load("b", free=GB)]).scores()
    assert scores == {"a": 0.0, "b": 0.0}


def test_overwrite_prefers_current_holder() -> None:
    slaves = [load("a"), load("b", active=7, free=2 * GB)]
    selection = Placement().choose("upload", "/f", slaves, prefer=frozenset({"b"}))
    assert selection.chosen == "b" and selection.scores()["b"] > HOLDER_POINTS - 10
    # a holder that is excluded is not chosen
    assert Placement().choose("upload", "/f", [load("a"), load("c", free=0)], prefer=frozenset({"c"})).chosen == "a"


def test_round_robin_per_direction_and_evaluate_changes_nothing() -> None:
    p = Placement()
    slaves = [load("a"), load("b"), load("c")]
    assert [p.evaluate("upload", "/f", slaves).chosen for _ in range(3)] == ["a", "a", "a"]
    assert [p.choose("upload", "/f", slaves).chosen for _ in range(4)] == ["a", "b", "c", "a"]
    assert p.choose("download", "/f", slaves).chosen == "a"  # its own rotation


def test_placement_config_from_toml() -> None:
    config = loads("""
[placement.upload]
min_free_bytes = 1000
min_free_by_slave = { slave1 = 5000 }
[placement.upload.weights]
load = 2.5
[[placement.upload.rules]]
glob = "/archive/*"
allow = ["slave3"]
""", MasterConfig)
    up = config.placement.upload
    assert up.min_free_bytes == 1000 and up.min_free_by_slave == {"slave1": 5000}
    assert up.weights.load == 2.5 and up.rules[0].allow == ["slave3"]
    assert config.placement.download == DirectionPolicy()


@pytest.mark.parametrize("text, message", [
    ("[placement.upload]\nmin_fre_bytes = 1\n", "key placement.upload.min_fre_bytes: unknown key"),
    ("[placement.sideways]\n", "key placement.sideways: unknown key"),
    ("[placement.download.weights]\nload = -1\n", "key placement.download.weights.load: expected `float` >= 0.0"),
    ("[[placement.upload.rules]]\nglob = \"archive/*\"\n",
     "key placement.upload.rules[0].glob: must be an absolute virtual path pattern"),
])
def test_bad_placement_config_is_one_line(text: str, message: str) -> None:
    from common.config import ConfigError
    with pytest.raises(ConfigError) as info:
        loads(text, MasterConfig, "m.toml")
    assert str(info.value) == f"m.toml: {message}"


def test_nearly_equal_free_space_is_a_tie() -> None:
    p = Placement()
    slaves = [load("a", free=50 * GB), load("b", free=50 * GB - 4096), load("c", free=50 * GB + 99 * MB)]
    assert [p.choose("upload", "/f", slaves).chosen for _ in range(6)] == ["a", "b", "c"] * 2


# ------------------------------------------------------------------ bandwidth: the slave's own figures

def rated(name: str, tx: float, rx: float, host_tx: float, host_rx: float) -> SlaveStats:
    return SlaveStats(name=name, incarnation="i", seq=1, ts_ms=0, disk_free=50 * GB, disk_total=100 * GB,
                      load1=0.0, ncpu=4, net_tx_bps=tx, net_rx_bps=rx, active_up=0, active_down=0,
                      host="box", host_net_tx_bps=host_tx, host_net_rx_bps=host_rx)


# Two slaves on one machine: the host NIC counters are the same for both (and large), the
# slaves' own rates tell them apart. (direction, {name: (own tx, own rx)}, host rates, chosen)
@pytest.mark.parametrize("direction, own, host, chosen", [
    ("download", {"a": (300e6, 0.0), "b": (0.0, 0.0)}, (400e6, 400e6), "b"),
    ("download", {"a": (0.0, 0.0), "b": (300e6, 0.0)}, (400e6, 400e6), "a"),
    ("download", {"a": (0.0, 300e6), "b": (100e6, 0.0)}, (400e6, 400e6), "a"),  # a's uploads do not count
    ("upload", {"a": (0.0, 300e6), "b": (0.0, 0.0)}, (400e6, 400e6), "b"),
    ("upload", {"a": (300e6, 0.0), "b": (0.0, 100e6)}, (400e6, 400e6), "a"),  # a's downloads do not count
])
def test_bandwidth_term_uses_the_slaves_own_rates_not_the_hosts(
        direction: str, own: dict[str, tuple[float, float]], host: tuple[float, float], chosen: str) -> None:
    reg = SlaveRegistry()
    for name, (tx, rx) in own.items():
        reg.on_up(SlaveUp(name=name, incarnation="i", data_host="127.0.0.1", max_transfers=10,
                          disk_total=100 * GB, disk_free=50 * GB), now=0.0)
        reg.mark_online(name)
        reg.on_stats(rated(name, tx, rx, *host), now=0.0)
    loads = reg.loads(0.5)
    assert {s.name: (s.tx_bps, s.rx_bps) for s in loads} == own
    selection = Placement().evaluate(direction, "/f", loads)  # type: ignore[arg-type]
    assert selection.chosen == chosen
    tx, rx = own[chosen]
    other = next(n for n in own if n != chosen)
    gap = selection.scores()[chosen] - selection.scores()[other]
    assert gap == pytest.approx(
        ((own[other][1] - rx) if direction == "upload" else (own[other][0] - tx)) / 100e6)
