"""slave.registration: the slave's standing with the broker, as tables of events and times."""

from __future__ import annotations

import pytest

from slave.registration import HELLO_RETRY_S, HELLO_RETRY_UNSENT_S, Due, Registration


def welcomed_at(now: float, heartbeat_ms: int = 1000, liveness: int = 5) -> Registration:
    reg = Registration(now)
    reg.hello_sent(now, queued=True)
    assert reg.welcome(heartbeat_ms, liveness) is True
    reg.received(now)
    reg.sent(now)
    return reg


def test_a_new_slave_says_hello_at_once_then_retries() -> None:
    reg = Registration(10.0)
    assert reg.tick(10.0) == [Due.HELLO]
    reg.hello_sent(10.0, queued=False)  # no connection took it
    assert reg.tick(10.1) == [] and reg.deadlines() == [10.0 + HELLO_RETRY_UNSENT_S]
    assert reg.tick(10.0 + HELLO_RETRY_UNSENT_S) == [Due.HELLO]
    reg.hello_sent(10.3, queued=True)
    assert reg.tick(11.0) == [] and reg.deadlines() == [10.3 + HELLO_RETRY_S]
    assert reg.tick(10.3 + HELLO_RETRY_S) == [Due.HELLO]


@pytest.mark.parametrize(("heartbeat_ms", "liveness", "heartbeat_s", "kept_liveness"), [
    (1000, 5, 1.0, 5), (10, 5, 0.05, 5), (500, 0, 0.5, 1),
])
def test_welcome_sets_the_beat(heartbeat_ms: int, liveness: int, heartbeat_s: float,
                               kept_liveness: int) -> None:
    reg = welcomed_at(0.0, heartbeat_ms, liveness)
    assert (reg.heartbeat_s, reg.liveness) == (heartbeat_s, kept_liveness)
    assert reg.welcome(heartbeat_ms, liveness) is False  # a second Welcome is not "new"


# (seconds since our last send, seconds since the broker's last frame) -> what is due
WELCOMED = [
    (0.5, 0.5, []),
    (1.0, 0.5, [Due.HEARTBEAT]),
    (0.2, 5.0, []),
    (0.2, 5.1, [Due.BROKER_SILENT, Due.HELLO]),
]


@pytest.mark.parametrize(("since_send", "since_recv", "due"), WELCOMED)
def test_welcomed_ticks(since_send: float, since_recv: float, due: list[Due]) -> None:
    reg = welcomed_at(100.0)
    now = 110.0
    reg.sent(now - since_send)
    reg.received(now - since_recv)
    assert reg.tick(now) == due
    assert reg.welcomed is (Due.BROKER_SILENT not in due)


def test_deadlines_follow_the_state() -> None:
    reg = welcomed_at(0.0)
    assert reg.deadlines() == [1.0, 5.0]
    reg.start_over(2.0)  # Disconnect from the broker
    assert not reg.welcomed and reg.deadlines() == [2.0] and reg.tick(2.0) == [Due.HELLO]
    assert reg.silence(7.5) == 7.5


# monitor events in order -> which of them ask for a Hello
CONNECTIONS = [
    ("first connect, Hello already queued", True, [False], [False]),
    ("first connect, Hello not queued yet", False, [False], [True]),
    ("disconnect, then reconnect", True, [True, False], [False, True]),
    ("a second connect event after the reconnect", True, [True, False, False], [False, True, False]),
]


@pytest.mark.parametrize(("name", "queued", "events", "hello"), CONNECTIONS,
                         ids=[c[0] for c in CONNECTIONS])
def test_connection_events(name: str, queued: bool, events: list[bool], hello: list[bool]) -> None:
    reg = Registration(0.0)
    reg.hello_sent(0.0, queued=queued)
    assert [reg.connection_event(disconnected) for disconnected in events] == hello


def test_a_refused_handshake_brings_one_reconnect_after_the_retry_delay() -> None:
    from slave.registration import REFUSED_RETRY_S
    reg = Registration(0.0)
    reg.hello_sent(0.0, queued=True)
    assert reg.handshake_failed(1.0) is True
    assert reg.handshake_failed(1.5) is False  # the PUB's or a second refusal: one reconnect
    assert 1.0 + REFUSED_RETRY_S in reg.deadlines()
    assert Due.RECONNECT not in reg.tick(1.0 + REFUSED_RETRY_S - 0.01)
    assert reg.tick(1.0 + REFUSED_RETRY_S)[0] is Due.RECONNECT
    assert Due.RECONNECT not in reg.tick(1.0 + 2 * REFUSED_RETRY_S)
    assert reg.handshake_failed(20.0) is True  # refused again: another one later
