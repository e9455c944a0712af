"""When to log a warning about a condition that lasts (a broker out of reach, no users).

Pure: the caller says at each check whether the condition holds and passes the time. The
first warning comes once the condition has lasted `after` seconds, then one every `every`
seconds while it lasts, so a log shows it is still true without being flooded.
"""

from __future__ import annotations


class RepeatingWarning:
    def __init__(self, after: float, every: float) -> None:
        if after < 0 or every <= 0:
            raise ValueError("after must be >= 0 and every > 0")
        self.after = after
        self.every = every
        self._since: float | None = None
        """When the condition began; None while it does not hold."""
        self._next = 0.0
        self._warned = False

    def holds(self, now: float) -> float | None:
        """The condition holds at `now`: how long it has lasted if a warning is due, else None."""
        if self._since is None:
            self._since = now
            self._next = now + self.after
        if now < self._next:
            return None
        self._next = now + self.every
        self._warned = True
        return now - self._since

    def cleared(self, now: float) -> float | None:
        """The condition no longer holds: how long it lasted if it was warned about, else None."""
        since, warned = self._since, self._warned
        self._since, self._warned = None, False
        return now - since if since is not None and warned else None


BROKER_UNREACHABLE_AFTER_S = 10.0
BROKER_UNREACHABLE_EVERY_S = 60.0


def broker_unreachable() -> RepeatingWarning:
    """A role that cannot reach its broker says so after 10 s, then once a minute."""
    return RepeatingWarning(after=BROKER_UNREACHABLE_AFTER_S, every=BROKER_UNREACHABLE_EVERY_S)
