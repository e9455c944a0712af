"""The broker registry driven without sockets, with a fake clock (`now`)."""

from __future__ import annotations

import pytest

from broker.registry import HEARTBEAT_MS, LIVENESS, Registry, Send
from common import messages as m

MASTER = b"\x00master"
S1 = b"\x00slave-1"
S1_NEW = b"\x00slave-1b"
S2 = b"\x00slave-2"


def hello(name: str = "s1", incarnation: str = "inc-a") -> m.Hello:
    return m.Hello(name=name, incarnation=incarnation, data_host="10.0.0.1", max_transfers=8,
                   disk_total=100, disk_free=50)


def to_master(sends: list[Send]) -> list[m.Message]:
    assert all(s.routing_id == MASTER for s in sends if s.to == "master")
    return [s.msg for s in sends if s.to == "master"]


def to_slave(sends: list[Send], routing_id: bytes) -> list[m.Message]:
    return [s.msg for s in sends if s.to == "slave" and s.routing_id == routing_id]


@pytest.fixture
def reg() -> Registry:
    """A registry with a master already connected at t=0."""
    registry = Registry()
    registry.from_master(MASTER, m.MasterHello(incarnation="master-1"), now=0.0)
    return registry


def test_defaults_are_one_second_and_five_beats() -> None:
    assert (HEARTBEAT_MS, LIVENESS) == (1000, 5)
    registry = Registry()
    assert registry.interval == 1.0 and registry.expiry == 5.0


def test_hello_registers_welcomes_and_tells_master(reg: Registry) -> None:
    sends = reg.from_slave(S1, hello(), now=1.0)
    assert to_slave(sends, S1) == [m.Welcome(heartbeat_ms=1000, liveness=5)]
    assert to_master(sends) == [m.SlaveUp(name="s1", incarnation="inc-a", data_host="10.0.0.1",
                                          max_transfers=8, disk_total=100, disk_free=50)]
    assert reg.slaves["s1"].routing_id == S1
    assert reg.take_changes() == to_master(sends)
    assert reg.take_changes() == []


def test_hello_without_master_is_still_registered_and_master_messages_dropped() -> None:
    registry = Registry()
    sends = registry.from_slave(S1, hello(), now=0.0)
    assert [s.to for s in sends] == ["slave"]
    assert "s1" in registry.slaves


def test_heartbeat_expiry_at_exactly_liveness(reg: Registry) -> None:
    reg.from_slave(S1, hello(), now=10.0)
    reg.from_slave(S1, m.Heartbeat(), now=12.0)
    reg.from_master(MASTER, m.Heartbeat(), now=12.0)
    assert reg.sweep(now=16.999) == []
    assert "s1" in reg.slaves
    sends = reg.sweep(now=17.0)  # 12.0 + 1 s * 5
    assert to_master(sends) == [m.SlaveDown(name="s1", incarnation="inc-a", reason="heartbeat expired")]
    assert "s1" not in reg.slaves
    assert reg.sweep(now=30.0) == []  # reported once
    # The dead slave's next message is from an unknown sender.
    assert to_slave(reg.from_slave(S1, m.Heartbeat(), now=30.0), S1) == [
        m.Disconnect(reason="not registered")]


def test_any_message_counts_as_sign_of_life(reg: Registry) -> None:
    reg.from_slave(S1, hello(), now=0.0)
    reg.from_slave(S1, m.OpResult(req_id=1, ok=True), now=4.0)
    assert reg.sweep(now=8.0) == []


def test_new_incarnation_replaces_old(reg: Registry) -> None:
    reg.from_slave(S1, hello(incarnation="inc-a"), now=0.0)
    reg.take_changes()
    sends = reg.from_slave(S1_NEW, hello(incarnation="inc-b"), now=1.0)
    master_msgs = to_master(sends)
    assert master_msgs[0] == m.SlaveDown(name="s1", incarnation="inc-a",
                                         reason="replaced by a new incarnation")
    assert isinstance(master_msgs[1], m.SlaveUp) and master_msgs[1].incarnation == "inc-b"
    assert len(master_msgs) == 2
    assert to_slave(sends, S1) == [
        m.Disconnect(reason="superseded: another slave named s1 is registered")]
    assert to_slave(sends, S1_NEW) == [m.Welcome(heartbeat_ms=1000, liveness=5)]
    assert reg.slaves["s1"].routing_id == S1_NEW
    assert reg.slave_by_routing_id(S1) is None
    assert [type(c) for c in reg.take_changes()] == [m.SlaveDown, m.SlaveUp]


