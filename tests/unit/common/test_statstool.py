"""`ftpcluster stats`: where it finds the broker's stats feed."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import launcher, statstool
from common.config import ConfigError
from common.launcher import BrokerPorts, ClusterPlan

FAKE_HASH = "scrypt$16384$8$1$c2FsdC1zYWx0LXNhbHQtIQ==$aGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGg="


def write_cluster(data: Path, stats_out: int = 6004) -> None:
    launcher.write_configs(ClusterPlan(data=data, ftp_host="127.0.0.1", ftp_port=2121, slaves=1,
                                       ports=BrokerPorts(6001, 6002, 6003, stats_out),
                                       users=(launcher.User("demo", FAKE_HASH),)))


def test_with_no_options_it_reads_the_broker_config_up_wrote_in_dot_var(tmp_path, monkeypatch):
    write_cluster(tmp_path / "var")
    monkeypatch.chdir(tmp_path)
    endpoint, source = statstool.find_endpoint()
    assert endpoint == "tcp://127.0.0.1:6004" and source == "var/conf/broker.toml"


def test_with_no_options_and_no_local_cluster_it_uses_the_default_endpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    endpoint, source = statstool.find_endpoint()
    assert endpoint == statstool.DEFAULT_ENDPOINT and "var/conf/broker.toml" in source


def test_data_option_reads_that_directory(tmp_path):
    write_cluster(tmp_path / "elsewhere", stats_out=6104)
    assert statstool.find_endpoint(data=str(tmp_path / "elsewhere"))[0] == "tcp://127.0.0.1:6104"
    with pytest.raises(ConfigError) as err:
        statstool.find_endpoint(data=str(tmp_path / "empty"))
    assert str(tmp_path / "empty" / "conf" / "broker.toml") in str(err.value)
    assert "\n" not in str(err.value)


def test_explicit_endpoint_and_config_win_over_the_local_cluster(tmp_path, monkeypatch):
    write_cluster(tmp_path / "var")
    write_cluster(tmp_path / "other", stats_out=6204)
    monkeypatch.chdir(tmp_path)
    assert statstool.find_endpoint(endpoint="tcp://10.0.0.1:5553") == ("tcp://10.0.0.1:5553", "--endpoint")
    master = str(tmp_path / "other" / "conf" / "master.toml")
    assert statstool.find_endpoint(config=master) == ("tcp://127.0.0.1:6204", master)


# ---------------------------------------------------------------- CURVE keys

def test_keys_come_from_the_up_data_directory_unless_an_endpoint_is_given(tmp_path, monkeypatch):
    from common import curve

    write_cluster(tmp_path / "var")
    keys_dir = tmp_path / "var" / "keys"
    stats_public = curve.read_public(keys_dir / "stats" / "stats.key")
    found = statstool.find_keys(data=str(tmp_path / "var"))
    assert found is not None and found.public == stats_public
    assert found.server == curve.read_public(keys_dir / "broker.key")
    monkeypatch.chdir(tmp_path)
    assert statstool.find_keys() == found  # ./var by default
    assert statstool.find_keys(endpoint="tcp://127.0.0.1:6004") is None
    explicit = statstool.find_keys(str(keys_dir / "stats" / "stats.key_secret"), str(keys_dir / "broker.key"),
                                   endpoint="tcp://127.0.0.1:6004")
    assert explicit == found


def test_keys_from_a_master_config_are_the_masters_and_a_broker_config_needs_key(tmp_path):
    from common import curve

    write_cluster(tmp_path)
    master = statstool.find_keys(config=str(tmp_path / "conf" / "master.toml"))
    assert master is not None and master.public == curve.read_public(tmp_path / "keys" / "master" / "master.key")
    with pytest.raises(ConfigError, match="--key FILE --broker-key FILE"):
        statstool.find_keys(config=str(tmp_path / "conf" / "broker.toml"))


@pytest.mark.parametrize("key, broker_key, problem", [
    ("k", None, "--key and --broker-key go together"),
    (None, "b", "--key and --broker-key go together"),
    ("missing.key_secret", "b", "missing.key_secret: cannot read"),
])
def test_bad_key_options_are_one_line(tmp_path, key, broker_key, problem):
    with pytest.raises(ConfigError) as info:
        statstool.find_keys(key and str(tmp_path / key), broker_key and str(tmp_path / broker_key))
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_no_curve_cluster_means_no_keys(tmp_path):
    launcher.write_configs(ClusterPlan(data=tmp_path, ftp_host="127.0.0.1", ftp_port=2121, slaves=1,
                                       ports=BrokerPorts(6001, 6002, 6003, 6004),
                                       users=(launcher.User("demo", FAKE_HASH),), curve=False))
    assert statstool.find_keys(data=str(tmp_path)) is None
    assert statstool.find_keys(config=str(tmp_path / "conf" / "broker.toml")) is None
