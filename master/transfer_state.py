"""The life of one RETR/STOR/APPE/STOU on a slave, as a pure state machine.

Events in (what the slave, the relay, the client and the clock said), actions out (what the
shell in master.transfers must do): no sockets, no clock reads, no pyftpdlib. Every state
lists the events it accepts in TRANSITIONS; any other event is a ProtocolError, which the
shell logs and otherwise ignores. Every outcome leaves through one path, `_finish`, which
sends the final reply (once, while the client is attached) and says what to release.

    LISTENING --Listened--> STARTING --Started--> RUNNING --Done--> (RECORDING) --> CLOSED
    (relay only)                |                    |                    \\-> FLUSHING (relay)
                                 \\-- refused/lost ----+--> LATE (an upload: its outcome may
                                                                 still arrive and be recorded)
"""

from __future__ import annotations

import enum
import errno as errno_mod
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

from common import messages as m
from master import replies

UPLOADS = frozenset({"STOR", "APPE", "STOU"})
LATE_DONE_GRACE_S = 120.0
"""How long an upload whose slave became unreachable (or whose record failed) still waits
for its TransferDone (the slave re-sends it until acknowledged), so the bytes are recorded."""

_DATA_CONN_ERRNOS = frozenset({errno_mod.ECONNREFUSED, errno_mod.ETIMEDOUT, errno_mod.ECONNRESET,
                               errno_mod.EPIPE, errno_mod.EHOSTUNREACH, errno_mod.ENETUNREACH,
                               errno_mod.ECONNABORTED})


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Listened:
    """The slave opened the listener the master's relay connects to."""
    port: int


@dataclass(frozen=True)
class Started:
    """The slave has the file open and the data connection under way."""


@dataclass(frozen=True)
class Refused:
    """The slave answered Listen or a start with an error (OpResult)."""
    error: str
    errno: int


@dataclass(frozen=True)
class Unanswered:
    """Listen or a start got no answer: `reason` is "timeout" or why it was undeliverable."""
    reason: str


@dataclass(frozen=True)
class Unexpected:
    """Listen or a start got a reply of the wrong type."""
    name: str


@dataclass(frozen=True)
class Done:
    """The slave's TransferDone (possibly re-sent). `relay_copying`: the master's relay is
    still handing bytes to the client (else it never started, or is over)."""
    msg: m.TransferDone
    relay_copying: bool = False


@dataclass(frozen=True)
class Recorded:
    """What recording an upload's outcome gave: "ok"; "retry" (the metadata store failed:
    wait for the slave's re-sent TransferDone); "refused" (the name cannot be recorded:
    the file was deleted and the upload fails with `error`)."""
    result: Literal["ok", "retry", "refused"]
    error: str = ""


@dataclass(frozen=True)
class RelayEnded:
    """The master's relay stopped copying (ok: every byte went through)."""
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class Lost:
    """The slave (or the broker) is gone."""
    reason: str


@dataclass(frozen=True)
class ClientAbort:
    """ABOR, a new PORT/PASV, or the session closing: the session answers for itself."""


@dataclass(frozen=True)
class GraceOver:
    """The LATE_DONE_GRACE_S timer asked for by WaitLate expired."""


Event = Union[Listened, Started, Refused, Unanswered, Unexpected, Done, Recorded, RelayEnded,
              Lost, ClientAbort, GraceOver]


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class SendStart:
    """StartSend/StartReceive to the slave (the shell knows the route and the options)."""


@dataclass(frozen=True)
class SendAbort:
    """Tell the slave to let the transfer go."""


@dataclass(frozen=True)
class CancelStart:
    """Forget the start request: a lazy_started transfer that ended gets no Started."""


@dataclass(frozen=True)
class Announce:
    """The 150 preliminary reply; the session takes commands again."""
    text: str


@dataclass(frozen=True)
class Reply:
    """The final reply to the client (the session then detaches). `moved` is None when the
    transfer never ran (nothing to log as a transfer)."""
    text: str
    completed: bool = False
    moved: int | None = None


@dataclass(frozen=True)
class Detach:
    """The client left (ClientAbort): its session stops watching the transfer."""


@dataclass(frozen=True)
class Record:
    """Record the upload's outcome in the metadata; the shell answers with Recorded."""
    msg: m.TransferDone


