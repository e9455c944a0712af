"""master.tls decisions as tables: which policy applies to a user, and what AUTH, PBSZ,
PROT, USER/PASS and the data connection commands get under it (RFC 4217)."""

from __future__ import annotations

import pytest

from master import replies, tls


@pytest.mark.parametrize("master, user, want", [
    ("off", None, "off"), ("allowed", None, "allowed"), ("required", None, "required"),
    ("allowed", "required", "required"), ("required", "allowed", "allowed"),
    ("allowed", "off", "off"), ("off", "allowed", "allowed"),
])
def test_effective_policy(master, user, want) -> None:
    assert tls.effective(master, user) == want


@pytest.mark.parametrize("mode, secured, want", [
    ("required", False, replies.TLS_CONTROL_REQUIRED),
    ("required", True, ""),
    ("allowed", False, ""),
    ("allowed", True, ""),
    ("off", False, ""),
    ("off", True, replies.TLS_CONTROL_OFF),
])
def test_login_refusal(mode, secured, want) -> None:
    assert tls.login_refusal(mode, secured) == want
    if want:
        assert want.startswith("530 ")


@pytest.mark.parametrize("mode, private, want", [
    ("required", False, replies.TLS_DATA_REQUIRED),
    ("required", True, ""),
    ("allowed", False, ""),
    ("allowed", True, ""),
    ("off", False, ""),
    ("off", True, replies.TLS_DATA_OFF),
])
def test_data_refusal(mode, private, want) -> None:
    assert tls.data_refusal(mode, private) == want
    if want:
        assert want.startswith("521 ")


@pytest.mark.parametrize("arg, control, secured, want", [
    ("TLS", "allowed", False, (replies.TLS_AUTH_OK, True)),
    ("tls", "required", False, (replies.TLS_AUTH_OK, True)),
    ("TLS-C", "allowed", False, (replies.TLS_AUTH_OK, True)),
    ("SSL", "allowed", False, (replies.TLS_AUTH_OK, True)),
    ("TLS", "off", False, (replies.TLS_AUTH_OFF, False)),
    ("TLS", "allowed", True, (replies.TLS_ALREADY, False)),
    ("KERBEROS_V4", "allowed", False, ("504 AUTH KERBEROS_V4 not supported: use AUTH TLS.", False)),
    ("GSS\x1b[31m", "allowed", False, ("504 AUTH GSS31M not supported: use AUTH TLS.", False)),
])
def test_auth_reply(arg, control, secured, want) -> None:
    assert tls.auth_reply(arg, control, secured) == want
    assert want[0].startswith("234 ") == want[1]


@pytest.mark.parametrize("arg, secured, want", [
    ("0", True, (replies.PBSZ_OK, True)),
    ("1024", True, (replies.PBSZ_OK, True)),  # RFC 4217 8: any size is answered PBSZ=0
    ("x", True, (replies.PBSZ_SYNTAX, False)),
    ("0", False, (replies.PBSZ_BEFORE_AUTH, False)),
])
def test_pbsz_reply(arg, secured, want) -> None:
    assert tls.pbsz_reply(arg, secured) == want


@pytest.mark.parametrize("arg, secured, pbsz, data, want", [
    ("P", True, True, "allowed", (replies.PROT_P_OK, True)),
    ("p", True, True, "required", (replies.PROT_P_OK, True)),
    ("C", True, True, "allowed", (replies.PROT_C_OK, False)),
    ("C", True, True, "required", (replies.PROT_C_OK, False)),  # the transfer gets the 521
    ("P", True, True, "off", (replies.TLS_PROT_P_OFF, None)),
    ("S", True, True, "allowed", ("536 PROT S not supported: use PROT C or PROT P.", None)),
    ("E", True, True, "allowed", ("536 PROT E not supported: use PROT C or PROT P.", None)),
    ("Z", True, True, "allowed", ("504 PROT Z not understood: use PROT C or PROT P.", None)),
    ("P", True, False, "allowed", (replies.PROT_BEFORE_PBSZ, None)),
    ("P", False, False, "allowed", (replies.PROT_BEFORE_AUTH, None)),
])
def test_prot_reply(arg, secured, pbsz, data, want) -> None:
    assert tls.prot_reply(arg, secured, pbsz, data) == want


def test_every_data_connection_command_is_policed() -> None:
    assert tls.DATA_CMDS == {"RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"}
