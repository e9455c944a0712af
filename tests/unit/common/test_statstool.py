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