@dataclass(frozen=True)
class Release:
    """The slave's transfer slot and the lent port go back (`soil`: the slave must clear
    the port first, since a connection may wait there)."""
    soil: bool


@dataclass(frozen=True)
class RelayConnect:
    """The relay may connect to the slave's listener on `port`."""
    port: int


@dataclass(frozen=True)
class RelayStart:
    """The slave started: the relay begins copying."""


@dataclass(frozen=True)
class RelayAbort:
    """Stop the relay (and free its max_relays slot)."""


@dataclass(frozen=True)
class WaitLate:
    """Keep watching the transfer for LATE_DONE_GRACE_S, then send GraceOver."""
    seconds: float = LATE_DONE_GRACE_S


@dataclass(frozen=True)
class Unwatch:
    """Stop watching the transfer's id on the broker link."""


Action = Union[SendStart, SendAbort, CancelStart, Announce, Reply, Detach, Record, Release,
               RelayConnect, RelayStart, RelayAbort, WaitLate, Unwatch]


# ---------------------------------------------------------------- replies for outcomes


def failure_reply(error: str, errno: int, bytes_moved: int, aborted: bool) -> str:
    """The final reply for a transfer that did not complete."""
    text = f": {error}" if error else ""
    if aborted:
        return f"426 Transfer aborted; {bytes_moved} bytes transmitted."
    if errno in (errno_mod.ENOSPC, errno_mod.EDQUOT):
        return "452 Insufficient storage space on the slave."
    if errno in _DATA_CONN_ERRNOS:
        if bytes_moved == 0:
            return f"425 Can't open data connection{text}."
        return f"426 Connection closed; transfer aborted{text}."
    if errno == errno_mod.ENOENT:
        return replies.NO_SUCH_FILE
    return f"451 Requested action aborted: local error in processing{text}."


def done_reply(msg: m.TransferDone) -> str:
    crc = f", CRC32 {msg.crc32:08X}" if msg.crc32 is not None else ""
    return f"226 Transfer complete: {msg.bytes} bytes{crc}."


def lost_reply(reason: str) -> str:
    return f"426 Connection closed; transfer aborted: {reason}."


def unavailable_reply(reason: str) -> str:
    return f"451 Requested action aborted: storage slave unavailable ({reason})."


# ---------------------------------------------------------------- the machine


class State(enum.Enum):
    LISTENING = "listening"
    """Relay only: Listen sent, waiting for the slave's listener."""
    STARTING = "starting"
    """StartSend/StartReceive sent, no Started yet (a direct transfer has its 150 already)."""
    RUNNING = "running"
    RELAY_ENDED = "relay-ended"
    """The relay stopped first; waiting for the slave's outcome."""
    RECORDING = "recording"
    """An upload's outcome is being recorded (the shell answers with Recorded, at once or
    once the batch it joined is committed)."""
    FLUSHING = "flushing"
    """Relay: the slave is done, the relay still hands the last bytes to the client."""
    LATE = "late"
    """The client has its reply; an upload's outcome may still arrive and be recorded."""
    CLOSED = "closed"


