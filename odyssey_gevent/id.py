"""Client and server identifiers: `c` or `s` followed by 12 hex digits (mirrors Odyssey sources/id.c)."""
from __future__ import annotations

import os


def new_id(prefix: str) -> str:
    return prefix + os.urandom(6).hex()