def test_two_slaves_with_one_name_do_not_storm(reg: Registry) -> None:
    """The older of two processes sharing a name is refused, not registered (no up/down
    flips however often it says Hello); the newer one stays."""
    superseded = m.Disconnect(reason="superseded: another slave named s1 is registered")
    newer = m.Hello(name="s1", incarnation="inc-a", data_host="h", max_transfers=1, started_ns=200)
    older = m.Hello(name="s1", incarnation="inc-z", data_host="h", max_transfers=1, started_ns=100)
    reg.from_slave(S1_NEW, newer, now=0.0)
    reg.take_changes()
    for i in range(50):
        sends = reg.from_slave(S1, older, now=0.1 + i * 0.01)
        assert sends == [Send("slave", S1, superseded)]
    assert reg.take_changes() == []
    assert reg.slaves["s1"].incarnation == "inc-a" and reg.slave_by_routing_id(S1) is None
    # A refused sender is not registered: its other messages get "not registered".
    assert to_slave(reg.from_slave(S1, m.Heartbeat(), now=1.0), S1) == [
        m.Disconnect(reason="not registered")]
    # Same start time: the greater incarnation id decides, the same way every time.
    tie = m.Hello(name="s1", incarnation="inc-0", data_host="h", max_transfers=1, started_ns=200)
    assert reg.from_slave(S2, tie, now=1.0) == [Send("slave", S2, superseded)]


def test_restarted_newer_slave_replaces_and_supersedes_the_old(reg: Registry) -> None:
    superseded = m.Disconnect(reason="superseded: another slave named s1 is registered")
    first = m.Hello(name="s1", incarnation="inc-z", data_host="h", max_transfers=1, started_ns=100)
    restarted = m.Hello(name="s1", incarnation="inc-a", data_host="h", max_transfers=1, started_ns=300)
    reg.from_slave(S1, first, now=0.0)
    reg.take_changes()
    sends = reg.from_slave(S1_NEW, restarted, now=1.0)
    assert to_slave(sends, S1) == [superseded]
    assert to_slave(sends, S1_NEW) == [m.Welcome(heartbeat_ms=1000, liveness=5)]
    assert [type(c) for c in reg.take_changes()] == [m.SlaveDown, m.SlaveUp]
    assert reg.slaves["s1"].incarnation == "inc-a"
    # The old process, if it says Hello again before exiting, is refused: no flip back.
    assert reg.from_slave(S1, first, now=2.0) == [Send("slave", S1, superseded)]
    assert reg.take_changes() == []
    # The registered process re-saying Hello (reconnect) is still just SlaveUp.
    assert [type(x) for x in to_master(reg.from_slave(S1_NEW, restarted, now=3.0))] == [m.SlaveUp]


def test_same_incarnation_from_new_routing_id_repoints_route(reg: Registry) -> None:
    reg.from_slave(S1, hello(), now=0.0)
    sends = reg.from_slave(S1_NEW, hello(), now=1.0)
    assert [type(x) for x in to_master(sends)] == [m.SlaveUp]
    assert to_slave(sends, S1) == []  # no Disconnect for the same process
    assert to_slave(sends, S1_NEW) == [m.Welcome(heartbeat_ms=1000, liveness=5)]
    assert reg.slave_by_routing_id(S1) is None
    cmd = m.Delete(req_id=7, path="/x")
    routed = reg.from_master(MASTER, m.ToSlave(slave="s1", cmd=cmd), now=2.0)
    assert routed == [Send("slave", S1_NEW, cmd)]
    # The old connection is now an unknown sender.
    assert to_slave(reg.from_slave(S1, m.Heartbeat(), now=2.0), S1) == [
        m.Disconnect(reason="not registered")]


def test_unknown_sender_gets_disconnect(reg: Registry) -> None:
    for msg in (m.Heartbeat(), m.OpResult(req_id=1, ok=True)):
        assert reg.from_slave(S2, msg, now=0.0) == [
            Send("slave", S2, m.Disconnect(reason="not registered"))]
    assert reg.from_slave(S2, m.Bye(), now=0.0) == []
    assert reg.from_master(b"\x00stranger", m.Heartbeat(), now=0.0) == [
        Send("master", b"\x00stranger", m.Disconnect(reason="not registered"))]


