"""What every session of the master shares: its config, the metadata, the slaves, the
broker link, the IOLoop and its Waker, the relay counters and the placement policy.

Built once by master.service; sessions reach it as `handler.cluster`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from common.config import MasterSection
from master.guard import FailedLogins
from master.link import BrokerLink
from master.loop import Waker
from master.placement import Placement
from master.recorder import UploadRecorder
from master.relay import RelayCounter
from master.slaves import SlaveRegistry, SlaveState
from master.vfs import VirtualFS


@dataclass
class Cluster:
    """What every session shares: config, metadata, slaves, the broker link, counters."""

    config: MasterSection
    vfs: VirtualFS
    registry: SlaveRegistry
    link: BrokerLink
    ioloop: Any
    waker: Waker
    relayed: RelayCounter = field(default_factory=RelayCounter)
    sessions: set[Any] = field(default_factory=set)
    clock: Callable[[], float] = time.monotonic
    data_timeout: int = 300
    placement: Placement = field(default_factory=Placement)
    recorder: UploadRecorder | None = None
    """Records upload outcomes in batches (one commit per turn of the loop); without one,
    each outcome is recorded on its own as it arrives."""
    logins: FailedLogins = field(init=False)
    """Failed logins per source address, across sessions (the login ban), from the config."""

    def __post_init__(self) -> None:
        self.logins = FailedLogins(self.config.failed_login_limit,
                                   self.config.failed_login_window, self.config.failed_login_ban)

    def online_slaves(self) -> list[str]:
        return sorted(n for n, i in self.registry.slaves.items() if i.state is SlaveState.ONLINE)
