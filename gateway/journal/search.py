"""Reading the journal the way an operator asks: search, dead letters, stuck messages, related messages.

Every list is keyset-paged on (created_at, message_id), the order of the indexes of
migration 0010, so the hundredth page of a million messages costs what the first one
does; OFFSET would read and throw away every row before the page. Counts are capped
(``count_upto``): an exact count of a broad filter over a million rows is a full scan,
and "more than 10,000" is all an operator needs to narrow the search.

Nothing here writes, except the operator audit (``audit`` / ``audit_rows``), which lives
beside the reads because the console and the CLI record each action where they read.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, delete, func, insert, literal, or_, select, tuple_
from sqlalchemy.engine import Connection

from gateway.journal import Journal, Status, utcnow
from gateway.journal.model import as_utc
from gateway.journal.tables import (
    acts,
    events,
    messages,
    operator_audit,
    operator_sessions,
    registry_requests,
    rejections,
    result_versions,
    service_records,
)

#: What a search row carries: everything a list shows, never the envelope.
_ROW = (messages.c.message_id, messages.c.created_at, messages.c.updated_at, messages.c.sender,
        messages.c.recipient, messages.c.message_type, messages.c.route, messages.c.status, messages.c.attempts,
        messages.c.replays, messages.c.last_error, messages.c.channel, messages.c.reference_id)

#: Statuses from which replay sends a message round again.
REPLAYABLE = (Status.DEAD, Status.FAILED)
#: In-flight statuses whose message can stop moving (ACCEPTED waits for the relay, AWAITING_PICKUP for its recipient).
STUCK_STATUSES = (Status.ACCEPTED, Status.PUBLISHED, Status.ROUTED, Status.RETRYING)


@dataclass(frozen=True)
class MessageFilter:
    """One search: every field given narrows it (AND); the empty filter is every message."""

    message_id: str | None = None
    message_ids: tuple[str, ...] | None = None  # from MSH-10 or a ResultId: any of these
    sender: str | None = None
    recipient: str | None = None
    message_type: str | None = None
    route: str | None = None
    statuses: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    updated_before: datetime | None = None  # stuck: unchanged since
    updated_since: datetime | None = None  # dead letters: died since (their last change)
    reason: str | None = None  # a part of the last error (dead letters)
    result_id: str | None = None  # a lab result's ResultId (every version of it)

    def where(self, status_first: bool = False) -> list[Any]:
        """The WHERE terms; ``status_first`` keeps SQLite off the other indexes (``_status_first``)."""
        c = messages.c
        terms: list[Any] = []
        if self.message_id:
            terms.append(c.message_id == self.message_id.strip().lower())
        if self.message_ids is not None:
            terms.append(c.message_id.in_(list(self.message_ids) or [""]))
        for column, value in ((c.sender, self.sender), (c.recipient, self.recipient),
                              (c.message_type, self.message_type), (c.route, self.route)):
            if value:
                # ``column || ''`` is the column's value, but no index can serve it (SQLite's documented way).
                terms.append((column.op("||")(literal("")) if status_first else column) == value)
        if self.statuses:
            terms.append(c.status.in_(list(self.statuses)))
        if self.since is not None:
            terms.append(c.created_at >= self.since)
        if self.until is not None:
            terms.append(c.created_at < self.until)
        if self.updated_before is not None:
            terms.append(c.updated_at < self.updated_before)
        if self.updated_since is not None:
            terms.append(c.updated_at >= self.updated_since)
        if self.reason:
            terms.append(c.last_error.contains(self.reason, autoescape=True))
        if self.result_id:
            terms.append(c.message_id.in_(select(result_versions.c.message_id)
                                          .where(result_versions.c.result_id == self.result_id)))
        return terms


@dataclass(frozen=True)
class Row:
    message_id: str
    created_at: datetime
    updated_at: datetime
    sender: str
    recipient: str
    message_type: str
    route: str | None
    status: str
    attempts: int
    replays: int
    last_error: str | None
    channel: str | None
    reference_id: str | None

    @property
    def cursor(self) -> str:
        return f"{self.created_at.isoformat()}|{self.message_id}"


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next_cursor: str | None  # the cursor of the next page; None on the last one


def _row(r: Any) -> Row:
    data = r._asdict()
    data["created_at"], data["updated_at"] = as_utc(data["created_at"]), as_utc(data["updated_at"])
    return Row(**data)


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    """``created_at|message_id`` as the previous page ended; ValueError when it is not one."""
    at, _, mid = cursor.partition("|")
    if not mid:
        raise ValueError("a page cursor is created_at|message_id")
    return as_utc(datetime.fromisoformat(at)), mid


#: Statuses that hold a small part of a journal (everything but DELIVERED): an index led by the status finds them
#: first. PostgreSQL knows this from its statistics; SQLite's keep one average per index and would walk a
#: sender's whole history looking for its few DEAD messages (310 ms a page on a million, measured).
_FEW = frozenset(s.value for s in Status) - {Status.DELIVERED.value}


def _where(journal: Journal, f: MessageFilter) -> list[Any]:
    """``f``'s terms, leading with the status index on SQLite when the statuses asked for are few."""
    status_first = (journal.engine.dialect.name == "sqlite" and bool(f.statuses) and _FEW.issuperset(f.statuses)
                    and not (f.message_id or f.message_ids or f.result_id))
    return f.where(status_first)