def test_to_slave_unknown_gives_undeliverable(reg: Registry) -> None:
    sends = reg.from_master(MASTER, m.ToSlave(slave="nobody", cmd=m.MakeDir(req_id=42, path="/d")),
                            now=1.0)
    assert sends == [Send("master", MASTER, m.Undeliverable(slave="nobody", req_id=42,
                                                             reason="slave is not up"))]


def test_reply_is_wrapped_for_master(reg: Registry) -> None:
    reg.from_slave(S1, hello(), now=0.0)
    reply = m.Listening(req_id=3, xfer_id=9, port=40000)
    assert reg.from_slave(S1, reply, now=1.0) == [
        Send("master", MASTER, m.FromSlave(slave="s1", incarnation="inc-a", msg=reply))]


def test_bye_reports_slave_down(reg: Registry) -> None:
    reg.from_slave(S1, hello(), now=0.0)
    sends = reg.from_slave(S1, m.Bye(reason="shutdown"), now=1.0)
    assert to_master(sends) == [m.SlaveDown(name="s1", incarnation="inc-a", reason="bye: shutdown")]
    assert reg.slaves == {}


def test_master_hello_gets_welcome_and_slave_up_for_all() -> None:
    registry = Registry()
    registry.from_slave(S1, hello("s1"), now=0.0)
    registry.from_slave(S2, hello("s2", "inc-z"), now=0.0)
    sends = registry.from_master(MASTER, m.MasterHello(incarnation="m"), now=1.0)
    msgs = to_master(sends)
    assert msgs[0] == m.Welcome(heartbeat_ms=1000, liveness=5)
    assert {(x.name, x.incarnation) for x in msgs[1:] if isinstance(x, m.SlaveUp)} == {
        ("s1", "inc-a"), ("s2", "inc-z")}
    assert len(msgs) == 3
    # A new master routing id replaces the old one.
    other = b"\x00master-2"
    sends = registry.from_master(other, m.MasterHello(incarnation="m2"), now=2.0)
    assert {s.routing_id for s in sends} == {other}
    assert registry.from_master(MASTER, m.Heartbeat(), now=2.0) == [
        Send("master", MASTER, m.Disconnect(reason="not registered"))]


def test_master_silent_is_forgotten(reg: Registry) -> None:
    reg.from_master(MASTER, m.Heartbeat(), now=1.0)
    reg.sweep(now=5.9)
    assert reg.master is not None
    reg.sweep(now=6.0)
    assert reg.master is None
    assert reg.from_slave(S1, hello(), now=6.0) == [
        Send("slave", S1, m.Welcome(heartbeat_ms=1000, liveness=5))]


def test_heartbeats_only_when_idle(reg: Registry) -> None:
    reg.from_slave(S1, hello(), now=0.0)  # Welcome to S1 and SlaveUp to master at t=0
    assert reg.heartbeats(now=0.5) == []
    reg.from_master(MASTER, m.ToSlave(slave="s1", cmd=m.Delete(req_id=1, path="/a")), now=0.75)
    # S1 got a command at 0.75 (not idle); the master last heard from us at 0.
    assert reg.heartbeats(now=1.0) == [Send("master", MASTER, m.Heartbeat())]
    assert reg.heartbeats(now=1.5) == []
    assert reg.heartbeats(now=1.75) == [Send("slave", S1, m.Heartbeat())]
    # Incoming traffic does not count as our sending.
    reg.from_slave(S1, m.Heartbeat(), now=2.5)
    assert Send("slave", S1, m.Heartbeat()) in reg.heartbeats(now=2.75)


def test_tick_sweeps_before_heartbeating(reg: Registry) -> None:
    reg.from_slave(S1, hello(), now=0.0)
    sends = reg.tick(now=5.0)
    assert to_slave(sends, S1) == []  # dead: no heartbeat
    assert m.SlaveDown(name="s1", incarnation="inc-a", reason="heartbeat expired") in to_master(sends)


def test_send_failed_over_hwm_fails_the_command_only(reg: Registry) -> None:
    reg.from_slave(S1, hello(), now=0.0)
    cmd = m.Checksum(req_id=5, path="/f")
    [send] = reg.from_master(MASTER, m.ToSlave(slave="s1", cmd=cmd), now=1.0)
    assert reg.send_failed(send, gone=False, now=1.0) == [
        Send("master", MASTER, m.Undeliverable(slave="s1", req_id=5, reason="slave is overloaded"))]
    assert "s1" in reg.slaves
    assert reg.send_failed(Send("slave", S1, m.Heartbeat()), gone=False, now=1.0) == []


