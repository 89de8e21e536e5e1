"""Registry requests awaiting their answer: the correlation store of the request-reply exchange.

A verification request is delivered by calling the registry, but the MIS waits for an
answer message, and it must get exactly one of: the registry's answer, or a TIMEOUT
when the deadline passes first (followed, if the registry answers later, by that late
answer). Each outcome is decided by one guarded UPDATE, so two delivery workers, a
redelivered copy and the deadline watcher can race without sending both an answer and
a TIMEOUT for the same moment, and a crash between deciding and sending is finished by
whoever comes next with the id already chosen.

The answer cache lives here too: it is keyed by the request's content, and an entry is
the answer XML the registry gave, kept until its time-to-live runs out.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from gateway.journal import Journal, SideWrite, Status, utcnow
from gateway.journal.model import as_utc
from gateway.journal.tables import messages, registry_cache, registry_requests


@dataclass(frozen=True)
class PendingRequest:
    message_id: str
    requester: str
    registry: str
    message_type: str
    accepted_at: datetime
    deadline_at: datetime
    answer_id: str | None
    timeout_id: str | None


@dataclass(frozen=True)
class CachedAnswer:
    answer: bytes
    answer_id: str
    stored_at: datetime


def _dead_without_answer() -> ColumnElement[bool]:
    """A dead-lettered request whose answer was never journalled: it is owed a TIMEOUT.

    An answer's id is reserved before the answer is accepted (``reserve_answer``), so that a
    worker killed in between is followed under the same id. But an answer refused at its accept
    (its schema, no answer route) or a worker killed there, followed by a registry that failed
    until the request went DEAD, left a reserved id and nothing behind it, and no TIMEOUT either:
    the MIS heard nothing. A request still in flight keeps its reservation; a replay of a dead one
    finds the TIMEOUT claimed and answers late, as any late answer.
    """
    dead = select(messages.c.message_id).where(and_(messages.c.message_id == registry_requests.c.message_id,
                                                    messages.c.status == Status.DEAD.value)).exists()
    journalled = select(messages.c.message_id).where(messages.c.message_id == registry_requests.c.answer_id).exists()
    return and_(dead, or_(registry_requests.c.answer_id.is_(None), ~journalled))


class RegistryRequests:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    @staticmethod
    def open_write(message_id: str, requester: str, registry: str, message_type: str,
                   deadline_seconds: float) -> SideWrite:
        """Start the clock on a request, in the transaction that accepts it (the deadline counts from then)."""

        def write(conn: Connection, accepted_at: datetime) -> None:
            conn.execute(insert(registry_requests).values(
                message_id=message_id, requester=requester, registry=registry, message_type=message_type,
                accepted_at=accepted_at, deadline_at=accepted_at + timedelta(seconds=deadline_seconds)))

        return write

    def open(self, message_id: str, requester: str, registry: str, message_type: str, accepted_at: datetime,
             deadline_seconds: float) -> None:
        """Start the clock on a request accepted without one (before deadlines were tracked); again: nothing."""
        try:
            with self.journal.engine.begin() as conn:
                self.open_write(message_id, requester, registry, message_type, deadline_seconds)(conn, accepted_at)
        except IntegrityError:
            pass

    def get(self, message_id: str) -> PendingRequest | None:
        with self.journal.engine.connect() as conn:
            row = conn.execute(select(registry_requests).where(registry_requests.c.message_id == message_id)).first()
        return _pending(row) if row is not None else None

    def reserve_answer(self, message_id: str, new_id: str) -> tuple[str, bool]:
        """The answer's MessageID (``new_id`` unless one was chosen before) and whether it is late."""
        with self.journal.engine.begin() as conn:
            conn.execute(update(registry_requests)
                         .where(and_(registry_requests.c.message_id == message_id,
                                     registry_requests.c.answer_id.is_(None)))
                         .values(answer_id=new_id))
            row = conn.execute(select(registry_requests.c.answer_id, registry_requests.c.timeout_id)
                               .where(registry_requests.c.message_id == message_id)).one()
        return row.answer_id, row.timeout_id is not None

    @staticmethod
    def answered_write(message_id: str) -> SideWrite:
        """Mark the request answered, in the transaction that accepts its answer."""

        def write(conn: Connection, at: datetime) -> None:
            conn.execute(update(registry_requests).where(registry_requests.c.message_id == message_id)
                         .values(answered_at=at))

        return write

    def due(self, now: datetime, limit: int = 500) -> list[PendingRequest]:
        """Requests owed a TIMEOUT: unanswered past the deadline or dead-lettered, or claimed and not yet sent."""
        unanswered = and_(registry_requests.c.timeout_id.is_(None),
                          or_(and_(registry_requests.c.answer_id.is_(None), registry_requests.c.deadline_at <= now),
                              _dead_without_answer()))
        unfinished = and_(registry_requests.c.timeout_id.is_not(None), registry_requests.c.timed_out_at.is_(None))
        with self.journal.engine.connect() as conn:
            rows = conn.execute(select(registry_requests).where(or_(unanswered, unfinished))
                                .order_by(registry_requests.c.deadline_at).limit(limit)).all()
        return [_pending(r) for r in rows]

    def claim_timeout(self, message_id: str, new_id: str) -> str | None:
        """The TIMEOUT answer's MessageID, or None when an answer got there first."""
        with self.journal.engine.begin() as conn:
            conn.execute(update(registry_requests)
                         .where(and_(registry_requests.c.message_id == message_id,
                                     registry_requests.c.timeout_id.is_(None),
                                     or_(registry_requests.c.answer_id.is_(None), _dead_without_answer())))
                         .values(timeout_id=new_id))
            row = conn.execute(select(registry_requests.c.timeout_id, registry_requests.c.timed_out_at)
                               .where(registry_requests.c.message_id == message_id)).one()
        return row.timeout_id if row.timed_out_at is None else None

    def timed_out(self, message_id: str) -> None:
        with self.journal.engine.begin() as conn:
            conn.execute(update(registry_requests).where(registry_requests.c.message_id == message_id)
                         .values(timed_out_at=utcnow()))

    # ---- the answer cache ------------------------------------------------

    def cached(self, key: str, now: datetime | None = None) -> CachedAnswer | None:
        with self.journal.engine.connect() as conn:
            row = conn.execute(select(registry_cache).where(and_(registry_cache.c.cache_key == key,
                                                                 registry_cache.c.expires_at > (now or utcnow())))
                               ).first()
        return CachedAnswer(bytes(row.answer), row.answer_id, as_utc(row.stored_at)) if row is not None else None

    def store(self, key: str, message_type: str, answer: bytes, answer_id: str, ttl_seconds: float) -> None:
        now = utcnow()
        try:
            with self.journal.engine.begin() as conn:
                conn.execute(delete(registry_cache).where(or_(registry_cache.c.cache_key == key,
                                                              registry_cache.c.expires_at <= now)))
                conn.execute(insert(registry_cache).values(cache_key=key, message_type=message_type, answer=answer,
                                                           answer_id=answer_id, stored_at=now,
                                                           expires_at=now + timedelta(seconds=ttl_seconds)))
        except IntegrityError:
            pass  # another worker stored the same question's answer at the same moment


def _pending(row: Row[Any]) -> PendingRequest:
    return PendingRequest(row.message_id, row.requester, row.registry, row.message_type, as_utc(row.accepted_at),
                          as_utc(row.deadline_at), row.answer_id, row.timeout_id)
