"""Journal operations: accept, status transitions with events, outbox, replay, audit.

Each status change is one transaction that updates the message row and appends an
event whose hash covers the previous event of the same message, so a trail edited
after the fact no longer verifies (``Journal.verify_trail``).

The journal is the only truth about a message. Its database can be briefly out of
reach (a failover, a network blip): ``unavailable(exc)`` tells those errors apart
from bugs, so that a worker waits for the journal instead of letting RabbitMQ count
the failures and dead-letter messages behind the journal's back.
"""
from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from sqlalchemy import create_engine, event, func, insert, select, tuple_, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from gateway import errors
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal.tables import events, messages, rejections
from gateway.masking import mask_text

GENESIS = "0" * 64


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


def unavailable(exc: BaseException) -> bool:
    """Is this the journal's database being out of reach (or busy), rather than a bug?

    Connection refused or dropped, a server shutting down, SQLite's lock wait running
    out: all surface as OperationalError or InterfaceError, or as a DBAPIError that
    invalidated its connection. Retrying later is the answer to each of them.
    """
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


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


@dataclass(frozen=True)
class AcceptOutcome:
    message_id: str
    status: str
    duplicate: bool


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _event_hash(prev: str, message_id: str, at: datetime, status: str, kind: str, actor: str, detail: str) -> str:
    stamp = _aware(at).isoformat(timespec="microseconds")
    raw = "\x1f".join((prev, message_id, stamp, status, kind, actor, detail))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _detail_text(detail: dict[str, Any]) -> str:
    return json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str)


def _event_row(prev: str, message_id: str, at: datetime, status: str, kind: str, actor: str,
               detail_text: str) -> dict[str, Any]:
    """An events row chained to ``prev``: its hash covers every field and the previous hash."""
    return dict(message_id=message_id, at=at, status=status, kind=kind, actor=actor, detail=detail_text,
                prev_hash=prev, hash=_event_hash(prev, message_id, at, status, kind, actor, detail_text))