def test_send_failed_unreachable_marks_slave_down(reg: Registry) -> None:
    reg.from_slave(S1, hello(), now=0.0)
    cmd = m.Abort(req_id=6, xfer_id=1)
    [send] = reg.from_master(MASTER, m.ToSlave(slave="s1", cmd=cmd), now=1.0)
    msgs = to_master(reg.send_failed(send, gone=True, now=1.0))
    assert msgs == [m.Undeliverable(slave="s1", req_id=6, reason="slave connection is gone"),
                    m.SlaveDown(name="s1", incarnation="inc-a", reason="connection lost")]
    assert reg.slaves == {}


def test_send_failed_unreachable_master_is_forgotten(reg: Registry) -> None:
    assert reg.send_failed(Send("master", MASTER, m.Heartbeat()), gone=True, now=1.0) == []
    assert reg.master is None


def test_routing_id_reused_for_another_name(reg: Registry) -> None:
    reg.from_slave(S1, hello("s1"), now=0.0)
    sends = reg.from_slave(S1, hello("s9", "inc-q"), now=1.0)
    assert isinstance(to_master(sends)[0], m.SlaveDown)
    assert set(reg.slaves) == {"s9"}
    assert reg.slave_by_routing_id(S1) is reg.slaves["s9"]


def test_hello_with_another_protocol_version_is_refused() -> None:
    reg = Registry()
    hello = m.Hello(name="s1", incarnation="i1", proto=m.PROTOCOL_VERSION + 1, data_host="127.0.0.1",
                    max_transfers=10)
    out = reg.from_slave(b"r1", hello, 0.0)
    assert [type(s.msg) for s in out] == [m.Disconnect]
    assert "protocol" in out[0].msg.reason
    assert "s1" not in reg.slaves


# ---------------------------------------------------------------- names bound to CURVE keys

@pytest.mark.parametrize("hello_name, key_name, registered", [
    ("s1", None, True),   # no CURVE: any name goes
    ("s1", "s1", True),   # the name its key is listed under
    ("s1", "s2", False),  # another slave's name
    ("s2", "s1", False),
])
def test_a_hello_must_carry_the_name_its_key_is_listed_under(reg: Registry, hello_name: str,
                                                             key_name: str | None, registered: bool) -> None:
    sends = reg.from_slave(S1, hello(hello_name), now=1.0, key_name=key_name)
    if registered:
        assert to_slave(sends, S1) == [m.Welcome(heartbeat_ms=1000, liveness=5)]
        assert reg.take_refusals() == []
        assert hello_name in reg.slaves
        return
    assert to_slave(sends, S1) == [m.Disconnect(
        reason=f"refused: Hello names slave {hello_name!r}, but its key is listed as {key_name!r}")]
    assert to_master(sends) == [] and reg.slaves == {} and reg.take_changes() == []
    assert reg.take_refusals() == [f"Hello names slave {hello_name!r}, but its key is listed as {key_name!r}"]
    assert reg.take_refusals() == []


def test_a_listed_key_cannot_supersede_another_slave(reg: Registry) -> None:
    reg.from_slave(S1, hello("s1", "inc-real"), now=1.0, key_name="s1")
    reg.take_changes()
    impostor = m.Hello(name="s1", incarnation="inc-zz", data_host="10.6.6.6", max_transfers=8,
                       started_ns=10**19)
    sends = reg.from_slave(S2, impostor, now=2.0, key_name="s2")
    assert [type(x) for x in to_slave(sends, S2)] == [m.Disconnect]
    assert to_slave(sends, S1) == [] and to_master(sends) == []
    assert reg.slaves["s1"].incarnation == "inc-real" and reg.slaves["s1"].routing_id == S1
    assert reg.take_changes() == []


def test_only_the_key_that_registered_a_name_speaks_for_it(reg: Registry) -> None:
    reg.from_slave(S1, hello("s1"), now=1.0, key_name="s1")
    sends = reg.from_slave(S1, m.Heartbeat(), now=2.0, key_name="s2")
    assert to_slave(sends, S1) == [m.Disconnect(reason="not registered")]
    assert reg.slaves["s1"].last_seen == 1.0
