"""The exact bytes the evidence chain hashes: an event, a batch record and a checkpoint's statement.

Every field is written as a 4-byte big-endian length and its UTF-8 bytes, after a tag
naming the record and its version, so no two different records have the same bytes
(a separator could occur inside a detail) and a verifier in another language needs
only this page (docs/journal-evidence.md gives the same definition). Times are UTC,
ISO 8601 with microseconds, as the per-message chain already writes them.

An event's leaf covers its id (so reordering or renumbering shows), its message,
time, status, kind, actor and detail exactly as stored, and its per-message
``prev_hash`` and ``hash``. The envelope is covered through the event that wrote it,
whose detail holds the envelope's SHA-256 (``envelope_sha256``).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from gateway.evidence import merkle
from gateway.journal.chain import GENESIS
from gateway.journal.model import ENVELOPE_DIGEST, as_utc

_LENGTH = struct.Struct(">I").pack
EVENT_TAG = "zdravlink-event/1"
BATCH_TAG = "zdravlink-batch/1"
CHECKPOINT_TAG = "zdravlink-checkpoint/1"
__all__ = ["GENESIS", "BatchRecord", "EventRecord", "Statement", "imprint_of", "stamp"]


def stamp(at: datetime) -> str:
    return as_utc(at).isoformat(timespec="microseconds")


def _framed(*fields: str) -> bytes:
    parts = []
    for field in fields:
        data = field.encode("utf-8")
        parts.append(_LENGTH(len(data)))
        parts.append(data)
    return b"".join(parts)


@dataclass(frozen=True)
class EventRecord:
    """One event as the chain sees it; ``at`` is already the canonical text (``stamp``)."""

    id: int
    message_id: str
    at: str
    status: str
    kind: str
    actor: str
    detail: str
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, row: Any) -> EventRecord:
        """From an events row (SQLAlchemy)."""
        return cls(int(row.id), row.message_id, stamp(row.at), row.status, row.kind, row.actor, row.detail,
                   row.prev_hash, row.hash)

    def canonical(self) -> bytes:
        return _framed(EVENT_TAG, str(self.id), self.message_id, self.at, self.status, self.kind, self.actor,
                       self.detail, self.prev_hash, self.hash)

    def leaf(self) -> bytes:
        return merkle.leaf_hash(self.canonical())

    def hash_holds(self) -> bool:
        """Its per-message hash is the one its own fields and ``prev_hash`` give (the trail's own check).

        ``chain.event_hash`` over the same fields; ``at`` is already the text it hashes (``stamp``).
        """
        raw = "\x1f".join((self.prev_hash, self.message_id, self.at, self.status, self.kind, self.actor,
                           self.detail))
        return self.hash == hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def envelope_digest(self) -> str | None:
        """The SHA-256 of the envelope this event wrote (ACCEPTED, REJECTED), if it wrote one."""
        if ENVELOPE_DIGEST not in self.detail:
            return None
        try:
            value = json.loads(self.detail).get(ENVELOPE_DIGEST)
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BatchRecord:
    """A sealed batch: every event with id in (``first_event_id`` - 1, ``last_event_id``], and its link."""

    seq: int
    first_event_id: int
    last_event_id: int
    event_count: int
    root: str
    prev_hash: str
    sealed_at: str
    hash: str

    @classmethod
    def make(cls, seq: int, first_event_id: int, last_event_id: int, leaves: list[bytes], prev_hash: str,
             sealed_at: datetime) -> BatchRecord:
        root = merkle.root(leaves).hex()
        at = stamp(sealed_at)
        return cls(seq, first_event_id, last_event_id, len(leaves), root, prev_hash, at,
                   batch_hash(seq, first_event_id, last_event_id, len(leaves), root, prev_hash, at))

    @classmethod
    def of(cls, row: Any) -> BatchRecord:
        return cls(int(row.seq), int(row.first_event_id), int(row.last_event_id), int(row.event_count), row.root,
                   row.prev_hash, stamp(row.sealed_at), row.hash)

    def hash_holds(self) -> bool:
        return self.hash == batch_hash(self.seq, self.first_event_id, self.last_event_id, self.event_count,
                                       self.root, self.prev_hash, self.sealed_at)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def batch_hash(seq: int, first: int, last: int, count: int, root: str, prev_hash: str, sealed_at: str) -> str:
    return hashlib.sha256(_framed(BATCH_TAG, str(seq), str(first), str(last), str(count), root, prev_hash,
                                  sealed_at)).hexdigest()


@dataclass(frozen=True)
class Statement:
    """What a checkpoint signs: this batch, with this hash, was the head of the chain at this time.

    Plain text, one ``key: value`` a line, so an auditor reads it as it is signed.
    """

    batch: int
    batch_hash: str
    made_at: str

    def text(self) -> str:
        return f"{CHECKPOINT_TAG}\nbatch: {self.batch}\nbatch-hash: {self.batch_hash}\nmade-at: {self.made_at}\n"

    @classmethod
    def parse(cls, text: str) -> Statement:
        lines = text.split("\n")
        if len(lines) != 5 or lines[0] != CHECKPOINT_TAG or lines[4] != "":
            raise ValueError("not a checkpoint statement")
        fields = dict(line.split(": ", 1) for line in lines[1:4])
        statement = cls(int(fields["batch"]), fields["batch-hash"], fields["made-at"])
        if statement.text() != text:
            raise ValueError("a checkpoint statement not in its canonical form")
        return statement


def imprint_of(statement: str, signature: bytes | None) -> bytes:
    """What the TSA timestamps: the signature (so the signature is proved to exist then), or the statement."""
    return signature if signature is not None else statement.encode("utf-8")
