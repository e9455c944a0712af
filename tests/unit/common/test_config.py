"""Config errors: every bad file gives exactly one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import config
from common.config import BrokerConfig, ConfigError, MasterConfig, SlaveConfig

REPO = Path(__file__).resolve().parents[3]
HASH = "scrypt$16384$8$1$c2FsdA$aGFzaA"
GOOD_USER = f'[[users]]\nname = "demo"\npassword_hash = "{HASH}"\n'


def error_for(tmp_path: Path, text: str, kind: type) -> str:
    path = tmp_path / "role.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path, kind)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{path}: "), message
    return message


@pytest.mark.parametrize(("kind", "text", "key", "what"), [
    (BrokerConfig, '[broker]\nheartbeat_msec = 1000\n', "broker.heartbeat_msec", "unknown key"),
    (MasterConfig, '[master]\nlisten_prot = 21\n', "master.listen_prot", "unknown key"),
    (SlaveConfig, '[slave]\nname = "s1"\nroot = "/x"\nfsycn = true\n', "slave.fsycn", "unknown key"),
    (MasterConfig, '[mastre]\n', "mastre", "unknown key"),
    (MasterConfig, GOOD_USER + 'prems = "elr"\n', "users[0].prems", "unknown key"),
])
def test_misspelt_key(tmp_path, kind, text, key, what):
    message = error_for(tmp_path, text, kind)
    assert f"key {key}:" in message and what in message


@pytest.mark.parametrize(("kind", "text", "key", "expected"), [
    (MasterConfig, '[master]\nlisten_port = "2121"\n', "master.listen_port", "int"),
    (BrokerConfig, '[broker]\nliveness = 2.5\n', "broker.liveness", "int"),
    (SlaveConfig, '[slave]\nname = "s1"\nroot = "/x"\nfsync = "yes"\n', "slave.fsync", "bool"),
    (MasterConfig, '[master]\npassive_without_pret = "proxy"\n', "master.passive_without_pret",
     "'proxy'"),
    (MasterConfig, '[log]\nlevel = "loud"\n', "log.level", "'loud'"),
])
def test_wrong_type_or_value(tmp_path, kind, text, key, expected):
    message = error_for(tmp_path, text, kind)
    assert f"key {key}:" in message and expected in message


@pytest.mark.parametrize(("text", "allowed"), [
    ('[log]\nlevel = "loud"\n', "'debug', 'info', 'warning', 'error'"),
    ('[master]\npassive_without_pret = "proxy"\n', "'relay', 'refuse'"),
])
def test_bad_choice_names_the_allowed_values(tmp_path, text, allowed):
    assert error_for(tmp_path, text, MasterConfig).endswith(f"expected one of {allowed}")


@pytest.mark.parametrize(("kind", "text", "key"), [
    (MasterConfig, '[master]\nlisten_port = 70000\n', "master.listen_port"),
    (MasterConfig, '[master]\nlisten_port = -1\n', "master.listen_port"),
    (SlaveConfig, '[slave]\nname = "s1"\nroot = "/x"\npassive_ports = [50000, 65536]\n',
     "slave.passive_ports[1]"),
])
def test_out_of_range_port(tmp_path, kind, text, key):
    message = error_for(tmp_path, text, kind)
    assert f"key {key}:" in message and ("<= 65535" in message or ">= 0" in message)


def test_reversed_port_range(tmp_path):
    message = error_for(tmp_path, '[slave]\nname = "s1"\nroot = "/x"\npassive_ports = [6000, 5000]\n',
                        SlaveConfig)
    assert "key slave.passive_ports:" in message


def test_plain_text_password(tmp_path):
    message = error_for(tmp_path, '[[users]]\nname = "demo"\npassword_hash = "demo"\n', MasterConfig)
    assert "key users[0].password_hash:" in message and "plain-text" in message


@pytest.mark.parametrize(("kind", "text", "key"), [
    (SlaveConfig, '[slave]\nroot = "/x"\n', "slave.name"),
    (SlaveConfig, '[slave]\nname = "s1"\n', "slave.root"),
    (SlaveConfig, '[log]\nlevel = "info"\n', "slave"),
    (MasterConfig, '[[users]]\nname = "demo"\n', "users[0].password_hash"),
])
def test_missing_required_key(tmp_path, kind, text, key):
    message = error_for(tmp_path, text, kind)
    assert f"key {key}:" in message and "missing" in message


def test_bad_slave_name_and_other_user_rules(tmp_path):
    assert "key slave.name:" in error_for(tmp_path, '[slave]\nname = "../x"\nroot = "/x"\n', SlaveConfig)
    assert "duplicate" in error_for(tmp_path, GOOD_USER + GOOD_USER, MasterConfig)
    assert "key users[0].perms:" in error_for(tmp_path, GOOD_USER + 'perms = "elrZ"\n', MasterConfig)
    assert "key users[0].home:" in error_for(tmp_path, GOOD_USER + 'home = "rel"\n', MasterConfig)


def test_not_toml_and_unreadable_file(tmp_path):
    assert "not valid TOML" in error_for(tmp_path, "[broker\n", BrokerConfig)
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        config.load(missing, BrokerConfig)
    assert str(info.value).startswith(f"{missing}: cannot read")


def test_defaults_are_valid():
    assert config.loads("", BrokerConfig).broker.heartbeat_ms == 1000
    assert config.loads("", MasterConfig).master.listen_port == 2121


@pytest.mark.parametrize(("name", "kind"), [
    ("broker.toml", BrokerConfig), ("master.toml", MasterConfig), ("slave.toml", SlaveConfig)])
def test_example_configs_in_conf_load(name, kind):
    loaded = config.load(REPO / "conf" / name, kind)
    assert isinstance(loaded, kind)