def _keyset(query: Select[Any], newest_first: bool, cursor: str | None) -> Select[Any]:
    key = tuple_(messages.c.created_at, messages.c.message_id)
    if cursor:
        at, mid = parse_cursor(cursor)
        query = query.where(key < (at, mid) if newest_first else key > (at, mid))
    if newest_first:
        return query.order_by(messages.c.created_at.desc(), messages.c.message_id.desc())
    return query.order_by(messages.c.created_at, messages.c.message_id)


def search(journal: Journal, f: MessageFilter, *, newest_first: bool = True, cursor: str | None = None,
           limit: int = 50) -> Page:
    """One page of the messages ``f`` selects, in time order, after ``cursor``."""
    query = _keyset(select(*_ROW).where(*_where(journal, f)), newest_first, cursor).limit(limit + 1)
    with journal.engine.connect() as conn:
        rows = [_row(r) for r in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1].cursor if more and rows else None)


def iterate(journal: Journal, f: MessageFilter, *, newest_first: bool = True, page: int = 1000) -> Iterator[Row]:
    """Every row ``f`` selects, read a page at a time (CSV export, replay of a filtered set)."""
    cursor: str | None = None
    while True:
        got = search(journal, f, newest_first=newest_first, cursor=cursor, limit=page)
        yield from got.rows
        if got.next_cursor is None:
            return
        cursor = got.next_cursor


def count_upto(journal: Journal, f: MessageFilter, cap: int = 10_000) -> tuple[int, bool]:
    """How many messages ``f`` selects, counting no further than ``cap``; True when there are more."""
    inner = select(messages.c.message_id).where(*_where(journal, f)).limit(cap + 1).subquery()
    with journal.engine.connect() as conn:
        n = int(conn.execute(select(func.count()).select_from(inner)).scalar_one())
    return min(n, cap), n > cap


def preview(journal: Journal, f: MessageFilter) -> dict[str, int]:
    """What a replay of ``f`` would send: messages per recipient."""
    with journal.engine.connect() as conn:
        # Grouped by an expression, not the column: SQLite would walk the recipient index for the grouping,
        # a whole-journal scan (2 s on a million), instead of the few rows the filter's index finds.
        recipient = messages.c.recipient.op("||")(literal("")).label("recipient")
        rows = conn.execute(select(recipient, func.count()).where(*_where(journal, f))
                            .group_by(recipient).order_by(recipient)).all()
    return {r[0]: int(r[1]) for r in rows}


