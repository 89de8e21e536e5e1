"""The pull inbox: messages parked for a participant that polls instead of receiving a push.

SMEV semantics, kept for REST polling too: a take hands out one message and locks it
for ``lock_seconds``; only an Ack removes it, and a message whose lock runs out
without an Ack is handed out again. Locks are taken with a conditional UPDATE, so two
pollers never get the same message at once, on SQLite and PostgreSQL alike.

A park writes the status AWAITING_PICKUP and the inbox entry in one transaction, and an
Ack the entry's Ack and the status DELIVERED or FAILED: written one after the other, a
poller could see AWAITING_PICKUP and find nothing to take (a flaky test found it), and a
process killed between the two left a message waiting for good with no entry to take, or
acked at the partner and never DELIVERED.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from lxml import etree
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway.envelope import Envelope
from gateway.journal import Change, Journal, MessageRecord, Status, utcnow
from gateway.journal.tables import inbox, messages, status_reports
from gateway.xmlsafe import parse_xml

Kind = Literal["request", "response"]
#: Final states a sender may learn through GetStatus.
REPORTABLE = (Status.DELIVERED, Status.DEAD, Status.FAILED)


@dataclass(frozen=True)
class Taken:
    record: MessageRecord
    kind: str
    root_name: str
    deliveries: int


class Inbox:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def park(self, rec: MessageRecord, actor: str, channel: str, also: Sequence[Change] = ()) -> bool:
        """Put a routed message into its recipient's inbox; False if it is not deliverable any more.

        ``also``: changes of the message's trail written in the same transaction, before the park
        (the router's stages, which the delivery worker writes with a copy's first outcome).

        A request that answers one the recipient sent itself is a ``response`` (SMEV's
        GetResponse queue); everything else is a ``request``. A replayed message is
        parked afresh: its old lock and Ack are cleared.
        """
        env = Envelope.from_element(parse_xml(rec.envelope))
        kind = self._kind(rec, env.reference_message_id)
        now = utcnow()
        row = {"recipient": rec.recipient, "kind": kind, "message_type": rec.message_type,
               "root_name": etree.QName(env.payload).localname,
               "parked_at": now, "locked_until": None, "deliveries": 0, "acked_at": None, "accepted": None}
        park = Change(rec.message_id, "PARKED_FOR_PICKUP", actor,
                      {"channel": channel, "queue": kind, "recipient": rec.recipient}, Status.AWAITING_PICKUP,
                      (Status.ACCEPTED, Status.PUBLISHED, Status.ROUTED, Status.RETRYING), {"channel": channel})
        with self.journal.engine.begin() as conn:  # the status and the entry together: see the module's note
            if not self.journal.record_within(conn, [*also, park])[-1]:
                return False
            # The message's row is locked by record_within, so no other park of it runs between the two.
            if conn.execute(select(inbox.c.message_id).where(inbox.c.message_id == rec.message_id)).first():
                conn.execute(update(inbox).where(inbox.c.message_id == rec.message_id).values(**row))
            else:
                conn.execute(insert(inbox).values(message_id=rec.message_id, **row))
        return True

    def _kind(self, rec: MessageRecord, ref: str | None) -> Kind:
        if ref and ref != rec.message_id:
            original = self.journal.get(ref)
            if original is not None and original.sender == rec.recipient:
                return "response"
        return "request"

    def take(self, recipient: str, kind: Kind, lock_seconds: float, message_type: str | None = None,
             root_name: str | None = None, now: datetime | None = None) -> Taken | None:
        """The oldest message waiting for ``recipient`` that nobody holds, now locked; None if there is none."""
        now = now or utcnow()
        free = or_(inbox.c.locked_until.is_(None), inbox.c.locked_until < now)
        where = [inbox.c.recipient == recipient, inbox.c.kind == kind, inbox.c.acked_at.is_(None), free]
        if message_type is not None:
            where.append(inbox.c.message_type == message_type)
        if root_name is not None:
            where.append(inbox.c.root_name == root_name)
        for _ in range(5):  # another poller may win the race for a candidate; try the next one
            with self.journal.engine.begin() as conn:
                row = conn.execute(select(inbox).where(and_(*where)).order_by(inbox.c.parked_at).limit(1)).first()
                if row is None:
                    return None
                won = conn.execute(
                    update(inbox).where(and_(inbox.c.message_id == row.message_id, free, inbox.c.acked_at.is_(None)))
                    .values(locked_until=now + timedelta(seconds=lock_seconds), deliveries=row.deliveries + 1)
                ).rowcount
            if won == 1:
                rec = self.journal.get(row.message_id)
                if rec is None:  # inbox.message_id references messages, and no message is ever deleted
                    raise LookupError(f"inbox entry {row.message_id} has no message in the journal")
                self.journal.record(row.message_id, "TAKEN", f"pull:{recipient}",
                                    {"queue": kind, "delivery": row.deliveries + 1, "lock_s": lock_seconds})
                return Taken(rec, row.kind, row.root_name, row.deliveries + 1)
        return None

    def ack(self, recipient: str, message_id: str, accepted: bool, actor: str) -> str:
        """Confirm a taken message: ``acked``, ``unknown`` or ``already``.

        accepted=True makes it DELIVERED; accepted=False (the recipient refused it, e.g.
        a signature it could not verify) makes it FAILED, which ``replay`` can resend.
        """
        with self.journal.engine.begin() as conn:  # the Ack and the status together: see the module's note
            row = conn.execute(select(inbox).where(and_(inbox.c.message_id == message_id,
                                                        inbox.c.recipient == recipient))).first()
            if row is None or row.deliveries == 0:
                return "unknown"
            if row.acked_at is not None:
                return "already"
            if accepted:
                change = Change(message_id, "ACKNOWLEDGED", actor, {"accepted": True}, Status.DELIVERED,
                                (Status.AWAITING_PICKUP,), {"attempts": row.deliveries})
            else:
                refused = "the recipient refused the message at Ack (accepted=false)"
                change = Change(message_id, "ACK_REFUSED", actor, {"accepted": False}, Status.FAILED,
                                (Status.AWAITING_PICKUP,), {"attempts": row.deliveries, "last_error": refused})
            # The status first: it locks the message's row, as a park does, so the two never deadlock, and a
            # second Ack of the message waits here and then finds the status moved and nothing to append.
            self.journal.record_within(conn, [change])
            done = conn.execute(update(inbox).where(and_(inbox.c.message_id == message_id, inbox.c.acked_at.is_(None)))
                                .values(acked_at=utcnow(), accepted=accepted, locked_until=None)).rowcount
            if done != 1:
                return "already"
        return "acked"

    def pending(self, recipient: str) -> dict[tuple[str, str], int]:
        """Messages waiting (taken or not, not acked) per (queue kind, message type)."""
        with self.journal.engine.connect() as conn:
            rows = conn.execute(
                select(inbox.c.kind, inbox.c.message_type, func.count())
                .where(and_(inbox.c.recipient == recipient, inbox.c.acked_at.is_(None)))
                .group_by(inbox.c.kind, inbox.c.message_type)
            ).all()
        return {(r[0], r[1]): r[2] for r in rows}

    def next_status(self, sender: str) -> MessageRecord | None:
        """The oldest message of ``sender`` that reached a final state not yet reported to it, now marked."""
        reported = select(status_reports.c.message_id)
        with self.journal.engine.begin() as conn:
            mid = conn.execute(
                select(messages.c.message_id)
                .where(and_(messages.c.sender == sender, messages.c.status.in_([s.value for s in REPORTABLE]),
                            messages.c.message_id.not_in(reported)))
                .order_by(messages.c.updated_at).limit(1)
            ).scalar()
            if mid is None:
                return None
            try:
                with conn.begin_nested():
                    conn.execute(insert(status_reports).values(message_id=mid, reported_at=utcnow()))
            except IntegrityError:
                return None
        return self.journal.get(mid)
