"""The journal's records and changes: statuses, stages, messages, events, and what accepting writes."""
from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, overload

from sqlalchemy.engine import Connection


class Status(str, enum.Enum):
    ACCEPTED = "ACCEPTED"
    PUBLISHED = "PUBLISHED"
    ROUTED = "ROUTED"
    RETRYING = "RETRYING"
    #: Parked in the recipient's inbox (delivery mode pull) until it takes the message and acks it.
    AWAITING_PICKUP = "AWAITING_PICKUP"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    DEAD = "DEAD"
    REJECTED = "REJECTED"


class Stage(enum.IntFlag):
    """Stages whose event is written once per round, by whichever process sees the stage first.

    The relay's confirm and the router's pick-up race, and a process can die between
    doing a stage and writing it down; a stage is in the trail once, never missing.
    """

    PUBLISHED = 1
    ROUTED = 2


#: Statuses from which a message still has somewhere to go.
IN_FLIGHT = (Status.ACCEPTED, Status.PUBLISHED, Status.ROUTED, Status.RETRYING, Status.AWAITING_PICKUP)

#: Writes that belong to accepting a message (a service record, a registry deadline …): run inside
#: the accept transaction with its connection and time, so a crash cannot keep one without the other.
SideWrite = Callable[[Connection, datetime], None]


@dataclass(frozen=True)
class EventRecord:
    at: datetime
    status: str
    kind: str
    actor: str
    detail: dict[str, Any]
    hash: str
    prev_hash: str


@dataclass(frozen=True)
class MessageRecord:
    message_id: str
    sender: str
    recipient: str
    message_type: str
    route: str | None
    status: str
    fingerprint: str
    source: str
    envelope: bytes
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    channel: str | None
    attempts: int
    replays: int
    last_error: str | None
    generation: int = 0
    stages: int = 0
    reference_id: str | None = None  # the envelope's ReferenceMessageID (migration 0010)
    envelope_pruned_at: datetime | None = None  # retention removed the envelope (migration 0011)


class Change(NamedTuple):
    """One journal change: an event, and optionally a status move guarded by ``only_from``.

    ``even_if_late``: when ``only_from`` does not hold because the message has already
    moved on (the delivery worker's DELIVERED landed before the router's ROUTED), the
    event is still appended — with the status the message has, which it does not move
    back — so the trail shows every stage the message went through.
    """

    message_id: str
    kind: str
    actor: str
    detail: dict[str, Any]
    status: Status | None = None
    only_from: tuple[Status, ...] | None = None
    columns: dict[str, Any] = {}
    even_if_late: bool = False
    #: A stage written once per round: skipped when its event is already in the trail.
    stage: Stage | None = None

    @classmethod
    def of(cls, message_id: str, kind: str, actor: str, detail: dict[str, Any] | None = None, *,
           status: Status | None = None, only_from: Iterable[Status] | None = None, **columns: Any) -> Change:
        """A change from ``record``'s arguments, for every recorder that takes them."""
        return cls(message_id, kind, actor, detail or {}, status, None if only_from is None else tuple(only_from),
                   columns)


@dataclass(frozen=True)
class AcceptOutcome:
    message_id: str
    status: str
    duplicate: bool


#: The detail key of the event that (re)wrote a message's envelope: the SHA-256 of the envelope as stored,
#: which puts the envelope under the evidence chain with the event (docs/journal-evidence.md).
ENVELOPE_DIGEST = "envelope_sha256"


def envelope_digest(envelope: bytes) -> str:
    return hashlib.sha256(envelope).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC. A column that may be NULL stays None."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def message_record(row: Any) -> MessageRecord:
    data = row._asdict()
    for key in ("created_at", "updated_at", "delivered_at", "envelope_pruned_at"):
        data[key] = as_utc(data[key])
    return MessageRecord(**data)
