"""MessageIDs for tests: a UUID v1 made at any moment, past or future."""
from __future__ import annotations

import uuid
from datetime import datetime


def uuid1_at(when: datetime) -> str:
    ticks = int(when.timestamp() * 1e7) + 0x01B21DD213814000
    fields = (ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, ((ticks >> 48) & 0x0FFF) | 0x1000, 0x80, 0x01, 0x123456789ABC)
    return str(uuid.UUID(fields=fields))
