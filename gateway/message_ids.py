"""SMEV 3's MessageID rules, the same for every way a partner can send one.

A MessageID is a time-based UUID (version 1) in lower case; its time says when the
sender made it, and SMEV refuses one made more than 48 hours ago or dated in the
future beyond clock skew. The gateway applies this to what partners send it over SOAP
and REST alike (``smev.message_id_max_age_hours``, ``smev.clock_skew_seconds``).
"""
from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from gateway import errors
from gateway.errors import Rejection

_UUID_V1 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-1[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
#: 100-ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
_UUID_EPOCH_OFFSET = 0x01B21DD213814000


def message_id_time(message_id: str) -> datetime:
    """The creation time a UUID v1 carries."""
    ticks = uuid.UUID(message_id).time
    return datetime.fromtimestamp((ticks - _UUID_EPOCH_OFFSET) / 1e7, tz=UTC)


def check_message_id(text: str, now: datetime, max_age_hours: float, clock_skew_seconds: float) -> None:
    """Refuse a MessageID that is not a lower-case UUID v1, is stale, or comes from the future."""
    if not _UUID_V1.fullmatch(text):
        raise Rejection(errors.INVALID_MESSAGE_ID_FORMAT,
                        f"{text!r} is not a lower-case time-based UUID (RFC 4122 version 1)", "MessageID")
    born = message_id_time(text)
    if born < now - timedelta(hours=max_age_hours):
        raise Rejection(errors.STALE_MESSAGE_ID,
                        f"{text} was generated at {born.isoformat()}, more than {max_age_hours:g} h ago: "
                        "generate a new MessageID", "MessageID")
    if born > now + timedelta(seconds=clock_skew_seconds):
        raise Rejection(errors.STALE_MESSAGE_ID,
                        f"{text} carries the time {born.isoformat()}, in the future: check the sender's clock",
                        "MessageID")
