"""SIZE, REST and XCRC in TYPE A (master.replies.type_a_refusal): refused with the RFC codes."""

from __future__ import annotations

import pytest

from master.replies import type_a_refusal


@pytest.mark.parametrize(("command", "current_type", "code"), [
    ("SIZE", "a", "550"),   # RFC 3659 4.2: size not available in this TYPE
    ("REST", "a", "501"),   # as pyftpdlib; RFC 959 lists 501 for REST
    ("XCRC", "a", "550"),
    ("SIZE", "i", ""),
    ("REST", "i", ""),
    ("XCRC", "i", ""),
    ("RETR", "a", ""),      # transfers themselves convert instead
    ("STOR", "a", ""),
])
def test_type_a_refusals(command: str, current_type: str, code: str) -> None:
    reply = type_a_refusal(command, current_type)
    assert reply[:3] == code
    if code:
        assert "ASCII mode" in reply and "TYPE I" in reply  # says why and what to do
