"""Config errors: every bad file gives exactly one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import config
from common.config import BrokerConfig, ConfigError, MasterConfig, SlaveConfig

REPO = Path(__file__).resolve().parents[3]
HASH = "scrypt$16384$8$1$c2FsdC1zYWx0LXNhbHQtIQ==$aGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGg="
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


# ---------------------------------------------------------------- password hashes, relays, data_host

SALT_B64 = "c2FsdC1zYWx0LXNhbHQtIQ=="
KEY_B64 = "aGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGg="


@pytest.mark.parametrize(("params", "what"), [
    ("1000$8$1", "power of 2"),          # N not a power of two: used to stop the master with a traceback
    (f"{2 ** 17}$8$1", "power of 2"),   # N above 2^16
    ("16384$17$1", "r=17"),             # r above 16
    ("16384$8$0", "p=0"),
])
def test_unusable_password_hash_is_a_config_error(tmp_path, params, what):
    text = f'[[users]]\nname = "demo"\npassword_hash = "scrypt${params}${SALT_B64}${KEY_B64}"\n'
    message = error_for(tmp_path, text, MasterConfig)
    assert "key users[0].password_hash:" in message and what in message, message


def test_short_key_hash_is_a_config_error(tmp_path):
    text = f'[[users]]\nname = "demo"\npassword_hash = "scrypt$16384$8$1${SALT_B64}$aGFzaA=="\n'
    assert "key users[0].password_hash:" in error_for(tmp_path, text, MasterConfig)


def test_largest_accepted_scrypt_parameters(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(f'[[users]]\nname = "demo"\npassword_hash = "scrypt$65536$16$1${SALT_B64}${KEY_B64}"\n')
    assert config.load(path, MasterConfig).users[0].name == "demo"


def test_master_refuses_a_bad_hash_before_creating_its_database(tmp_path):
    from master import service
    state = tmp_path / "state"
    path = tmp_path / "m.toml"
    path.write_text(f'[master]\nstate_dir = "{state}"\n[[users]]\nname = "demo"\n'
                    f'password_hash = "scrypt$1000$8$1${SALT_B64}${KEY_B64}"\n')
    with pytest.raises(ConfigError):
        service.run(str(path))
    assert not (state / "vfs.sqlite3").exists()


def test_max_relays(tmp_path):
    assert MasterConfig().master.max_relays == 64
    message = error_for(tmp_path, "[master]\nmax_relays = 0\n", MasterConfig)
    assert "key master.max_relays:" in message


@pytest.mark.parametrize(("text", "key"), [
    ('data_bind = "localhost"\n', "slave.data_bind"),
    ('data_host = "slave1.example.com"\n', "slave.data_host"),
])
def test_slave_data_address_must_be_an_ip(tmp_path, text, key):
    message = error_for(tmp_path, '[slave]\nname = "s1"\nroot = "/x"\n' + text, SlaveConfig)
    assert f"key {key}:" in message and "IP address" in message


def test_slave_data_host_ip_literal_is_fine(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[slave]\nname = "s1"\nroot = "/x"\ndata_bind = "0.0.0.0"\ndata_host = "::1"\n')
    assert config.load(path, SlaveConfig).slave.data_host == "::1"


@pytest.mark.parametrize("value", ["-1", "5000", '"many"'])
def test_slave_passive_pool_bounds(tmp_path, value):
    message = error_for(tmp_path, f'[slave]\nname = "s1"\nroot = "/x"\npassive_pool = {value}\n',
                        SlaveConfig)
    assert "key slave.passive_pool:" in message and "\n" not in message


# ---------------------------------------------------------------- CURVE keys

CLIENT_CURVE = '[curve]\nsecret_key = "k.key_secret"\nbroker_key = "broker.key"\n'


@pytest.mark.parametrize(("kind", "text", "key", "what"), [
    (BrokerConfig, '[curve]\nsecret_key = "b"\nmaster_keys = "m"\nslave_keys = "s"\n', "curve.stats_keys",
     "required key is missing"),
    (BrokerConfig, '[curve]\nsecret_key = "b"\nmaster_keys = "m"\nslave_keys = "s"\nstats_keys = "t"\n'
     'client_keys = "c"\n', "curve.client_keys", "unknown key"),
    (SlaveConfig, '[slave]\nname = "s1"\nroot = "/x"\n[curve]\nsecret_key = "k"\n', "curve.broker_key",
     "required key is missing"),
    (MasterConfig, CLIENT_CURVE + 'public_key = "p"\n', "curve.public_key", "unknown key"),
])
def test_curve_sections_are_checked_like_every_other(tmp_path, kind, text, key, what):
    message = error_for(tmp_path, text, kind)
    assert f"key {key}:" in message and what in message


def test_no_curve_section_means_no_curve():
    assert config.loads("", BrokerConfig).curve is None
    assert config.loads("", MasterConfig).curve is None
    assert config.loads(CLIENT_CURVE, MasterConfig).curve == config.ClientCurveSection(
        secret_key="k.key_secret", broker_key="broker.key")


def test_key_files_that_cannot_be_used_are_one_line_naming_file_and_key(tmp_path):
    from common import curve

    public, secret = curve.generate(tmp_path, "slave", "s1")
    broker_public, _ = curve.generate(tmp_path, "broker", "broker")
    assert curve.client_keys(str(secret), str(broker_public), "s.toml").server == curve.read_public(broker_public)
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    cases = [
        ((str(tmp_path / "nope"), str(broker_public)), "key curve.secret_key: ", "cannot read: No such file"),
        ((str(public), str(broker_public)), "key curve.secret_key: ", "no valid secret-key line"),
        ((str(junk), str(broker_public)), "key curve.secret_key: ", "not a key file"),
        ((str(tmp_path), str(broker_public)), "key curve.secret_key: ", "is a directory"),
        ((str(secret), str(tmp_path / "nope.key")), "key curve.broker_key: ", "cannot read"),
    ]
    for args, key, problem in cases:
        with pytest.raises(ConfigError) as info:
            curve.client_keys(*args, "s.toml")
        message = str(info.value)
        assert message.startswith(f"s.toml: {key}") and problem in message and "\n" not in message, message
    with pytest.raises(ConfigError) as info:
        curve.server_keys(str(broker_public), "b.toml", "curve.secret_key")
    assert str(info.value).startswith("b.toml: key curve.secret_key: ")


# ---------------------------------------------------------------- FTPS keys

@pytest.fixture
def pem(tmp_path):
    """A self-signed certificate and key, and one more key that does not match it."""
    from common.certs import ensure_self_signed
    cert, key = ensure_self_signed(tmp_path / "tls", "master")
    _, other_key = ensure_self_signed(tmp_path / "tls", "other")
    return cert, key, other_key


def test_tls_keys_load(tmp_path, pem):
    cert, key, _ = pem
    loaded = config.loads(f'[master]\ntls_certfile = "{cert}"\ntls_keyfile = "{key}"\n'
                          'tls_control = "required"\ntls_data = "required"\n'
                          + GOOD_USER + 'tls_data = "allowed"\n', MasterConfig)
    assert loaded.master.tls_control == "required" and loaded.users[0].tls_data == "allowed"
    slave = config.loads(f'[slave]\nname = "s1"\nroot = "/x"\ntls_certfile = "{cert}"\n'
                         f'tls_keyfile = "{key}"\n', SlaveConfig)
    assert slave.slave.tls_certfile == str(cert)


@pytest.mark.parametrize(("text", "key", "what"), [
    ('[master]\ntls_control = "required"\n', "master.tls_control", "needs master.tls_certfile"),
    ('[master]\ntls_data = "required"\n', "master.tls_data", "needs master.tls_certfile"),
    (GOOD_USER + 'tls_control = "required"\n', "users[0].tls_control", "needs master.tls_certfile"),
    ('[master]\ntls_data = "sometimes"\n', "master.tls_data", "expected one of 'off', 'allowed', 'required'"),
    ('[master]\ntls_certfile = "/nonexistent.pem"\n', "master.tls_certfile", "no such file"),
    ('[master]\ntls_keyfile = "/k.pem"\n', "master.tls_keyfile", "set without master.tls_certfile"),
])
def test_bad_tls_keys_master(tmp_path, text, key, what):
    message = error_for(tmp_path, text, MasterConfig)
    assert f"key {key}:" in message and what in message, message


def test_bad_tls_files(tmp_path, pem):
    cert, key, other_key = pem
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    message = error_for(tmp_path, f'[slave]\nname = "s1"\nroot = "/x"\ntls_certfile = "{garbage}"\n',
                        SlaveConfig)
    assert "key slave.tls_certfile: not a PEM certificate" in message, message
    message = error_for(tmp_path, f'[master]\ntls_certfile = "{cert}"\ntls_keyfile = "{other_key}"\n',
                        MasterConfig)
    assert "key master.tls_keyfile: not the PEM private key of the certificate" in message, message
    message = error_for(tmp_path, f'[master]\ntls_certfile = "{cert}"\ntls_keyfile = "{key}"\n'
                        'tls_control = "off"\n'
                        + GOOD_USER + 'tls_control = "required"\n', MasterConfig)
    assert "key users[0].tls_control:" in message and "AUTH TLS" in message, message