def dead_letters(reason: str | None = None, older_than: timedelta | None = None, **narrow: Any) -> MessageFilter:
    """The filter of dead letters: DEAD or FAILED, by route, recipient, a part of the reason, and age."""
    until = utcnow() - older_than if older_than else None
    return MessageFilter(statuses=tuple(s.value for s in REPLAYABLE), reason=reason or None, until=until, **narrow)


def stuck(older_than: timedelta, **narrow: Any) -> MessageFilter:
    """The filter of messages that stopped moving: in flight and unchanged for ``older_than``."""
    return MessageFilter(statuses=tuple(s.value for s in STUCK_STATUSES), updated_before=utcnow() - older_than,
                         **narrow)


# ---- one message's neighbours -------------------------------------------------

@dataclass(frozen=True)
class Related:
    message_id: str
    relation: str  # replies-to, reply, correction-of, corrected-by, act, record, registry-answer, registry-timeout
    status: str | None = None
    message_type: str | None = None
    sender: str | None = None
    recipient: str | None = None


def related(journal: Journal, message_id: str, reference_id: str | None) -> list[Related]:
    """Replies, the message it answers, other versions of the same lab result, its act or its records,
    and a registry request's answer or TIMEOUT."""
    found: list[tuple[str, str]] = []
    with journal.engine.connect() as conn:
        if reference_id:
            found.append((reference_id, "answers"))
        found += [(mid, "reply") for mid in conn.execute(
            select(messages.c.message_id).where(messages.c.reference_id == message_id)
            .order_by(messages.c.created_at).limit(200)).scalars()]
        result = conn.execute(select(result_versions.c.result_id)
                              .where(result_versions.c.message_id == message_id)).scalar()
        if result is not None:
            found += [(mid, "same-result") for mid in conn.execute(
                select(result_versions.c.message_id).where(result_versions.c.result_id == result,
                                                           result_versions.c.message_id != message_id)
                .order_by(result_versions.c.at)).scalars()]
        found += [(mid, "in-act") for mid in conn.execute(
            select(service_records.c.act_message_id).where(service_records.c.message_id == message_id,
                                                           service_records.c.act_message_id.is_not(None))).scalars()]
        found += [(mid, "record") for mid in conn.execute(
            select(service_records.c.message_id).where(service_records.c.act_message_id == message_id)
            .limit(200)).scalars()]
        req = conn.execute(select(registry_requests.c.answer_id, registry_requests.c.timeout_id)
                           .where(registry_requests.c.message_id == message_id)).first()
        if req is not None:
            found += [(mid, kind) for mid, kind in ((req.answer_id, "registry-answer"),
                                                     (req.timeout_id, "registry-timeout")) if mid]
        asked = conn.execute(select(registry_requests.c.message_id).where(
            or_(registry_requests.c.answer_id == message_id, registry_requests.c.timeout_id == message_id))).scalar()
        if asked:
            found.append((asked, "registry-request"))
        seen: dict[str, str] = {}
        for mid, kind in found:
            seen.setdefault(mid, kind)
        rows = {r.message_id: r for r in conn.execute(
            select(messages.c.message_id, messages.c.status, messages.c.message_type, messages.c.sender,
                   messages.c.recipient).where(messages.c.message_id.in_(list(seen) or [""])))}
    return [Related(mid, kind, *(tuple(rows[mid])[1:] if mid in rows else ())) for mid, kind in seen.items()]


# ---- the pages beyond messages -------------------------------------------------

def relay_lag_seconds(journal: Journal) -> float:
    """How long the oldest message in the outbox (ACCEPTED) has waited since it got there; 0 when none waits.

    ``updated_at``, not ``created_at``: a message replayed today after a week DEAD is in
    the outbox since today.
    """
    with journal.engine.connect() as conn:
        oldest = conn.execute(select(func.min(messages.c.updated_at))
                              .where(messages.c.status == Status.ACCEPTED.value)).scalar()
    return 0.0 if oldest is None else max(0.0, (utcnow() - as_utc(oldest)).total_seconds())


