"""Messages: accepting one (an idempotent receiver), reading them, finding them by status, sending them round again."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from gateway import errors
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal.chain import GENESIS, TrailStore, detail_text, event_row
from gateway.journal.model import (
    IN_FLIGHT,
    AcceptOutcome,
    MessageRecord,
    SideWrite,
    Status,
    as_utc,
    message_record,
    utcnow,
)
from gateway.journal.tables import events, messages


@dataclass(frozen=True)
class AcceptRequest:
    """One message to accept, with what its ACCEPTED event records and what its flow writes with it."""

    env: Envelope
    source: str
    actor: str
    route: str | None
    evidence: dict[str, str] | None = None
    warnings: Sequence[str] = ()
    side_writes: Sequence[SideWrite] = ()

    def row(self, now: datetime) -> dict[str, Any]:
        env = self.env
        return dict(message_id=env.message_id, sender=env.sender, recipient=env.recipient,
                    message_type=env.message_type, route=self.route, status=Status.ACCEPTED.value,
                    fingerprint=env.fingerprint(), source=self.source, envelope=env.to_xml(), created_at=now,
                    updated_at=now, attempts=0, replays=0, reference_id=env.reference_message_id)

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"source": self.source, "route": self.route, "sender": self.env.sender,
                                  "recipient": self.env.recipient}
        if self.evidence:
            detail["signature"] = self.evidence
        if self.warnings:
            detail["warnings"] = list(self.warnings)
        return detail


class MessageStore(TrailStore):
    def accept_many(self, requests: Sequence[AcceptRequest]) -> list[AcceptOutcome | Rejection]:
        """Group commit: the first acceptances of many messages in one transaction, one result each.

        The messages new to the journal are written together (rows, ACCEPTED events, side
        writes); a repeat, a reused MessageID or a resubmission after REJECTED is then
        decided on its own, exactly as ``accept`` decides it. Should the batch hit a
        constraint (another process took a MessageID at the same moment, a side write
        conflicts), nothing of it is kept and each message is accepted on its own.
        """
        ids = [r.env.message_id for r in requests]
        results: dict[int, AcceptOutcome | Rejection] = {}
        if len(set(ids)) == len(ids):
            try:
                results = self._accept_new(requests)
            except IntegrityError:
                results = {}
        for i, r in enumerate(requests):
            if i not in results:
                try:
                    results[i] = self.accept(r.env, source=r.source, actor=r.actor, route=r.route,
                                             evidence=r.evidence, warnings=r.warnings, side_writes=r.side_writes)
                except Rejection as rej:
                    results[i] = rej
        return [results[i] for i in range(len(requests))]

    def _accept_new(self, requests: Sequence[AcceptRequest]) -> dict[int, AcceptOutcome | Rejection]:
        """Write the requests whose MessageID the journal does not hold yet; their index → outcome."""
        now = utcnow()
        with self.engine.begin() as conn:
            taken = set(conn.execute(select(messages.c.message_id).where(
                messages.c.message_id.in_([r.env.message_id for r in requests]))).scalars())
            fresh = [(i, r) for i, r in enumerate(requests) if r.env.message_id not in taken]
            if not fresh:
                return {}
            conn.execute(insert(messages), [r.row(now) for _, r in fresh])
            conn.execute(insert(events), [
                event_row(GENESIS, r.env.message_id, now, Status.ACCEPTED.value, "ACCEPTED", r.actor,
                          detail_text(r.detail())) for _, r in fresh])
            for _, r in fresh:
                for write in r.side_writes:
                    write(conn, now)
        return {i: AcceptOutcome(r.env.message_id, Status.ACCEPTED.value, duplicate=False) for i, r in fresh}

    def accept(self, env: Envelope, *, source: str, actor: str, route: str | None,
               evidence: dict[str, str] | None = None, warnings: Sequence[str] = (),
               side_writes: Sequence[SideWrite] = ()) -> AcceptOutcome:
        """Journal an accepted message, or recognise a repeat of one (idempotent receiver).

        The same MessageID with the same canonical data is a repeat and gets the first
        answer; with other data it is refused. A MessageID whose earlier message was
        REJECTED may be sent again, corrected. ``side_writes`` run in the same
        transaction as the message row and its first event, and only for a first
        acceptance: a repeat must not write them twice, and a crash must not leave the
        message without them (its resend would be taken as a duplicate).
        """
        now = utcnow()
        request = AcceptRequest(env, source, actor, route, evidence, warnings, side_writes)
        row, detail = request.row(now), request.detail()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(messages).values(**row))
                self._append_event(conn, env.message_id, Status.ACCEPTED.value, "ACCEPTED", actor, detail, now)
                for write in side_writes:
                    write(conn, now)
            return AcceptOutcome(env.message_id, Status.ACCEPTED.value, duplicate=False)
        except IntegrityError:
            # Either the MessageID is taken (handled below) or a side write broke a constraint;
            # the second raises again below if the message row turns out not to exist.
            pass
        with self.engine.begin() as conn:
            self._lock_chains(conn, [env.message_id])
            existing = conn.execute(
                select(messages.c.status, messages.c.fingerprint).where(messages.c.message_id == env.message_id)
            ).one_or_none()
            if existing is None:
                raise Rejection(errors.ACCEPT_CONFLICT, "a message accepted at the same moment holds what this one "
                                "records (e.g. the same service record); nothing was kept, send it again",
                                "MessageID", status=409)
            if existing.status == Status.REJECTED.value:
                conn.execute(
                    update(messages)
                    .where(messages.c.message_id == env.message_id)
                    .values(**{k: v for k, v in row.items() if k not in ("message_id", "created_at")})
                )
                self._append_event(conn, env.message_id, Status.ACCEPTED.value, "ACCEPTED", actor,
                                   {**detail, "resubmitted_after": "REJECTED"}, now)
                for write in side_writes:
                    write(conn, now)
                return AcceptOutcome(env.message_id, Status.ACCEPTED.value, duplicate=False)
            if existing.fingerprint != env.fingerprint():
                raise Rejection(
                    errors.MESSAGE_ID_REUSED,
                    "this MessageID was already used for a message with different content",
                    "MessageID",
                    status=409,
                )
            self._append_event(conn, env.message_id, existing.status, "DUPLICATE_RECEIVED", actor,
                               {"source": source}, now)
            return AcceptOutcome(env.message_id, existing.status, duplicate=True)

    def get(self, message_id: str) -> MessageRecord | None:
        return self.get_many([message_id]).get(message_id)

    def get_many(self, message_ids: Sequence[str]) -> dict[str, MessageRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(messages).where(messages.c.message_id.in_(list(message_ids)))).all()
        return {row.message_id: message_record(row) for row in rows}

    def with_status(self, status: Status, page: int = 1000) -> Iterator[str]:
        """Every message in ``status``, oldest first, read a page at a time so any number fits in memory."""
        after: tuple[datetime, str] | None = None
        while True:
            query = select(messages.c.created_at, messages.c.message_id).where(messages.c.status == status.value)
            if after is not None:
                query = query.where(tuple_(messages.c.created_at, messages.c.message_id) > after)
            with self.engine.connect() as conn:
                rows = conn.execute(query.order_by(messages.c.created_at, messages.c.message_id).limit(page)).all()
            yield from (r.message_id for r in rows)
            if len(rows) < page:
                return
            after = (rows[-1].created_at, rows[-1].message_id)

    def count(self, status: Status) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(messages)
                                    .where(messages.c.status == status.value)).scalar_one())

    def unchanged_since(self, statuses: Iterable[Status], before: datetime, limit: int = 1000) -> list[MessageRecord]:
        """Messages in these statuses whose last change is older than ``before``, oldest change first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages).where(messages.c.status.in_([s.value for s in statuses]),
                                       messages.c.updated_at < before)
                .order_by(messages.c.updated_at).limit(limit)
            ).all()
        return [message_record(row) for row in rows]

    def in_flight_summary(self) -> dict[str, tuple[int, float]]:
        """Per in-flight status: count and age in seconds of the oldest message."""
        now = utcnow()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.status, func.count(), func.min(messages.c.created_at))
                .where(messages.c.status.in_([s.value for s in IN_FLIGHT]))
                .group_by(messages.c.status)
            ).all()
        return {r[0]: (r[1], (now - as_utc(r[2])).total_seconds()) for r in rows}

    # ---- replay -----------------------------------------------------------

    def replay(self, message_id: str, actor: str) -> bool:
        """Send a DEAD or FAILED message round again through the outbox, recording the lineage."""
        rec = self.get(message_id)
        if rec is None:
            raise Rejection(errors.MESSAGE_NOT_FOUND, f"no message {message_id}", "message_id", status=404)
        lineage = {"from_status": rec.status, "previous_error": rec.last_error, "replay": rec.replays + 1,
                   "previous_attempts": rec.attempts}
        return self.record(
            message_id, "REPLAYED", actor, lineage,
            status=Status.ACCEPTED, only_from=(Status.DEAD, Status.FAILED),
            replays=rec.replays + 1, generation=rec.generation + 1, stages=0, attempts=0, last_error=None,
        )

    def send_round_again(self, rec: MessageRecord, actor: str, detail: dict[str, Any]) -> bool:
        """The sweeper's resend: back to the outbox on a new generation, if the message has not moved.

        Guarded by the status and generation it was found in, so a message that moved on
        meanwhile (its copy turned up after all) is left alone.
        """
        now = utcnow()
        with self.engine.begin() as conn:
            self._lock_chains(conn, [rec.message_id])
            moved = conn.execute(
                update(messages).where(messages.c.message_id == rec.message_id, messages.c.status == rec.status,
                                       messages.c.generation == rec.generation)
                .values(status=Status.ACCEPTED.value, generation=rec.generation + 1, stages=0, updated_at=now)
            ).rowcount
            if not moved:
                return False
            self._append_event(conn, rec.message_id, Status.ACCEPTED.value, "SWEPT", actor,
                               {**detail, "from_status": rec.status, "generation": rec.generation + 1}, now)
        return True