class ProtocolError(Exception):
    """An event the transition table does not allow in the current state."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{type(event).__name__} not allowed in state {state.value}")
        self.state, self.event = state, event


@dataclass
class TransferMachine:
    kind: str
    """RETR, STOR, APPE or STOU."""
    path: str
    relayed: bool
    attached: bool = True
    """The client still waits for this transfer's replies."""
    state: State = State.STARTING
    announced: bool = False
    done: m.TransferDone | None = None
    relay_result: RelayEnded | None = None
    live: bool = True
    """The slave's transfer slot (and lent port) is still held: released exactly once."""
    unrecorded: bool = False
    """The last outcome could not be recorded (the metadata store failed): not acknowledged,
    so the slave re-sends it."""
    waiting_late: bool = False
    """A WaitLate timer is running (one at a time)."""
    relay_copying: bool = False
    """With the slave's outcome: the relay was still copying, so its end is waited for."""
    _out: list[Action] = field(default_factory=list)

    @property
    def is_upload(self) -> bool:
        return self.kind in UPLOADS

    def start(self) -> list[Action]:
        """The command was dispatched: the first actions."""
        if self.relayed:
            self.state = State.LISTENING
            return []  # the shell has sent Listen with the dispatch
        self.state = State.STARTING
        # 150 at once, not on Started: waiting would add a master-slave round trip to every
        # transfer (an upload's client sends nothing before it). A slave that then refuses
        # gets its 4xx/5xx after the 150, as RFC 959 allows.
        return [SendStart(), *self._announce()]

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; the actions to carry out, in order. Raises ProtocolError."""
        step = TRANSITIONS[self.state].get(type(event))
        if step is None:
            raise ProtocolError(self.state, event)
        self._out = []
        step(self, event)
        return self._out

    # -- outputs
    def _emit(self, *actions: Action) -> None:
        self._out.extend(actions)

    def _announce(self) -> list[Action]:
        if self.announced or not self.attached:
            return []
        self.announced = True
        if self.kind == "STOU":
            return [Announce(f"150 FILE: {posixpath.basename(self.path)}")]
        return [Announce("150 File status okay. About to open data connection.")]

    def _release(self, soil: bool) -> None:
        if self.live:
            self.live = False
            self._emit(Release(soil))

    def _finish(self, text: str, *, moved: int | None = None, completed: bool = False,
                late: bool = False) -> None:
        """Every outcome ends here: the final reply (once, to an attached client), then
        LATE (an upload whose outcome may still come) or CLOSED."""
        if self.relayed:
            self._emit(RelayAbort())
        if self.attached:
            self.attached = False
            self._emit(Reply(text, completed, moved))
        if late:
            self.state = State.LATE
            if not self.waiting_late:
                self.waiting_late = True
                self._emit(WaitLate())
        else:
            self.state = State.CLOSED

    # -- steps, one per (state, event) entry of TRANSITIONS
    def _on_listened(self, event: Listened) -> None:
        if not self.attached:  # aborted while the listener was being opened
            self._emit(SendAbort(), Unwatch())
            self._release(soil=False)
            self.state = State.CLOSED
            return
        self._emit(RelayConnect(event.port), SendStart())
        self.state = State.STARTING

    def _on_started(self, event: Started) -> None:
        self.state = State.RUNNING
        self._emit(*self._announce())
        if self.relayed and self.attached:
            self._emit(RelayStart())

    def _on_refused(self, event: Refused | Unexpected) -> None:
        if isinstance(event, Refused):
            text = failure_reply(event.error, event.errno, 0, aborted=False)
        else:
            text = f"451 Requested action aborted: unexpected {event.name} from slave."
        self._emit(Unwatch())
        self._release(soil=True)  # a refusal may leave the port busy (EBUSY)
        self._finish(text)

    def _on_unanswered(self, event: Unanswered) -> None:
        if event.reason == "timeout":
            self._emit(SendAbort())  # the slave may still act on the command: make it let go
        if self.announced:
            # The 150 is out and the slave may be running it (a lazy Started was still held
            # back): end it as a lost transfer, which still records an upload's late outcome.
            self._on_lost(Lost(f"storage slave unavailable ({event.reason})"))
            return
        self._emit(Unwatch())
        self._release(soil=True)
        self._finish(unavailable_reply(event.reason))

    def _on_done(self, event: Done) -> None:
        if self.state is State.STARTING:
            self._emit(CancelStart())
        self.done = event.msg
        self.relay_copying = event.relay_copying
        self._release(soil=False)  # the slave empties the port's queue before TransferDone
        if self.is_upload:
            self.state = State.RECORDING
            self._emit(Record(event.msg))
            return
        self._outcome()

    def _on_late_done(self, event: Done) -> None:
        """A re-sent (or late) TransferDone of an upload whose client has its reply."""
        self.done = event.msg
        self.state = State.RECORDING
        self._emit(Record(event.msg))

    def _on_recorded(self, event: Recorded) -> None:
        msg = self.done
        assert msg is not None  # RECORDING is entered only with the outcome
        self.unrecorded = event.result == "retry"
        if event.result == "retry":
            self._finish(replies.METADATA_FAILED, moved=msg.bytes, late=True)
            return
        if event.result == "refused" and msg.ok:
            self.done = m.TransferDone(xfer_id=msg.xfer_id, ok=False, bytes=msg.bytes,
                                       size=msg.size, error=event.error, errno=0)
        if not self.attached:
            self._emit(Unwatch())
            self.state = State.CLOSED
            return
        self._outcome()

    def _outcome(self) -> None:
        """The slave's outcome is known (and recorded): reply now, or once the relay ends."""
        msg = self.done
        assert msg is not None
        if self.relayed and self.relay_copying and self.relay_result is None and self.attached:
            self.state = State.FLUSHING  # the client has not seen every byte yet
            return
        relay = self.relay_result or RelayEnded(ok=True)
        if msg.ok and relay.ok:
            self._finish(done_reply(msg), moved=msg.bytes, completed=True)
        elif msg.ok:
            self._finish(f"426 Connection closed; transfer aborted: {relay.error}.", moved=msg.bytes)
        else:
            self._finish(failure_reply(msg.error, msg.errno, msg.bytes, msg.aborted), moved=msg.bytes)

    def _on_relay_ended(self, event: RelayEnded) -> None:
        self.relay_result = event
        if self.state is State.FLUSHING:
            self._outcome()
            return
        if self.state is State.RECORDING:
            return  # the outcome follows the record, with this result
        if not event.ok:
            self._emit(SendAbort())  # the client side failed first; the slave's outcome follows
        self.state = State.RELAY_ENDED

    def _on_lost(self, event: Lost) -> None:
        self._release(soil=True)
        if not self.is_upload:
            self._emit(Unwatch())
        # An upload keeps listening a while: a TransferDone re-sent after a broker restart
        # is recorded.
        self._finish(lost_reply(event.reason), late=self.is_upload)

    def _on_client_abort(self, event: ClientAbort) -> None:
        if self.state not in (State.LATE, State.CLOSED):
            self._emit(SendAbort())
            if self.relayed:
                self._emit(RelayAbort())
        if self.attached:
            self.attached = False
            self._emit(Detach())
        if self.state is State.FLUSHING:  # nobody left to hand the last bytes to
            self.state = State.CLOSED

    def _on_abort_while_recording(self, event: ClientAbort) -> None:
        """The slave is done and its outcome is being recorded: only the client goes."""
        if self.attached:
            self.attached = False
            self._emit(Detach())

    def _on_grace_over(self, event: GraceOver) -> None:
        self.waiting_late = False
        if self.state is State.LATE:
            self._emit(Unwatch())
            self.state = State.CLOSED

    def _ignore(self, event: Event) -> None:
        """Allowed and meaningless here (the slave vanished after its outcome was known)."""