def journal_size(journal: Journal) -> dict[str, int]:
    """Messages and events in the journal, and the database's size in bytes where the database says."""
    with journal.engine.connect() as conn:
        size: dict[str, int] = {
            "messages": int(conn.execute(select(func.count()).select_from(messages)).scalar_one()),
            # The largest event id, not count(*): a count of millions of events is a scan; ids only grow.
            "events": int(conn.execute(select(func.max(events.c.id))).scalar() or 0),
        }
        size["bytes"] = _database_bytes(conn)
    return size


def _database_bytes(conn: Connection) -> int:
    if conn.dialect.name == "sqlite":
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
        return int(pages) * int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 0)
    return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() or 0)


def lab_activity(journal: Journal, lab: str, result_type: str, since: datetime) -> list[dict[str, Any]]:
    """Per day since ``since``: results accepted from ``lab``, and its refusals by code (gaps among them)."""
    day_of = func.date(messages.c.created_at)
    with journal.engine.connect() as conn:
        accepted = conn.execute(
            select(day_of, func.count()).where(messages.c.sender == lab, messages.c.message_type == result_type,
                                               messages.c.created_at >= since, messages.c.status != "REJECTED")
            .group_by(day_of)).all()
        refused_day = func.date(rejections.c.at)
        refused = conn.execute(
            select(refused_day, rejections.c.code, func.count())
            .where(rejections.c.sender == lab, rejections.c.at >= since)
            .group_by(refused_day, rejections.c.code)).all()
    days: dict[str, dict[str, Any]] = {}
    for day, n in accepted:
        days.setdefault(str(day), {"day": str(day), "accepted": 0, "refused": {}})["accepted"] = int(n)
    for day, code, n in refused:
        days.setdefault(str(day), {"day": str(day), "accepted": 0, "refused": {}})["refused"][code] = int(n)
    return [days[d] for d in sorted(days, reverse=True)]


def kept_messages(journal: Journal, lab: str, kept_type: str, limit: int = 500) -> list[Row]:
    """A lab's messages kept after a mapping gap and still refused, newest first."""
    f = MessageFilter(sender=lab, message_type=kept_type, statuses=(Status.REJECTED.value,))
    return search(journal, f, limit=limit).rows


def acts_summary(journal: Journal, limit: int = 200) -> list[dict[str, Any]]:
    """Acts per period and insurer, with what the insurer's protocol said about their records."""
    sr = service_records.c
    outcome = func.coalesce(sr.outcome, "PENDING")
    with journal.engine.connect() as conn:
        rows = conn.execute(select(acts).order_by(acts.c.period.desc(), acts.c.insurer, acts.c.code_mo,
                                                  acts.c.version.desc()).limit(limit)).all()
        ids = [r.message_id for r in rows]
        counts = conn.execute(select(sr.act_message_id, outcome, func.count())
                              .where(sr.act_message_id.in_(ids or [""])).group_by(sr.act_message_id, outcome)).all()
        status = dict(conn.execute(select(messages.c.message_id, messages.c.status)
                                   .where(messages.c.message_id.in_(ids or [""]))).all())
    outcomes: dict[str, dict[str, int]] = {}
    for act_id, what, n in counts:
        outcomes.setdefault(act_id, {})[what] = int(n)
    return [{**r._asdict(), "status": status.get(r.message_id), "outcomes": outcomes.get(r.message_id, {})}
            for r in rows]


