"""Logging set-up for a role process: one line per record on stderr, with the role name."""

from __future__ import annotations

import logging
import sys


def setup(role: str, level: str = "info") -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
    )
