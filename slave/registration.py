"""The slave's standing with the broker, as a pure class given the time.

Welcomed or not; when to say Hello (at once on a (re)connect or a Disconnect, then every
HELLO_RETRY_S until welcomed, or HELLO_RETRY_UNSENT_S while no connection takes it); when to
send a Heartbeat (after heartbeat_s of our own silence); when the broker counts as gone
(liveness x heartbeat_s without a word from it); when to connect again after the broker
refused our handshake (a CURVE key it does not list: libzmq never retries such a
connection by itself). The service carries out what `tick` says.
"""

from __future__ import annotations

import enum

HELLO_RETRY_S = 2.0
"""Hello again after this long without a Welcome (the broker may have missed it)."""
HELLO_RETRY_UNSENT_S = 0.25
"""No connection took the Hello (zmq.Again): try again soon."""
REFUSED_RETRY_S = 5.0
"""After a refused handshake, connect again this long later (the key may be listed by then)."""


class Due(enum.Enum):
    BROKER_SILENT = "broker-silent"
    """The broker said nothing for liveness heartbeats: no longer welcomed (log it)."""
    HELLO = "hello"
    """Say Hello now; report with hello_sent()."""
    HEARTBEAT = "heartbeat"
    RECONNECT = "reconnect"
    """The broker refused our handshake a while ago: drop that endpoint and connect again."""


class Registration:
    def __init__(self, now: float) -> None:
        self.welcomed = False
        self.heartbeat_s = 1.0
        self.liveness = 5
        self.last_recv = now
        self.last_send = now
        self.hello_due = now
        self.hello_queued = False
        """The last Hello went into a connection's queue (else it must go again at once when
        a connection comes up)."""
        self.lost_connection = False
        self.reconnect_due: float | None = None

    # -- what happened
    def received(self, now: float) -> None:
        """A valid frame from the broker."""
        self.last_recv = now

    def sent(self, now: float) -> None:
        self.last_send = now

    def welcome(self, heartbeat_ms: int, liveness: int) -> bool:
        """The broker's Welcome; True the first time (newly registered)."""
        first = not self.welcomed
        self.welcomed = True
        self.heartbeat_s = max(heartbeat_ms, 50) / 1000
        self.liveness = max(liveness, 1)
        return first

    def start_over(self, now: float) -> None:
        """A Disconnect, or a (re)connect: not welcomed, Hello at once."""
        self.welcomed = False
        self.hello_due = now

    def connection_event(self, disconnected: bool) -> bool:
        """A monitor event of the DEALER; True when a connection came up that needs a Hello
        (after a disconnect, or a first connect our earlier Hello could not use)."""
        if disconnected:
            self.lost_connection = True
            return False
        if self.lost_connection or not self.hello_queued:
            self.lost_connection = False
            return True
        return False

    def handshake_failed(self, now: float) -> bool:
        """The broker refused our handshake; True unless a reconnect is already pending."""
        if self.reconnect_due is not None:
            return False
        self.reconnect_due = now + REFUSED_RETRY_S
        return True

    def hello_sent(self, now: float, queued: bool) -> None:
        self.hello_queued = queued
        self.hello_due = now + (HELLO_RETRY_S if queued else HELLO_RETRY_UNSENT_S)

    # -- what to do
    def silence(self, now: float) -> float:
        return now - self.last_recv

    def tick(self, now: float) -> list[Due]:
        """What is due at `now`, in order."""
        due: list[Due] = []
        if self.reconnect_due is not None and now >= self.reconnect_due:
            self.reconnect_due = None
            due.append(Due.RECONNECT)
        if self.welcomed and now - self.last_recv > self.heartbeat_s * self.liveness:
            self.start_over(now)
            due.append(Due.BROKER_SILENT)
        if not self.welcomed and now >= self.hello_due:
            due.append(Due.HELLO)
        if self.welcomed and now - self.last_send >= self.heartbeat_s:
            due.append(Due.HEARTBEAT)
        return due

    def deadlines(self) -> list[float]:
        """When tick() may next have something to say."""
        later = [self.reconnect_due] if self.reconnect_due is not None else []
        if self.welcomed:
            return [self.last_send + self.heartbeat_s, self.last_recv + self.heartbeat_s * self.liveness,
                    *later]
        return [self.hello_due, *later]
