"""Per-node 100 Mbit/s links on one machine: an htb qdisc on the loopback device with one
class per source address 127.0.1.N (what node N sends), an unlimited default class for
everything else. Installed and removed by the benchmark itself; needs root and `tc`.

    tc qdisc add dev lo root handle 1: htb default 99
    tc class add dev lo parent 1: classid 1:99 htb rate 100gbit
    tc class add dev lo parent 1: classid 1:N htb rate 100mbit ceil 100mbit
    tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip src 127.0.1.N/32 flowid 1:N
    ...
    tc qdisc del dev lo root
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import Iterator

DEV = "lo"


def commands(addresses: list[str], rate_mbit: int) -> list[list[str]]:
    """The tc command lines that install the limits (pure, for the docs and tests)."""
    out = [["tc", "qdisc", "add", "dev", DEV, "root", "handle", "1:", "htb", "default", "99"],
           ["tc", "class", "add", "dev", DEV, "parent", "1:", "classid", "1:99", "htb",
            "rate", "100gbit"]]
    for n, addr in enumerate(addresses, 1):
        out.append(["tc", "class", "add", "dev", DEV, "parent", "1:", "classid", f"1:{n}", "htb",
                    "rate", f"{rate_mbit}mbit", "ceil", f"{rate_mbit}mbit"])
        out.append(["tc", "filter", "add", "dev", DEV, "parent", "1:", "protocol", "ip", "prio", "1",
                    "u32", "match", "ip", "src", f"{addr}/32", "flowid", f"1:{n}"])
    return out


REMOVE = ["tc", "qdisc", "del", "dev", DEV, "root"]


def refusal() -> str | None:
    """Why the tc part cannot run here, or None."""
    if shutil.which("tc") is None:
        return "tc (iproute2) is not installed"
    if os.geteuid() != 0:
        return "installing a qdisc on lo needs root"
    shown = subprocess.run(["tc", "qdisc", "show", "dev", DEV], capture_output=True, text=True)
    if shown.returncode != 0:
        return f"tc cannot read the qdisc of {DEV}: {shown.stderr.strip()}"
    if "htb" in shown.stdout or "root" in shown.stdout and "noqueue" not in shown.stdout:
        return f"{DEV} already has a root qdisc that this benchmark did not install: {shown.stdout.strip()}"
    return None


@contextlib.contextmanager
def limited(addresses: list[str], rate_mbit: int = 100) -> Iterator[list[list[str]]]:
    """Install the limits for the duration of the block; always removed afterwards."""
    why = refusal()
    if why:
        raise PermissionError(why)
    cmds = commands(addresses, rate_mbit)
    subprocess.run(cmds[0], check=True, capture_output=True, text=True)  # the root qdisc
    try:
        for cmd in cmds[1:]:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        yield cmds
    finally:
        subprocess.run(REMOVE, capture_output=True)  # only ever reached once ours is installed
