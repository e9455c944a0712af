"""master.transfer_state: every transition of the transfer machine, and every refused one,
as tables (no sockets, no clock)."""

from __future__ import annotations

import copy
import errno
from typing import Any

import pytest

from common import messages as m
from master import transfer_state as ts
from master.replies import METADATA_FAILED
from master.transfer_state import State, TransferMachine

OK_DONE = m.TransferDone(xfer_id=1, ok=True, bytes=10, size=10, crc32=0xAB)
FAILED_DONE = m.TransferDone(xfer_id=1, ok=False, bytes=3, size=3, error="boom", errno=errno.EIO)
ABORTED_DONE = m.TransferDone(xfer_id=1, ok=False, bytes=4, size=4, aborted=True)
ANNOUNCE = ts.Announce("150 File status okay. About to open data connection.")
COMPLETE = ts.Reply("226 Transfer complete: 10 bytes, CRC32 000000AB.", True, 10)

EVENTS: list[ts.Event] = [
    ts.Listened(4000), ts.Started(), ts.Refused("EBUSY", errno.EBUSY), ts.Unanswered("gone"),
    ts.Unexpected("Heartbeat"), ts.Done(OK_DONE), ts.Recorded("ok"), ts.RelayEnded(True),
    ts.Lost("slave down"), ts.ClientAbort(), ts.GraceOver(),
]


def machine(state: State, kind: str = "RETR", *, relayed: bool = False, attached: bool = True,
            **fields: Any) -> TransferMachine:
    """A machine put straight into `state` with the fields a real run would have there."""
    mach = TransferMachine(kind, "/d/f.bin", relayed=relayed, attached=attached)
    mach.state = state
    mach.announced = not relayed or state not in (State.LISTENING, State.STARTING)
    if state in (State.RECORDING, State.FLUSHING, State.LATE, State.CLOSED):
        mach.live = False
    for name, value in fields.items():
        setattr(mach, name, value)
    return mach


