"""The registry correlation store on SQLite and PostgreSQL: one outcome per moment, deadlines, the cache."""
from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest

from gateway.journal import Journal, Status
from gateway.journal.correlation import RegistryRequests
from tests.unit.test_journal import make_env

WORKER_NS = "urn://zdravlink/types/worker-verification/1.0"


@pytest.fixture
def store(db_url: str):
    j = Journal(db_url)
    j.migrate()
    yield j, RegistryRequests(j)
    j.engine.dispose()


def request(journal: Journal, store: RegistryRequests, deadline: float = 60.0) -> str:
    env = make_env()
    journal.accept(env, source="rest", actor="t", route="r",
                   side_writes=[store.open_write(env.message_id, "clinic", "frmr", WORKER_NS, deadline)])
    # A repeat of the same message is a duplicate: its side writes do not run again.
    again = journal.accept(make_env(env.payload[0].text, mid=env.message_id), source="rest", actor="t", route="r",
                           side_writes=[store.open_write(env.message_id, "clinic", "frmr", WORKER_NS, deadline * 10)])
    assert again.duplicate
    return env.message_id


def test_deadline_is_counted_from_acceptance_and_a_repeat_keeps_the_first(store) -> None:
    journal, reqs = store
    mid = request(journal, reqs, deadline=60)
    pending = reqs.get(mid)
    assert (pending.deadline_at - pending.accepted_at).total_seconds() == 60
    assert pending.accepted_at == journal.get(mid).created_at
    now = pending.accepted_at
    assert reqs.due(now + dt.timedelta(seconds=59)) == []
    assert [p.message_id for p in reqs.due(now + dt.timedelta(seconds=61))] == [mid]


def test_a_dead_request_is_due_at_once(store) -> None:
    journal, reqs = store
    mid = request(journal, reqs, deadline=3600)
    journal.record(mid, "DEAD_LETTERED", "t", {}, status=Status.DEAD)
    assert [p.message_id for p in reqs.due(reqs.get(mid).accepted_at)] == [mid]


def test_an_answer_first_means_no_timeout_and_a_timeout_first_makes_the_answer_late(store) -> None:
    journal, reqs = store
    answered, timed_out = request(journal, reqs), request(journal, reqs)
    answer_id, late = reqs.reserve_answer(answered, "a1")
    assert (answer_id, late) == ("a1", False)
    assert reqs.reserve_answer(answered, "a2") == ("a1", False)  # a second worker reuses the reserved id
    assert reqs.claim_timeout(answered, "t1") is None

    assert reqs.claim_timeout(timed_out, "t2") == "t2"
    assert reqs.claim_timeout(timed_out, "t3") == "t2"  # claimed, not yet sent: finish it under the same id
    later = reqs.get(timed_out).deadline_at + dt.timedelta(seconds=1)
    assert [p.message_id for p in reqs.due(later)] == [timed_out]  # claimed but unsent stays due
    reqs.timed_out(timed_out)
    assert reqs.claim_timeout(timed_out, "t4") is None
    assert reqs.due(later) == []
    assert reqs.reserve_answer(timed_out, "a3") == ("a3", True)


def test_racing_answer_and_timeout_decide_exactly_one_first_outcome(store) -> None:
    journal, reqs = store
    ids = [request(journal, reqs) for _ in range(20)]
    results: dict[str, list[str]] = {m: [] for m in ids}

    def answer(mid: str) -> None:
        _, late = reqs.reserve_answer(mid, str(uuid.uuid1()))
        results[mid].append("late" if late else "answer")

    def timeout(mid: str) -> None:
        if reqs.claim_timeout(mid, str(uuid.uuid1())) is not None:
            results[mid].append("timeout")

    threads = [threading.Thread(target=f, args=(m,)) for m in ids for f in (answer, timeout)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for mid, seen in results.items():
        assert sorted(seen) in (["answer"], ["late", "timeout"]), (mid, seen)


def test_cache_entries_expire(store) -> None:
    journal, reqs = store
    reqs.store("k", WORKER_NS, b"<a/>", "a1", ttl_seconds=60)
    hit = reqs.cached("k")
    assert (hit.answer, hit.answer_id) == (b"<a/>", "a1")
    assert reqs.cached("k", now=hit.stored_at + dt.timedelta(seconds=61)) is None
    assert reqs.cached("other") is None
    reqs.store("k", WORKER_NS, b"<b/>", "a2", ttl_seconds=60)
    assert reqs.cached("k").answer_id == "a2"


def test_a_dead_request_whose_reserved_answer_was_never_journalled_is_owed_a_timeout(store) -> None:
    """The answer's id is reserved before its accept; an answer refused there (or a worker killed there, and the
    registry failing until DEAD) left the reservation behind, and the MIS never heard an answer or a TIMEOUT."""
    journal, reqs = store
    refused, in_flight, answered = request(journal, reqs, 3600), request(journal, reqs, 3600), request(journal, reqs)
    answer_to = {mid: str(uuid.uuid1()) for mid in (refused, in_flight, answered)}
    for mid, answer_id in answer_to.items():
        reqs.reserve_answer(mid, answer_id)
    journal.accept(make_env(mid=answer_to[answered]), source="registry", actor="t", route="r")
    journal.record(refused, "DEAD_LETTERED", "t", {}, status=Status.DEAD)
    journal.record(answered, "DEAD_LETTERED", "t", {}, status=Status.DEAD)  # answered first: nothing owed
    now = reqs.get(refused).accepted_at
    assert [p.message_id for p in reqs.due(now)] == [refused]
    assert reqs.claim_timeout(in_flight, str(uuid.uuid1())) is None, "an answer on its way keeps its reservation"
    assert reqs.claim_timeout(answered, str(uuid.uuid1())) is None
    timeout_id = str(uuid.uuid1())
    assert reqs.claim_timeout(refused, timeout_id) == timeout_id
    reqs.timed_out(refused)
    assert reqs.due(now) == []
    assert reqs.reserve_answer(refused, str(uuid.uuid1())) == (answer_to[refused], True), "a replay answers late"
