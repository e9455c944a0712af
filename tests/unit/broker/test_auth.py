"""Who the broker admits: key directories per ZAP domain, refusal log pacing, the loopback rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.auth import DOMAIN_ROLES, Refusal, RefusalLog, load_domains, refusal_line
from broker.service import curve_refusal
from common import curve
from common.config import BrokerSection


def keys(tmp: Path, role: str, *names: str) -> dict[str, bytes]:
    out = {}
    for name in names:
        public, _secret = curve.generate(tmp, role, name)
        out[name] = curve.read_public(public)
    return out


def test_each_domain_admits_the_keys_of_its_roles_under_their_names(tmp_path: Path) -> None:
    masters = keys(tmp_path, "master", "master")
    slaves = keys(tmp_path, "slave", "s1", "s2")
    stats = keys(tmp_path, "stats", "ops")
    dirs = {"master": tmp_path / "master", "slave": tmp_path / "slaves", "stats": tmp_path / "stats"}
    domains, counts = load_domains(dirs)
    assert counts == {"master": 1, "slave": 2, "stats": 1}
    assert domains["master"] == {masters["master"]: "master"}
    assert domains["slave"] == domains["stats_in"] == {slaves["s1"]: "s1", slaves["s2"]: "s2"}
    assert domains["stats_out"] == {stats["ops"]: "ops", masters["master"]: "master"}
    assert set(DOMAIN_ROLES["stats_in"]) == {"slave"}, "a subscriber's key may never publish"


@pytest.mark.parametrize("make, problem", [
    (lambda d: (d / "bad name!.key").write_text("public-key = \"x\"\n"), "is not a usable name"),
    (lambda d: (d / "s1.key").write_text("nothing here\n"), "not a key file"),
    (lambda d: None, "cannot read the key directory"),
])
def test_a_bad_key_directory_is_one_clear_error(tmp_path: Path, make, problem: str) -> None:
    directory = tmp_path / "slaves"
    if not problem.startswith("cannot"):
        directory.mkdir()
        make(directory)
    with pytest.raises(curve.KeyFileError, match=problem):
        curve.read_key_dir(directory)


def test_one_key_listed_under_two_names_is_refused(tmp_path: Path) -> None:
    public, _ = curve.generate(tmp_path, "slave", "s1")
    (tmp_path / "slaves" / "s2.key").write_bytes(public.read_bytes())
    with pytest.raises(curve.KeyFileError, match="also listed as 's1'"):
        curve.read_key_dir(tmp_path / "slaves")


@pytest.mark.parametrize("events, expected", [
    # (time, address) of each refusal -> what note() says
    ([(0, "a")], [1]),
    ([(0, "a"), (1, "a"), (2, "a")], [1, None, None]),
    ([(0, "a"), (1, "b")], [1, 1]),
    ([(0, "a"), (10, "a"), (20, "a"), (61, "a")], [1, None, None, 3]),
    ([(0, "a"), (60, "a")], [1, 1]),
])
def test_refusals_are_logged_once_a_minute_per_peer_with_a_count(events, expected) -> None:
    log = RefusalLog(every=60)
    assert [log.note("slave", address, "not listed", now) for now, address in events] == expected


def test_refusal_line_names_port_address_and_reason() -> None:
    assert refusal_line(Refusal("slave", "10.0.0.9", "its key is not listed"), 1) == (
        "refused a connection on the slave port from 10.0.0.9: its key is not listed")
    assert refusal_line(Refusal("master", "", "x"), 3).endswith(
        "from an unknown address: x (3 times in the last minute)")


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5551", True),
    ("tcp://127.1.2.3:5551", True),
    ("tcp://localhost:5551", True),
    ("tcp://[::1]:5551", True),
    ("ipc:///run/ftpcluster/slave", True),
    ("inproc://x", True),
    ("tcp://0.0.0.0:5551", False),
    ("tcp://*:5551", False),
    ("tcp://[::]:5551", False),
    ("tcp://10.0.0.1:5551", False),
    ("tcp://eth0:5551", False),
    ("tcp://broker.example:5551", False),
    ("garbage", False),
])
def test_which_endpoints_count_as_local(endpoint: str, local: bool) -> None:
    assert curve.endpoint_is_local(endpoint) is local


def test_without_curve_the_broker_refuses_any_endpoint_off_loopback() -> None:
    assert curve_refusal(BrokerSection(), curve=False) == ""
    off = BrokerSection(stats_out_endpoint="tcp://0.0.0.0:5553")
    assert curve_refusal(off, curve=True) == ""
    reason = curve_refusal(off, curve=False)
    assert reason.startswith("key broker.stats_out_endpoint: refusing to listen on tcp://0.0.0.0:5553 "
                             "without CURVE") and "\n" not in reason


def test_the_refusal_log_forgets_quiet_peers_when_full() -> None:
    from broker import auth
    log = RefusalLog(every=60)
    for i in range(auth.REFUSAL_PEERS):
        log.note("slave", f"10.0.{i // 256}.{i % 256}", "x", now=0.0)
    assert log.note("slave", "10.9.9.9", "x", now=61.0) == 1
    assert len(log._last) == 1
    assert log.note("slave", "10.0.0.0", "x", now=62.0) == 1  # forgotten: logged again
