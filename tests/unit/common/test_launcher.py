"""`ftpcluster up`'s decisions: configs, back-off, readiness parsing, the loopback check."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import config, curve, launcher
from common.launcher import BrokerPorts, ClusterPlan, User

FAKE_HASH = "scrypt$16384$8$1$c2FsdC1zYWx0LXNhbHQtIQ==$aGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGg="


def plan(tmp: Path, slaves: int = 3, **kw) -> ClusterPlan:
    return ClusterPlan(data=tmp, ftp_host="127.0.0.1", ftp_port=2121, slaves=slaves,
                       ports=BrokerPorts(master=6001, slave=6002, stats_in=6003, stats_out=6004),
                       users=(User("demo", FAKE_HASH),), **kw)


def test_configs_load_and_link_up(tmp_path):
    texts = launcher.render_configs(plan(tmp_path))
    assert sorted(texts) == ["broker", "master", "slave1", "slave2", "slave3"]
    broker = config.loads(texts["broker"], config.BrokerConfig).broker
    master = config.loads(texts["master"], config.MasterConfig)
    slaves = [config.loads(texts[f"slave{i}"], config.SlaveConfig).slave for i in (1, 2, 3)]

    assert master.master.broker_endpoint == broker.master_endpoint == "tcp://127.0.0.1:6001"
    assert master.master.stats_endpoint == broker.stats_out_endpoint == "tcp://127.0.0.1:6004"
    assert master.master.listen_host == "127.0.0.1" and master.master.listen_port == 2121
    assert master.master.state_dir == str(tmp_path / "master")
    assert [(u.name, u.password_hash, u.perms, u.home) for u in master.users] == [
        ("demo", FAKE_HASH, "elradfmwMTS", "/")]
    for i, slave in enumerate(slaves, 1):
        assert slave.name == f"slave{i}"
        assert slave.root == str(tmp_path / f"slave{i}")
        assert slave.broker_endpoint == broker.slave_endpoint
        assert slave.stats_endpoint == broker.stats_in_endpoint
        assert slave.data_bind == "127.0.0.1"


def test_extra_settings_and_awkward_paths_survive_toml(tmp_path):
    odd = tmp_path / 'dir with "quotes" \\ and ünïcode'
    texts = launcher.render_configs(plan(odd, slaves=1, master_extra={"request_timeout": 3},
                                         slave_extra={"fsync": False}, log_level="debug"))
    master = config.loads(texts["master"], config.MasterConfig)
    slave = config.loads(texts["slave1"], config.SlaveConfig)
    assert master.master.request_timeout == 3 and master.log.level == "debug"
    assert slave.slave.fsync is False
    assert slave.slave.root == str(odd / "slave1")


def test_roles_start_broker_then_master_then_slaves(tmp_path):
    assert plan(tmp_path, slaves=2).roles() == [
        ("broker", "broker"), ("master", "master"), ("slave1", "slave"), ("slave2", "slave")]


def test_write_configs_creates_the_tree(tmp_path):
    p = plan(tmp_path, slaves=2)
    paths = launcher.write_configs(p)
    assert paths["slave2"] == tmp_path / "conf" / "slave2.toml"
    for name in ("broker", "master", "slave1", "slave2"):
        assert paths[name].is_file()
    for d in ("log", "master", "slave1", "slave2"):
        assert (tmp_path / d).is_dir()
    config.load(paths["master"], config.MasterConfig)


def test_backoff_starts_at_one_second_doubles_and_caps_at_ten():
    delays, d = [], None
    for _ in range(7):
        d = launcher.backoff_delay(d)
        delays.append(d)
    assert delays == [1, 2, 4, 8, 10, 10, 10]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.5", "::1", "localhost"])
def test_loopback_hosts_are_allowed(host):
    assert launcher.loopback_refusal(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_other_hosts_are_refused_while_the_demo_password_is_in_use(host):
    reason = launcher.loopback_refusal(host)
    assert reason and host in reason and "demo" in reason


def test_run_refuses_a_public_host_with_one_line_and_exit_2(capsys):
    assert launcher.run_local_cluster(port=2121, slaves=1, data="unused", host="0.0.0.0") == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "0.0.0.0" in err


def test_online_slaves_reads_the_site_slaves_reply():
    reply = ("200-3 slaves\n"
             " slave1 online free=100 total=200 active=0\n"
             " slave2 merging free=100 total=200 active=0\n"
             " slave3 ONLINE free=1 total=2 active=4\n"
             "200 end")
    assert launcher.online_slaves(reply) == ["slave1", "slave3"]
    assert launcher.online_slaves("200 no slaves") == []


def test_free_ports_are_distinct():
    ports = launcher.free_ports(4)
    assert len(set(ports)) == 4 and all(0 < p < 65536 for p in ports)


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    import socket

    from common.launcher import PRIVATE_PORTS_FROM, _ephemeral_range_start, free_ports
    ports = free_ports(20)
    assert len(set(ports)) == 20
    # Outside the range the kernel takes source ports from, so no client can self-connect.
    assert all(PRIVATE_PORTS_FROM <= p < _ephemeral_range_start() for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as every server here does
            s.bind(("127.0.0.1", port))


# ---------------------------------------------------------------- existing configs are kept

def existing(tmp: Path, **kw) -> launcher.ExistingConfigs:
    return launcher.ExistingConfigs(conf_dir=tmp / "conf", **kw)


ALL_PORTS = {"master": 6001, "slave": 6002, "stats_in": 6003, "stats_out": 6004}
FRESH = [7001, 7002, 7003, 7004, 7005, 7006, 7007, 7008]


def test_a_new_data_directory_gets_every_config_with_the_options_or_defaults(tmp_path):
    d = launcher.decide_start(existing(tmp_path), port=None, host=None, slaves=None, fresh_ports=FRESH)
    assert (d.ftp_host, d.ftp_port, d.slaves) == ("127.0.0.1", 2121, 3)
    assert d.write == ("broker", "master", "slave1", "slave2", "slave3")
    assert d.ports == BrokerPorts(7001, 7002, 7003, 7004) and d.notices == ()
    d = launcher.decide_start(existing(tmp_path), port=2200, host="127.0.0.2", slaves=1, fresh_ports=FRESH)
    assert (d.ftp_host, d.ftp_port, d.slaves, d.write) == ("127.0.0.2", 2200, 1, ("broker", "master", "slave1"))


def test_a_complete_set_of_configs_is_kept_and_nothing_is_written(tmp_path):
    roles = frozenset({"broker", "master", "slave1", "slave2"})
    d = launcher.decide_start(existing(tmp_path, roles=roles, ports=ALL_PORTS, listen=("127.0.0.1", 2300)),
                              port=None, host=None, slaves=None, fresh_ports=FRESH)
    assert d.write == () and d.notices == ()
    assert (d.ftp_port, d.slaves) == (2300, 2)  # the slaves that have configs, not the default 3
    assert d.ports == BrokerPorts(6001, 6002, 6003, 6004)


def test_an_existing_master_config_wins_over_a_differing_port_and_host_with_one_line_each(tmp_path):
    ex = existing(tmp_path, roles=frozenset({"broker", "master", "slave1"}), ports=ALL_PORTS,
                  listen=("127.0.0.1", 2300))
    d = launcher.decide_start(ex, port=2121, host="127.0.0.5", slaves=None, fresh_ports=FRESH)
    assert (d.ftp_host, d.ftp_port) == ("127.0.0.1", 2300)
    port_line, host_line = d.notices
    assert str(tmp_path / "conf" / "master.toml") in port_line
    assert "listen_port = 2300" in port_line and "wins over --port 2121" in port_line
    assert "listen_host = \"127.0.0.1\"" in host_line and "--host 127.0.0.5" in host_line
    same = launcher.decide_start(ex, port=2300, host="127.0.0.1", slaves=None, fresh_ports=FRESH)
    assert same.notices == ()


def test_more_slaves_write_only_the_missing_slave_configs_with_the_brokers_ports(tmp_path):
    ex = existing(tmp_path, roles=frozenset({"broker", "master", "slave1", "slave2"}), ports=ALL_PORTS,
                  listen=("127.0.0.1", 2121))
    d = launcher.decide_start(ex, port=None, host=None, slaves=4, fresh_ports=FRESH)
    assert d.write == ("slave3", "slave4") and d.slaves == 4
    assert d.ports == BrokerPorts(6001, 6002, 6003, 6004) and d.notices == ()


def test_fewer_slaves_keep_the_other_configs_but_do_not_start_them(tmp_path):
    ex = existing(tmp_path, roles=frozenset({"broker", "master", "slave1", "slave2", "slave3"}),
                  ports=ALL_PORTS, listen=("127.0.0.1", 2121))
    d = launcher.decide_start(ex, port=None, host=None, slaves=1, fresh_ports=FRESH)
    assert d.write == () and d.slaves == 1
    (line,) = d.notices
    assert "not starting slave2, slave3" in line and str(tmp_path / "conf") in line


def test_a_missing_broker_config_reuses_the_ports_the_others_name(tmp_path):
    ex = existing(tmp_path, roles=frozenset({"master", "slave1"}), ports=ALL_PORTS, listen=("127.0.0.1", 2121))
    d = launcher.decide_start(ex, port=None, host=None, slaves=None, fresh_ports=FRESH)
    assert d.write == ("broker",) and d.ports == BrokerPorts(6001, 6002, 6003, 6004)
    # Only the master's config left: its two ports are kept, the slaves' are fresh (and not
    # one the existing files already use).
    ex = existing(tmp_path, roles=frozenset({"master"}), ports={"master": 6001, "stats_out": 7001},
                  listen=("127.0.0.1", 2121))
    d = launcher.decide_start(ex, port=None, host=None, slaves=None, fresh_ports=FRESH)
    assert d.write == ("broker", "slave1", "slave2", "slave3")
    assert d.ports == BrokerPorts(master=6001, slave=7002, stats_in=7003, stats_out=7001)


def test_a_port_needed_from_an_endpoint_that_is_not_tcp_is_a_one_line_error(tmp_path):
    ex = existing(tmp_path, roles=frozenset({"broker", "master", "slave1"}),
                  ports={"master": 6001, "stats_in": 6003, "stats_out": 6004},
                  unreadable={"slave": "conf/broker.toml: key broker.slave_endpoint: 'ipc:///tmp/s'"},
                  listen=("127.0.0.1", 2121))
    assert launcher.decide_start(ex, port=None, host=None, slaves=None, fresh_ports=FRESH).write == ()
    with pytest.raises(config.ConfigError) as err:
        launcher.decide_start(ex, port=None, host=None, slaves=2, fresh_ports=FRESH)
    assert str(err.value) == ("conf/broker.toml: key broker.slave_endpoint: 'ipc:///tmp/s': "
                              "expected tcp://HOST:PORT to write slave2.toml from it")


def test_read_existing_reads_what_write_configs_wrote(tmp_path):
    p = plan(tmp_path, slaves=2)
    launcher.write_configs(p)
    (tmp_path / "conf" / "slave9.toml.bak").write_text("not a config")
    ex = launcher.read_existing(tmp_path / "conf")
    assert ex.roles == {"broker", "master", "slave1", "slave2"} and ex.slave_numbers == [1, 2]
    assert ex.ports == ALL_PORTS and ex.listen == ("127.0.0.1", 2121) and ex.unreadable == {}
    (tmp_path / "conf" / "broker.toml").unlink()
    assert launcher.read_existing(tmp_path / "conf").ports == ALL_PORTS  # from master and slave1
    assert launcher.read_existing(tmp_path / "nothing").roles == frozenset()


def test_read_existing_stops_at_a_bad_config_with_one_line_naming_file_and_key(tmp_path):
    launcher.write_configs(plan(tmp_path, slaves=1))
    master = tmp_path / "conf" / "master.toml"
    master.write_text(master.read_text().replace("[master]", "[master]\nlisten_prot = 1"))
    with pytest.raises(config.ConfigError) as err:
        launcher.read_existing(tmp_path / "conf")
    assert str(err.value) == f"{master}: key master.listen_prot: unknown key"


def test_write_configs_only_writes_the_named_ones(tmp_path):
    launcher.write_configs(plan(tmp_path, slaves=1))
    master = tmp_path / "conf" / "master.toml"
    master.write_text(master.read_text() + "# the operator's edit\n")
    paths = launcher.write_configs(plan(tmp_path, slaves=2), only=("slave2",))
    assert paths["slave2"].is_file() and "# the operator's edit" in master.read_text()


def test_endpoint_port():
    assert launcher.endpoint_port("tcp://127.0.0.1:6001") == 6001
    assert launcher.endpoint_port("tcp://[::1]:6001") == 6001
    assert launcher.endpoint_port("tcp://*:6001") == 6001
    assert launcher.endpoint_port("ipc:///run/x") is None
    assert launcher.endpoint_port("tcp://127.0.0.1:99999") is None


def test_up_configs_run_with_curve_and_the_keys_of_every_role(tmp_path):
    p = plan(tmp_path, slaves=2)
    paths = launcher.write_configs(p)
    broker = config.load(paths["broker"], config.BrokerConfig)
    assert broker.curve is not None
    assert broker.curve.slave_keys == str(tmp_path / "keys" / "slaves")
    names = {role: curve.read_key_dir(Path(getattr(broker.curve, f"{role}_keys")))
             for role in ("master", "slave", "stats")}
    assert sorted(names["slave"].values()) == ["slave1", "slave2"]
    assert list(names["master"].values()) == ["master"] and list(names["stats"].values()) == ["stats"]
    broker_public = curve.read_pair(Path(broker.curve.secret_key))[0]
    for role in ("master", "slave1", "slave2"):
        kind = config.MasterConfig if role == "master" else config.SlaveConfig
        keys = config.load(paths[role], kind).curve
        assert keys is not None and curve.read_public(Path(keys.broker_key)) == broker_public
        own = curve.read_pair(Path(keys.secret_key))[0]
        assert own in names["master" if role == "master" else "slave"]


def test_existing_keys_are_kept_and_missing_ones_made(tmp_path):
    launcher.write_configs(plan(tmp_path, slaves=1))
    before = {p: p.read_bytes() for p in (tmp_path / "keys").rglob("*") if p.is_file()}
    made = launcher.write_keys(plan(tmp_path, slaves=2))
    assert made == [tmp_path / "keys" / "slaves" / "slave2.key_secret"]
    assert all(p.read_bytes() == text for p, text in before.items())


def test_without_curve_no_keys_and_no_curve_sections(tmp_path):
    texts = launcher.render_configs(plan(tmp_path, curve=False))
    assert all("[curve]" not in text for text in texts.values())
    launcher.write_configs(plan(tmp_path, curve=False))
    assert not (tmp_path / "keys").exists()
