"""The pull inbox's writes: a status and its inbox row commit together or not at all.

A statement that fails at the database (``fail_on``) stands for a process killed between
two commits: with the status and the entry in separate transactions, a park left a message
AWAITING_PICKUP with nothing to take, and an Ack left it acked at the partner and never
DELIVERED. CI once saw the first as a poll that found nothing after AWAITING_PICKUP.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.envelope import Envelope
from gateway.journal import Journal, Status
from gateway.journal.inbox import Inbox
from gateway.xmlsafe import parse_xml

NS = "urn://zdravlink/types/notice/1.0"


class InjectedFault(Exception):
    pass


@contextmanager
def fail_on(engine: sa.Engine, matches: Callable[[str, Any], bool]) -> Iterator[None]:
    """The database refuses the statements that ``matches``, as a dropped connection or a killed writer would."""
    def refuse(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if matches(statement, params):
            raise InjectedFault(statement.split("(")[0])
    sa.event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse)


def routed(journal: Journal) -> str:
    mid = str(uuid.uuid1())
    payload = parse_xml(f'<n:Notice xmlns:n="{NS}"><n:Text>x</n:Text></n:Notice>'.encode())
    journal.accept(Envelope(message_id=mid, sender="lab", recipient="mis", message_type=NS, payload=payload),
                   source="rest", actor="t", route="r")
    journal.mark_published([mid], "relay")
    assert journal.record(mid, "ROUTED", "router", {}, status=Status.ROUTED, only_from=(Status.PUBLISHED,))
    return mid


def kinds(journal: Journal, mid: str) -> list[str]:
    return [e.kind for e in journal.trail(mid)]


def test_a_park_whose_entry_fails_leaves_the_message_routed_and_a_second_park_delivers_it(journal: Journal) -> None:
    inbox = Inbox(journal)
    mid = routed(journal)
    with fail_on(journal.engine, lambda sql, _: sql.startswith("INSERT INTO inbox")), pytest.raises(InjectedFault):
        inbox.park(journal.get(mid), "worker", "default")
    rec = journal.get(mid)
    assert rec.status == "ROUTED" and "PARKED_FOR_PICKUP" not in kinds(journal, mid)
    # The delivery worker did not ack its RabbitMQ message, so it is delivered again and parked.
    assert inbox.park(rec, "worker", "default")
    taken = inbox.take("mis", "request", lock_seconds=30)
    assert taken is not None and taken.record.message_id == mid and taken.record.status == "AWAITING_PICKUP"


def test_an_ack_whose_status_fails_leaves_the_entry_unacked_and_a_second_ack_delivers(journal: Journal) -> None:
    inbox = Inbox(journal)
    mid = routed(journal)
    assert inbox.park(journal.get(mid), "worker", "default")
    assert inbox.take("mis", "request", lock_seconds=30) is not None

    def the_status_event(sql: str, params: Any) -> bool:
        return sql.startswith("INSERT INTO events") and "ACKNOWLEDGED" in repr(params)
    with fail_on(journal.engine, the_status_event), pytest.raises(InjectedFault):
        inbox.ack("mis", mid, accepted=True, actor="pull:mis")
    assert journal.get(mid).status == "AWAITING_PICKUP"
    assert inbox.pending("mis") == {("request", NS): 1}, "the Ack did not happen, so the entry still waits"
    assert inbox.ack("mis", mid, accepted=True, actor="pull:mis") == "acked"
    assert journal.get(mid).status == "DELIVERED" and kinds(journal, mid)[-1] == "ACKNOWLEDGED"
    assert inbox.ack("mis", mid, accepted=True, actor="pull:mis") == "already"
    assert kinds(journal, mid).count("ACKNOWLEDGED") == 1


def test_a_refused_ack_fails_the_message_with_its_reason(journal: Journal) -> None:
    inbox = Inbox(journal)
    mid = routed(journal)
    assert inbox.park(journal.get(mid), "worker", "default")
    assert inbox.ack("mis", mid, accepted=False, actor="pull:mis") == "unknown", "never taken"
    assert inbox.take("mis", "request", lock_seconds=30) is not None
    assert inbox.ack("mis", mid, accepted=False, actor="pull:mis") == "acked"
    rec = journal.get(mid)
    assert rec.status == "FAILED" and "refused the message at Ack" in (rec.last_error or "")
    assert inbox.pending("mis") == {}