def registry_summary(journal: Journal, limit: int = 200) -> dict[str, Any]:
    """Registry requests: how many pending, answered and timed out, and the open ones by deadline."""
    rr = registry_requests.c
    state = case((rr.answer_id.is_not(None), "answered"), (rr.timeout_id.is_not(None), "timeout"), else_="pending")
    with journal.engine.connect() as conn:
        totals: dict[str, int] = {str(k): int(v) for k, v in conn.execute(select(state, func.count()).group_by(state))}
        pending = conn.execute(select(registry_requests).where(rr.answer_id.is_(None), rr.timeout_id.is_(None))
                               .order_by(rr.deadline_at).limit(limit)).all()
        timeouts = conn.execute(select(registry_requests).where(rr.timeout_id.is_not(None))
                                .order_by(rr.timed_out_at.desc()).limit(limit)).all()
    return {"totals": {k: int(v) for k, v in totals.items()},
            "pending": [r._asdict() for r in pending], "timeouts": [r._asdict() for r in timeouts]}


# ---- the operator audit and sessions --------------------------------------------

@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    operator: str
    role: str
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)
    remote: str | None = None


def audit(journal: Journal, operator: str, role: str, action: str, *, target: str | None = None,
          outcome: str = "ok", detail: dict[str, Any] | None = None, remote: str | None = None) -> None:
    """Write one operator action: who, what, on what, with what outcome, from where, when."""
    with journal.engine.begin() as conn:
        conn.execute(insert(operator_audit).values(
            at=utcnow(), operator=operator[:64], role=role[:16], action=action[:32],
            target=(target or "")[:255] or None,
            outcome=outcome[:16], detail=json.dumps(detail or {}, ensure_ascii=False, default=str),
            remote=(remote or "")[:64] or None))


def audit_rows(journal: Journal, *, operator: str | None = None, action: str | None = None,
               before_id: int | None = None, limit: int = 100) -> tuple[list[tuple[int, AuditEntry]], int | None]:
    """Newest first, keyset-paged on id; the id to continue from, or None on the last page."""
    a = operator_audit.c
    query = select(operator_audit).order_by(a.id.desc()).limit(limit + 1)
    if operator:
        query = query.where(a.operator == operator)
    if action:
        query = query.where(a.action == action)
    if before_id is not None:
        query = query.where(a.id < before_id)
    with journal.engine.connect() as conn:
        rows = conn.execute(query).all()
    out = [(r.id, AuditEntry(as_utc(r.at), r.operator, r.role, r.action, r.target, r.outcome,
                             json.loads(r.detail), r.remote)) for r in rows[:limit]]
    return out, (out[-1][0] if len(rows) > limit else None)


def recent_failures(journal: Journal, action: str, remote: str, since: datetime) -> int:
    """Refused attempts of ``action`` from ``remote`` since ``since`` (the login rate limit counts these)."""
    a = operator_audit.c
    with journal.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(operator_audit).where(
            a.action == action, a.remote == remote, a.at >= since, a.outcome != "ok")).scalar_one())


@dataclass(frozen=True)
class Session:
    operator: str
    role: str
    csrf: str
    expires_at: datetime


def session_open(journal: Journal, token_sha256: str, operator: str, role: str, csrf: str, lifetime: timedelta,
                 remote: str | None) -> None:
    now = utcnow()
    with journal.engine.begin() as conn:
        conn.execute(delete(operator_sessions).where(operator_sessions.c.expires_at < now))
        conn.execute(insert(operator_sessions).values(token_sha256=token_sha256, operator=operator, role=role,
                                                      csrf=csrf, created_at=now, expires_at=now + lifetime,
                                                      remote=(remote or "")[:64] or None))


def session_get(journal: Journal, token_sha256: str) -> Session | None:
    s = operator_sessions.c
    with journal.engine.connect() as conn:
        row = conn.execute(select(s.operator, s.role, s.csrf, s.expires_at)
                           .where(and_(s.token_sha256 == token_sha256))).first()
    if row is None or as_utc(row.expires_at) <= utcnow():
        return None
    return Session(row.operator, row.role, row.csrf, as_utc(row.expires_at))


def session_close(journal: Journal, token_sha256: str) -> None:
    with journal.engine.begin() as conn:
        conn.execute(delete(operator_sessions).where(operator_sessions.c.token_sha256 == token_sha256))