# (name, machine, event, actions, state after, attached after)
CASES: list[tuple[str, TransferMachine, ts.Event, list[ts.Action], State, bool]] = [
    # LISTENING (relay: the slave opens the listener the relay connects to)
    ("listened", machine(State.LISTENING, relayed=True), ts.Listened(4000),
     [ts.RelayConnect(4000), ts.SendStart()], State.STARTING, True),
    ("listened after the client left", machine(State.LISTENING, relayed=True, attached=False),
     ts.Listened(4000), [ts.SendAbort(), ts.Unwatch(), ts.Release(False)], State.CLOSED, False),
    ("listen refused", machine(State.LISTENING, relayed=True), ts.Refused("no port", errno.EADDRINUSE),
     [ts.Unwatch(), ts.Release(True), ts.RelayAbort(),
      ts.Reply("451 Requested action aborted: local error in processing: no port.")],
     State.CLOSED, False),
    ("listen timed out", machine(State.LISTENING, relayed=True), ts.Unanswered("timeout"),
     [ts.SendAbort(), ts.Unwatch(), ts.Release(True), ts.RelayAbort(),
      ts.Reply("451 Requested action aborted: storage slave unavailable (timeout).")],
     State.CLOSED, False),
    ("listen answered oddly", machine(State.LISTENING, relayed=True), ts.Unexpected("Started"),
     [ts.Unwatch(), ts.Release(True), ts.RelayAbort(),
      ts.Reply("451 Requested action aborted: unexpected Started from slave.")], State.CLOSED, False),
    ("lost while listening", machine(State.LISTENING, relayed=True), ts.Lost("slave down"),
     [ts.Release(True), ts.Unwatch(), ts.RelayAbort(),
      ts.Reply("426 Connection closed; transfer aborted: slave down.")], State.CLOSED, False),
    ("client aborts while listening", machine(State.LISTENING, relayed=True), ts.ClientAbort(),
     [ts.SendAbort(), ts.RelayAbort(), ts.Detach()], State.LISTENING, False),
    # STARTING
    ("started (direct: 150 already out)", machine(State.STARTING), ts.Started(), [],
     State.RUNNING, True),
    ("started (relay: 150 now, relay starts)", machine(State.STARTING, relayed=True), ts.Started(),
     [ANNOUNCE, ts.RelayStart()], State.RUNNING, True),
    ("relay started after the client left", machine(State.STARTING, relayed=True, attached=False),
     ts.Started(), [], State.RUNNING, False),
    ("STOU started on a relay announces the name", machine(State.STARTING, "STOU", relayed=True),
     ts.Started(), [ts.Announce("150 FILE: f.bin"), ts.RelayStart()], State.RUNNING, True),
    ("refused: file gone", machine(State.STARTING), ts.Refused("no such file", errno.ENOENT),
     [ts.Unwatch(), ts.Release(True), ts.Reply("550 No such file or directory.")], State.CLOSED, False),
    ("start answered oddly", machine(State.STARTING), ts.Unexpected("Listening"),
     [ts.Unwatch(), ts.Release(True),
      ts.Reply("451 Requested action aborted: unexpected Listening from slave.")], State.CLOSED, False),
    ("refused: disk full", machine(State.STARTING, "STOR"), ts.Refused("full", errno.ENOSPC),
     [ts.Unwatch(), ts.Release(True), ts.Reply("452 Insufficient storage space on the slave.")],
     State.CLOSED, False),
    ("refused: cannot connect", machine(State.STARTING), ts.Refused("refused", errno.ECONNREFUSED),
     [ts.Unwatch(), ts.Release(True), ts.Reply("425 Can't open data connection: refused.")],
     State.CLOSED, False),
    ("start timed out after the 150: lost", machine(State.STARTING, "STOR"), ts.Unanswered("timeout"),
     [ts.SendAbort(), ts.Release(True),
      ts.Reply("426 Connection closed; transfer aborted: storage slave unavailable (timeout)."),
      ts.WaitLate()], State.LATE, False),
    ("start undeliverable after the 150 (download)", machine(State.STARTING), ts.Unanswered("gone"),
     [ts.Release(True), ts.Unwatch(),
      ts.Reply("426 Connection closed; transfer aborted: storage slave unavailable (gone).")],
     State.CLOSED, False),
    ("relay start undeliverable before any 150", machine(State.STARTING, relayed=True),
     ts.Unanswered("gone"), [ts.Unwatch(), ts.Release(True), ts.RelayAbort(),
                              ts.Reply("451 Requested action aborted: storage slave unavailable (gone).")],
     State.CLOSED, False),
    ("lazy start ended before Started", machine(State.STARTING), ts.Done(OK_DONE),
     [ts.CancelStart(), ts.Release(False), COMPLETE], State.CLOSED, False),
    ("lost while starting", machine(State.STARTING), ts.Lost("slave down"),
     [ts.Release(True), ts.Unwatch(),
      ts.Reply("426 Connection closed; transfer aborted: slave down.")], State.CLOSED, False),
    ("client aborts while starting", machine(State.STARTING), ts.ClientAbort(),
     [ts.SendAbort(), ts.Detach()], State.STARTING, False),
    # RUNNING
    ("download done", machine(State.RUNNING), ts.Done(OK_DONE), [ts.Release(False), COMPLETE],
     State.CLOSED, False),
    ("download failed", machine(State.RUNNING), ts.Done(FAILED_DONE),
     [ts.Release(False), ts.Reply("451 Requested action aborted: local error in processing: boom.",
                                  False, 3)], State.CLOSED, False),
    ("download aborted", machine(State.RUNNING), ts.Done(ABORTED_DONE),
     [ts.Release(False), ts.Reply("426 Transfer aborted; 4 bytes transmitted.", False, 4)],
     State.CLOSED, False),
    ("upload done: record first", machine(State.RUNNING, "STOR"), ts.Done(OK_DONE),
     [ts.Release(False), ts.Record(OK_DONE)], State.RECORDING, True),
    ("relayed download done, relay still copying", machine(State.RUNNING, relayed=True),
     ts.Done(OK_DONE, relay_copying=True), [ts.Release(False)], State.FLUSHING, True),
    ("relayed download failed, its relay never started", machine(State.RUNNING, relayed=True),
     ts.Done(FAILED_DONE), [ts.Release(False), ts.RelayAbort(),
                            ts.Reply("451 Requested action aborted: local error in processing: boom.",
                                     False, 3)], State.CLOSED, False),
    ("relayed download done after the client left", machine(State.RUNNING, relayed=True, attached=False),
     ts.Done(OK_DONE), [ts.Release(False), ts.RelayAbort()], State.CLOSED, False),
    ("relay ended first (ok)", machine(State.RUNNING, "STOR", relayed=True), ts.RelayEnded(True),
     [], State.RELAY_ENDED, True),
    ("relay failed first: stop the slave", machine(State.RUNNING, relayed=True),
     ts.RelayEnded(False, "reset"), [ts.SendAbort()], State.RELAY_ENDED, True),
    ("lost while running (download)", machine(State.RUNNING), ts.Lost("slave down"),
     [ts.Release(True), ts.Unwatch(), ts.Reply("426 Connection closed; transfer aborted: slave down.")],
     State.CLOSED, False),
    ("lost while running (upload waits for a late outcome)", machine(State.RUNNING, "APPE"),
     ts.Lost("broker lost"), [ts.Release(True),
                              ts.Reply("426 Connection closed; transfer aborted: broker lost."),
                              ts.WaitLate()], State.LATE, False),
    ("client aborts a relay", machine(State.RUNNING, relayed=True), ts.ClientAbort(),
     [ts.SendAbort(), ts.RelayAbort(), ts.Detach()], State.RUNNING, False),
    # RELAY_ENDED
    ("relay over, then the slave's outcome", machine(State.RELAY_ENDED, relayed=True,
                                                     relay_result=ts.RelayEnded(True)),
     ts.Done(OK_DONE), [ts.Release(False), ts.RelayAbort(), COMPLETE], State.CLOSED, False),
    ("relay failed, slave ok", machine(State.RELAY_ENDED, relayed=True,
                                       relay_result=ts.RelayEnded(False, "reset")),
     ts.Done(OK_DONE), [ts.Release(False), ts.RelayAbort(),
                        ts.Reply("426 Connection closed; transfer aborted: reset.", False, 10)],
     State.CLOSED, False),
    ("lost after the relay ended", machine(State.RELAY_ENDED, relayed=True,
                                           relay_result=ts.RelayEnded(True)), ts.Lost("x"),
     [ts.Release(True), ts.Unwatch(), ts.RelayAbort(),
      ts.Reply("426 Connection closed; transfer aborted: x.")], State.CLOSED, False),
    ("client aborts after the relay ended", machine(State.RELAY_ENDED, relayed=True),
     ts.ClientAbort(), [ts.SendAbort(), ts.RelayAbort(), ts.Detach()], State.RELAY_ENDED, False),
    # RECORDING
    ("recorded", machine(State.RECORDING, "STOR", done=OK_DONE), ts.Recorded("ok"), [COMPLETE],
     State.CLOSED, False),
    ("record refused by the VFS", machine(State.RECORDING, "STOR", done=OK_DONE),
     ts.Recorded("refused", "name too long"),
     [ts.Reply("451 Requested action aborted: local error in processing: name too long.", False, 10)],
     State.CLOSED, False),
    ("metadata store failed", machine(State.RECORDING, "STOR", done=OK_DONE), ts.Recorded("retry"),
     [ts.Reply(METADATA_FAILED, False, 10), ts.WaitLate()], State.LATE, False),
    ("late outcome recorded", machine(State.RECORDING, "STOR", attached=False, done=OK_DONE),
     ts.Recorded("ok"), [ts.Unwatch()], State.CLOSED, False),
    ("late outcome still not recorded", machine(State.RECORDING, "STOR", attached=False,
                                                done=OK_DONE, waiting_late=True),
     ts.Recorded("retry"), [], State.LATE, False),
    ("relayed upload recorded, relay still running", machine(State.RECORDING, "STOR", relayed=True,
                                                             done=OK_DONE, relay_copying=True),
     ts.Recorded("ok"), [], State.FLUSHING, True),
    ("client leaves while its upload is recorded", machine(State.RECORDING, "STOR", done=OK_DONE),
     ts.ClientAbort(), [ts.Detach()], State.RECORDING, False),
    ("the slave vanishes after its outcome", machine(State.RECORDING, "STOR", done=OK_DONE),
     ts.Lost("x"), [], State.RECORDING, True),
    ("the relay ends while the upload is recorded", machine(State.RECORDING, "STOR", relayed=True,
                                                            done=OK_DONE, relay_copying=True),
     ts.RelayEnded(True), [], State.RECORDING, True),
    # FLUSHING
    ("relay hands the last byte", machine(State.FLUSHING, relayed=True, done=OK_DONE),
     ts.RelayEnded(True), [ts.RelayAbort(), COMPLETE], State.CLOSED, False),
    ("relay fails at the end", machine(State.FLUSHING, relayed=True, done=OK_DONE),
     ts.RelayEnded(False, "timed out"),
     [ts.RelayAbort(), ts.Reply("426 Connection closed; transfer aborted: timed out.", False, 10)],
     State.CLOSED, False),
    ("client aborts while flushing", machine(State.FLUSHING, relayed=True, done=OK_DONE),
     ts.ClientAbort(), [ts.SendAbort(), ts.RelayAbort(), ts.Detach()], State.CLOSED, False),
    ("slave lost after its outcome", machine(State.FLUSHING, relayed=True, done=OK_DONE),
     ts.Lost("x"), [], State.FLUSHING, True),
    # LATE
    ("late outcome arrives", machine(State.LATE, "STOR", attached=False), ts.Done(OK_DONE),
     [ts.Record(OK_DONE)], State.RECORDING, False),
    ("grace over", machine(State.LATE, "STOR", attached=False, waiting_late=True), ts.GraceOver(),
     [ts.Unwatch()], State.CLOSED, False),
    ("lost again while late", machine(State.LATE, "STOR", attached=False), ts.Lost("x"), [],
     State.LATE, False),
    ("abort while late", machine(State.LATE, "STOR", attached=False), ts.ClientAbort(), [],
     State.LATE, False),
    ("the stopped relay reports while late", machine(State.LATE, "STOR", relayed=True, attached=False),
     ts.RelayEnded(False, "aborted"), [], State.LATE, False),
    # CLOSED
    ("abort after the end", machine(State.CLOSED, attached=False), ts.ClientAbort(), [],
     State.CLOSED, False),
    ("lost after the end", machine(State.CLOSED, attached=False), ts.Lost("x"), [], State.CLOSED, False),
    ("an old timer after the end", machine(State.CLOSED, "STOR", attached=False, waiting_late=True),
     ts.GraceOver(), [], State.CLOSED, False),
    ("the stopped relay reports after the end", machine(State.CLOSED, relayed=True, attached=False),
     ts.RelayEnded(False, "aborted"), [], State.CLOSED, False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_transition(case: tuple[str, TransferMachine, ts.Event, list[ts.Action], State, bool]) -> None:
    _name, original, event, actions, state, attached = case
    mach = copy.deepcopy(original)  # the table's machines stay as written
    assert mach.handle(event) == actions
    assert (mach.state, mach.attached) == (state, attached)


def test_every_table_entry_is_exercised() -> None:
    covered = {(c[1].state, type(c[2])) for c in CASES}
    table = {(state, event) for state, steps in ts.TRANSITIONS.items() for event in steps}
    assert table - covered == set()


REFUSED = [(state, event) for state in State for event in EVENTS
           if type(event) not in ts.TRANSITIONS[state]]


@pytest.mark.parametrize(("state", "event"), REFUSED,
                         ids=[f"{s.value}-{type(e).__name__}" for s, e in REFUSED])
def test_refused_events_raise_and_change_nothing(state: State, event: ts.Event) -> None:
    mach = machine(state, "STOR", done=OK_DONE)
    before = (mach.state, mach.attached, mach.live, mach.done)
    with pytest.raises(ts.ProtocolError, match=f"{type(event).__name__} not allowed in state {state.value}"):
        mach.handle(event)
    assert (mach.state, mach.attached, mach.live, mach.done) == before


def run(mach: TransferMachine, events: list[ts.Event]) -> list[ts.Action]:
    out = mach.start()
    for event in events:
        out += mach.handle(event)
    return out


# Whole lives, from the dispatch to the end: what the shell is asked to do, in order.
SCENARIOS: dict[str, tuple[TransferMachine, list[ts.Event], list[ts.Action]]] = {
    "direct RETR": (TransferMachine("RETR", "/f", relayed=False),
                    [ts.Started(), ts.Done(OK_DONE)],
                    [ts.SendStart(), ANNOUNCE, ts.Release(False), COMPLETE]),
    "direct STOR": (TransferMachine("STOR", "/f", relayed=False),
                    [ts.Started(), ts.Done(OK_DONE), ts.Recorded("ok")],
                    [ts.SendStart(), ANNOUNCE, ts.Release(False), ts.Record(OK_DONE), COMPLETE]),
    "relayed RETR": (TransferMachine("RETR", "/f", relayed=True),
                     [ts.Listened(5000), ts.Started(), ts.Done(OK_DONE, relay_copying=True),
                      ts.RelayEnded(True)],
                     [ts.RelayConnect(5000), ts.SendStart(), ANNOUNCE, ts.RelayStart(),
                      ts.Release(False), ts.RelayAbort(), COMPLETE]),
    "STOR whose record fails, then succeeds on the re-sent outcome": (
        TransferMachine("STOR", "/f", relayed=False),
        [ts.Started(), ts.Done(OK_DONE), ts.Recorded("retry"), ts.Done(OK_DONE), ts.Recorded("ok")],
        [ts.SendStart(), ANNOUNCE, ts.Release(False), ts.Record(OK_DONE),
         ts.Reply(METADATA_FAILED, False, 10), ts.WaitLate(), ts.Record(OK_DONE), ts.Unwatch()]),
    "STOR whose broker vanishes, outcome re-sent later": (
        TransferMachine("STOR", "/f", relayed=False),
        [ts.Started(), ts.Lost("broker lost"), ts.Done(OK_DONE), ts.Recorded("ok"), ts.GraceOver()],
        [ts.SendStart(), ANNOUNCE, ts.Release(True),
         ts.Reply("426 Connection closed; transfer aborted: broker lost."), ts.WaitLate(),
         ts.Record(OK_DONE), ts.Unwatch()]),
    "ABOR during a direct RETR": (
        TransferMachine("RETR", "/f", relayed=False),
        [ts.Started(), ts.ClientAbort(), ts.Done(ABORTED_DONE)],
        [ts.SendStart(), ANNOUNCE, ts.SendAbort(), ts.Detach(), ts.Release(False)]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(name: str) -> None:
    mach, events, actions = SCENARIOS[name]
    assert run(mach, events) == actions
    assert mach.state in (State.CLOSED, State.LATE)


def test_release_and_final_reply_happen_once_per_life() -> None:
    """Whatever the order of events, a machine releases its slot at most once and sends at
    most one final reply."""
    import itertools
    lives = 0
    for order in itertools.permutations(EVENTS, 4):  # 7,920 orders x 4 kinds: bounded
        for kind, relayed in (("RETR", False), ("STOR", False), ("RETR", True), ("STOR", True)):
            mach = TransferMachine(kind, "/f", relayed=relayed)
            out = mach.start()
            for event in order:
                try:
                    out += mach.handle(event)
                except ts.ProtocolError:
                    continue
                if isinstance(event, ts.Done) and mach.state is State.RECORDING:
                    out += mach.handle(ts.Recorded("ok"))
            lives += 1
            assert sum(isinstance(a, ts.Release) for a in out) <= 1, (order, out)
            assert sum(isinstance(a, ts.Reply) for a in out) <= 1, (order, out)
            assert sum(isinstance(a, ts.WaitLate) for a in out) <= 1, (order, out)
    assert lives == 4 * 11 * 10 * 9 * 8


@pytest.mark.parametrize(("error", "errno_", "moved", "aborted", "reply"), [
    ("", 0, 5, True, "426 Transfer aborted; 5 bytes transmitted."),
    ("full", errno.ENOSPC, 5, False, "452 Insufficient storage space on the slave."),
    ("quota", errno.EDQUOT, 0, False, "452 Insufficient storage space on the slave."),
    ("refused", errno.ECONNREFUSED, 0, False, "425 Can't open data connection: refused."),
    ("reset", errno.ECONNRESET, 9, False, "426 Connection closed; transfer aborted: reset."),
    ("gone", errno.ENOENT, 0, False, "550 No such file or directory."),
    ("", errno.EIO, 0, False, "451 Requested action aborted: local error in processing."),
])
def test_failure_reply(error: str, errno_: int, moved: int, aborted: bool, reply: str) -> None:
    assert ts.failure_reply(error, errno_, moved, aborted) == reply


def test_done_reply_without_crc() -> None:
    assert ts.done_reply(m.TransferDone(xfer_id=1, ok=True, bytes=0, size=0)) == \
        "226 Transfer complete: 0 bytes."