_Step = Callable[[TransferMachine, Any], None]
"""A step takes the event type its table entry is keyed by (checked by handle())."""
_START_FAILURES: dict[type, _Step] = {
    Refused: TransferMachine._on_refused,
    Unexpected: TransferMachine._on_refused,
    Unanswered: TransferMachine._on_unanswered,
}
_ALIVE: dict[type, _Step] = {
    Lost: TransferMachine._on_lost,
    ClientAbort: TransferMachine._on_client_abort,
}
TRANSITIONS: dict[State, dict[type, _Step]] = {
    State.LISTENING: {
        Listened: TransferMachine._on_listened,
        **_START_FAILURES, **_ALIVE,
    },
    State.STARTING: {
        Started: TransferMachine._on_started,
        Done: TransferMachine._on_done,
        **_START_FAILURES, **_ALIVE,
    },
    State.RUNNING: {
        Done: TransferMachine._on_done,
        RelayEnded: TransferMachine._on_relay_ended,
        **_ALIVE,
    },
    State.RELAY_ENDED: {
        Done: TransferMachine._on_done,
        **_ALIVE,
    },
    State.RECORDING: {
        Recorded: TransferMachine._on_recorded,
        RelayEnded: TransferMachine._on_relay_ended,
        ClientAbort: TransferMachine._on_abort_while_recording,
        Lost: TransferMachine._ignore,
    },
    State.FLUSHING: {
        RelayEnded: TransferMachine._on_relay_ended,
        ClientAbort: TransferMachine._on_client_abort,
        Lost: TransferMachine._ignore,
    },
    State.LATE: {
        Done: TransferMachine._on_late_done,
        GraceOver: TransferMachine._on_grace_over,
        Lost: TransferMachine._ignore,
        ClientAbort: TransferMachine._on_client_abort,
        RelayEnded: TransferMachine._ignore,  # the relay stopped by the finish reports it
    },
    State.CLOSED: {
        ClientAbort: TransferMachine._on_client_abort,
        Lost: TransferMachine._ignore,
        GraceOver: TransferMachine._on_grace_over,
        RelayEnded: TransferMachine._ignore,  # the relay stopped by the finish reports it
    },
}
"""state -> event type -> step. What is missing is a ProtocolError."""
