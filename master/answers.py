"""What a request to a slave gets back through the broker link: one of the slave's replies
(common.messages.SlaveReply), or RequestFailed when none came."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from common import messages as m


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A request got no answer: timeout, undeliverable, slave down or broker lost."""

    reason: str


SlaveAnswer = Union[m.SlaveReply, RequestFailed]
AnswerCallback = Callable[[SlaveAnswer], None]


def why(reply: SlaveAnswer) -> str:
    """The reason a request did not succeed, for a log line or a reply text."""
    match reply:
        case RequestFailed(reason=reason):
            return reason
        case m.OpResult(error=error):
            return error or "refused"
        case _:
            return f"unexpected {type(reply).__name__}"