def _record(row: Any) -> MessageRecord:
    data = row._asdict()
    for key in ("created_at", "updated_at", "delivered_at"):
        data[key] = _aware(data[key])
    return MessageRecord(**data)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Journal:
    """One journal per process; safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    # ---- schema ---------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from gateway.journal.migrate import upgrade

        upgrade(self.engine)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    # ---- events ---------------------------------------------------------

    def _append_event(
        self, conn: Connection, message_id: str, status: str, kind: str, actor: str, detail: dict[str, Any], at: datetime
    ) -> None:
        prev = self._chain_heads(conn, [message_id]).get(message_id, GENESIS)
        row = _event_row(prev, message_id, at, status, kind, actor, _detail_text(detail))
        conn.execute(insert(events).values(**row))

    def record(
        self,
        message_id: str,
        kind: str,
        actor: str,
        detail: dict[str, Any] | None = None,
        *,
        status: Status | None = None,
        only_from: Iterable[Status] | None = None,
        **columns: Any,
    ) -> bool:
        """Append an event and optionally move the status; False if ``only_from`` did not hold.

        ``only_from`` makes transitions idempotent under redelivery: a router that
        sees a message twice does not move a DELIVERED message back to ROUTED.
        """
        return self.record_many([Change(message_id, kind, actor, detail or {}, status,
                                        None if only_from is None else tuple(only_from), columns)])[0]

    def record_many(self, changes: Sequence[Change]) -> list[bool]:
        """Apply several changes in one transaction (group commit); one result per change, as ``record``."""
        if not changes:
            return []
        now = utcnow()
        ids = list(dict.fromkeys(c.message_id for c in changes))
        results: list[bool] = []
        with self.engine.begin() as conn:
            self._lock_chains(conn, ids)
            found = conn.execute(select(messages.c.message_id, messages.c.status, messages.c.stages)
                                 .where(messages.c.message_id.in_(ids))).all()
            current = {r.message_id: r.status for r in found}
            stages = {r.message_id: r.stages for r in found}
            heads = self._chain_heads(conn, ids)
            rows = []
            for c in changes:
                status_now = current.get(c.message_id)
                if status_now is None or (c.stage is not None and stages[c.message_id] & c.stage):
                    results.append(False)
                    continue  # no such message, or this stage of this round is in the trail already
                guard_holds = c.only_from is None or status_now in {Status(s).value for s in c.only_from}
                if not guard_holds and not c.even_if_late:
                    results.append(False)
                    continue
                if c.stage is not None:
                    stages[c.message_id] |= c.stage
                    conn.execute(update(messages).where(messages.c.message_id == c.message_id)
                                 .values(stages=stages[c.message_id]))
                if not guard_holds:
                    results.append(False)
                    detail: dict[str, Any] = {**c.detail, "late": True}
                    new_status = status_now
                else:
                    detail = c.detail
                    new_status = c.status.value if c.status else status_now
                    values: dict[str, Any] = {"updated_at": now, **c.columns}
                    if c.status:
                        values["status"] = new_status
                    if c.status == Status.DELIVERED:
                        values["delivered_at"] = now
                    conn.execute(update(messages).where(messages.c.message_id == c.message_id).values(**values))
                    current[c.message_id] = new_status
                    results.append(True)
                row = _event_row(heads.get(c.message_id, GENESIS), c.message_id, now, new_status, c.kind, c.actor,
                                 _detail_text(detail))
                rows.append(row)
                heads[c.message_id] = row["hash"]
            if rows:
                conn.execute(insert(events), rows)
        return results

    def _lock_chains(self, conn: Connection, ids: Sequence[str]) -> None:
        """Take the write lock on these messages before their chain heads are read.

        Two processes appending to one message's trail (the relay's PUBLISHED and the
        router's ROUTED arrive together) would otherwise read the same head and fork the
        chain. PostgreSQL locks the rows, in one order so two batches cannot deadlock;
        SQLite has one writer, and a first write takes its lock for the transaction.
        """
        ordered = sorted(set(ids))
        if self.engine.dialect.name == "sqlite":
            conn.execute(update(messages).where(messages.c.message_id.in_(ordered))
                         .values(updated_at=messages.c.updated_at))
        else:
            conn.execute(select(messages.c.message_id).where(messages.c.message_id.in_(ordered))
                         .order_by(messages.c.message_id).with_for_update())

    @staticmethod
    def _chain_heads(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
        """The newest event hash of each message, in one query."""
        if not ids:
            return {}
        return dict(conn.execute(
            select(events.c.message_id, events.c.hash).where(
                events.c.id.in_(
                    select(func.max(events.c.id)).where(events.c.message_id.in_(list(ids)))
                    .group_by(events.c.message_id)
                )
            )
        ).all())

    # ---- accept ---------------------------------------------------------

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
        row = dict(
            message_id=env.message_id,
            sender=env.sender,
            recipient=env.recipient,
            message_type=env.message_type,
            route=route,
            status=Status.ACCEPTED.value,
            fingerprint=env.fingerprint(),
            source=source,
            envelope=env.to_xml(),
            created_at=now,
            updated_at=now,
            attempts=0,
            replays=0,
            reference_id=env.reference_message_id,
        )
        detail: dict[str, Any] = {"source": source, "route": route, "sender": env.sender, "recipient": env.recipient}
        if evidence:
            detail["signature"] = evidence
        if warnings:
            detail["warnings"] = list(warnings)
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
            self._append_event(conn, env.message_id, existing.status, "DUPLICATE_RECEIVED", actor, {"source": source}, now)
            return AcceptOutcome(env.message_id, existing.status, duplicate=True)

    def reject(
        self,
        rejection: Rejection,
        *,
        source: str,
        sender: str | None = None,
        message_id: str | None = None,
        remote: str | None = None,
        env: Envelope | None = None,
        actor: str = "gateway",
    ) -> None:
        """Audit a refusal; an authenticated sender's envelope is also journalled as REJECTED."""
        now = utcnow()
        detail = mask_text(rejection.detail)
        with self.engine.begin() as conn:
            conn.execute(
                insert(rejections).values(
                    at=now,
                    source=source,
                    code=rejection.code,
                    field=rejection.field,
                    detail=detail,
                    sender=(sender or "")[:50] or None,
                    message_id=(message_id or "")[:64] or None,
                    remote=remote,
                )
            )
        if env is None:
            return
        event_detail = {"code": rejection.code, "field": rejection.field, "detail": detail}
        row = dict(
            message_id=env.message_id, sender=env.sender, recipient=env.recipient, message_type=env.message_type,
            status=Status.REJECTED.value, fingerprint=env.fingerprint(), source=source, envelope=env.to_xml(),
            created_at=now, updated_at=now, attempts=0, replays=0, last_error=f"{rejection.code}: {detail}",
            reference_id=env.reference_message_id,
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(messages).values(**row))
                self._append_event(conn, env.message_id, Status.REJECTED.value, "REJECTED", actor, event_detail, now)
        except IntegrityError:
            # An accepted message with this id exists; its record must not be overwritten
            # by a refused copy. The audit row above keeps the refusal.
            pass

    # ---- outbox ---------------------------------------------------------

    def outbox(self, limit: int) -> list[tuple[str, bytes, int]]:
        """Accepted messages not yet handed to the broker, oldest first: id, envelope and generation."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.message_id, messages.c.envelope, messages.c.generation)
                .where(messages.c.status == Status.ACCEPTED.value)
                .order_by(messages.c.created_at)
                .limit(limit)
            ).all()
        return [(r.message_id, r.envelope, r.generation) for r in rows]

    def mark_published(self, message_ids: Sequence[str], actor: str) -> None:
        """Record the broker's confirm. The router may already have moved a message on (and
        noted PUBLISHED itself): the status only changes where it is still ACCEPTED, and the
        event is written unless this round's PUBLISHED is in the trail already (``Stage``)."""
        now = utcnow()
        with self.engine.begin() as conn:
            self._lock_chains(conn, message_ids)
            current = {r.message_id: r.status for r in conn.execute(
                select(messages.c.message_id, messages.c.status, messages.c.stages)
                .where(messages.c.message_id.in_(message_ids))) if not r.stages & Stage.PUBLISHED}
            if not current:
                return
            ids = list(current)
            conn.execute(
                update(messages)
                .where(messages.c.message_id.in_(ids), messages.c.status == Status.ACCEPTED.value)
                .values(status=Status.PUBLISHED.value, updated_at=now)
            )
            conn.execute(update(messages).where(messages.c.message_id.in_(ids))
                         .values(stages=messages.c.stages.op("|")(int(Stage.PUBLISHED))))
            # One query for the chain heads and one multi-row insert: a relay batch of
            # hundreds must not cost two round trips per message.
            heads = self._chain_heads(conn, ids)
            rows = []
            for mid, status in current.items():
                new = Status.PUBLISHED.value if status == Status.ACCEPTED.value else status
                rows.append(_event_row(heads.get(mid, GENESIS), mid, now, new, "PUBLISHED", actor, _detail_text({})))
            conn.execute(insert(events), rows)

    # ---- reading ----------------------------------------------------------

    def get(self, message_id: str) -> MessageRecord | None:
        return self.get_many([message_id]).get(message_id)

    def get_many(self, message_ids: Sequence[str]) -> dict[str, MessageRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(messages).where(messages.c.message_id.in_(list(message_ids)))).all()
        return {row.message_id: _record(row) for row in rows}

    def trail(self, message_id: str) -> list[EventRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events).where(events.c.message_id == message_id).order_by(events.c.id)
            ).all()
        return [
            EventRecord(_aware(r.at), r.status, r.kind, r.actor, json.loads(r.detail), r.hash, r.prev_hash)
            for r in rows
        ]

    def verify_trail(self, message_id: str) -> bool:
        """Recompute the hash chain; False means an event was edited, removed or inserted."""
        prev = GENESIS
        for ev in self.trail(message_id):
            text = _detail_text(ev.detail)
            if ev.prev_hash != prev or ev.hash != _event_hash(prev, message_id, ev.at, ev.status, ev.kind, ev.actor, text):
                return False
            prev = ev.hash
        return True

    def broken_trails(self, since: datetime | None = None) -> Iterator[str]:
        """Every message whose trail does not verify, in one streamed pass over the events."""
        query = select(events).order_by(events.c.message_id, events.c.id)
        if since is not None:
            query = query.where(events.c.message_id.in_(
                select(messages.c.message_id).where(messages.c.created_at >= since)))
        with self.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=5000).execute(query)
            current, prev, broken = None, GENESIS, False
            for r in rows:
                if r.message_id != current:
                    if broken:
                        yield str(current)
                    current, prev, broken = r.message_id, GENESIS, False
                if broken:
                    continue
                if r.prev_hash != prev or r.hash != _event_hash(prev, r.message_id, r.at, r.status, r.kind, r.actor,
                                                                r.detail):
                    broken = True
                prev = r.hash
            if broken:
                yield str(current)

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
        return [_record(row) for row in rows]

    def rejections(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(rejections).order_by(rejections.c.id.desc()).limit(limit)).all()
        return [r._asdict() for r in rows]

    def in_flight_summary(self) -> dict[str, tuple[int, float]]:
        """Per in-flight status: count and age in seconds of the oldest message."""
        now = utcnow()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.status, func.count(), func.min(messages.c.created_at))
                .where(messages.c.status.in_([s.value for s in IN_FLIGHT]))
                .group_by(messages.c.status)
            ).all()
        return {r[0]: (r[1], (now - _aware(r[2])).total_seconds()) for r in rows}

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
