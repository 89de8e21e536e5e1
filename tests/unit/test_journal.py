"""The journal on SQLite and on PostgreSQL: accept, dedup, transitions, trail, replay."""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal, Status
from gateway.xmlsafe import parse_xml

NS = "urn://zdravlink/types/notice/1.0"


def make_env(text: str = "x", mid: str | None = None) -> Envelope:
    payload = parse_xml(f'<n:Notice xmlns:n="{NS}"><n:Text>{text}</n:Text></n:Notice>'.encode())
    return Envelope(message_id=mid or str(uuid.uuid1()), sender="lab", recipient="mis", message_type=NS,
                    payload=payload)


@pytest.fixture
def journal(db_url: str) -> Journal:
    j = Journal(db_url)
    j.migrate()
    j.migrate()  # idempotent
    yield j
    j.engine.dispose()


def test_accept_then_duplicate_then_reuse(journal: Journal) -> None:
    env = make_env()
    first = journal.accept(env, source="rest", actor="t", route="r")
    assert (first.status, first.duplicate) == ("ACCEPTED", False)
    again = journal.accept(make_env(mid=env.message_id), source="soap", actor="t", route="r")
    assert again.duplicate and again.status == "ACCEPTED"
    with pytest.raises(Rejection) as exc:
        journal.accept(make_env("other", mid=env.message_id), source="rest", actor="t", route="r")
    assert exc.value.code == "MESSAGE_ID_REUSED" and exc.value.status == 409
    assert [e.kind for e in journal.trail(env.message_id)] == ["ACCEPTED", "DUPLICATE_RECEIVED"]


def test_outbox_publish_and_guarded_transitions(journal: Journal) -> None:
    envs = [make_env(str(i)) for i in range(3)]
    for e in envs:
        journal.accept(e, source="rest", actor="t", route="r")
    assert [m for m, _, _ in journal.outbox(10)] == [e.message_id for e in envs]
    journal.mark_published([envs[0].message_id], "relay")
    assert [m for m, _, _ in journal.outbox(10)] == [e.message_id for e in envs[1:]]
    mid = envs[0].message_id
    assert journal.record(mid, "ROUTED", "router", {}, status=Status.ROUTED, only_from=(Status.PUBLISHED,))
    assert journal.record(mid, "DELIVERED", "w", {}, status=Status.DELIVERED, only_from=(Status.ROUTED,))
    # A late duplicate cannot move a delivered message back.
    assert not journal.record(mid, "ROUTED", "router", {}, status=Status.ROUTED, only_from=(Status.PUBLISHED,))
    rec = journal.get(mid)
    assert rec.status == "DELIVERED" and rec.delivered_at is not None and rec.delivered_at >= rec.created_at
    assert journal.in_flight_summary()["ACCEPTED"][0] == 2


def test_trail_hash_chain_detects_tampering(journal: Journal) -> None:
    env = make_env()
    journal.accept(env, source="rest", actor="t", route="r")
    journal.record(env.message_id, "DEAD", "w", {"reason": "HTTP 400"}, status=Status.DEAD)
    assert journal.verify_trail(env.message_id)
    with journal.engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET detail = :d WHERE kind = 'DEAD'"), {"d": '{"reason": "fine"}'})
    assert not journal.verify_trail(env.message_id)


def test_replay_records_lineage_and_only_from_dead(journal: Journal) -> None:
    env = make_env()
    journal.accept(env, source="rest", actor="t", route="r")
    assert not journal.replay(env.message_id, "operator")  # not dead
    journal.record(env.message_id, "DEAD", "w", {}, status=Status.DEAD, last_error="HTTP 400", attempts=1)
    assert journal.replay(env.message_id, "operator")
    rec = journal.get(env.message_id)
    assert (rec.status, rec.replays, rec.attempts, rec.last_error) == ("ACCEPTED", 1, 0, None)
    lineage = journal.trail(env.message_id)[-1]
    assert lineage.kind == "REPLAYED" and lineage.actor == "operator"
    assert lineage.detail == {"from_status": "DEAD", "previous_error": "HTTP 400", "replay": 1,
                              "previous_attempts": 1}
    with pytest.raises(Rejection):
        journal.replay(str(uuid.uuid1()), "operator")


def test_rejection_is_audited_masked_and_resubmission_allowed(journal: Journal) -> None:
    env = make_env()
    rej = Rejection("PAYLOAD_INVALID", "Element 'SNILS': The value '11223344595' is not accepted", "SNILS", 422)
    journal.reject(rej, source="rest", sender="lab", message_id=env.message_id, env=env)
    audit = journal.rejections()
    assert audit[0]["code"] == "PAYLOAD_INVALID" and "11223344595" not in audit[0]["detail"]
    assert journal.get(env.message_id).status == "REJECTED"
    out = journal.accept(env, source="rest", actor="t", route="r")
    assert not out.duplicate and journal.get(env.message_id).status == "ACCEPTED"


def test_concurrent_writers_never_fork_a_trail(journal: Journal) -> None:
    """The relay, the router and the workers append to one trail from several processes at once."""
    import threading

    env = make_env()
    journal.accept(env, source="rest", actor="test", route="r")
    others = [Journal(journal.url) for _ in range(3)]
    barrier = threading.Barrier(4)

    def write(j: Journal, n: int) -> None:
        barrier.wait()
        for i in range(15):
            if i % 5 == 0:
                j.mark_published([env.message_id], f"relay-{n}")
            else:
                j.record(env.message_id, "NOTE", f"writer-{n}", {"i": i})

    threads = [threading.Thread(target=write, args=(j, n)) for n, j in enumerate([journal, *others])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for j in others:
        j.engine.dispose()
    kinds = [e.kind for e in journal.trail(env.message_id)]
    # Four relays raced to record the one confirm: the stage guard wrote it once.
    assert kinds.count("PUBLISHED") == 1 and kinds.count("NOTE") == 4 * 12 and len(kinds) == 1 + 1 + 4 * 12
    assert journal.verify_trail(env.message_id)


def test_accept_and_its_side_writes_are_one_transaction(journal: Journal) -> None:
    """A crash (here: a failing side write) between the message row and its side rows keeps neither,
    so the resend is a first acceptance, not a duplicate with its record missing."""
    from gateway.journal.tables import rejections

    env = make_env()

    def side(conn, now) -> None:
        conn.execute(sa.insert(rejections).values(at=now, source="side", code="SIDE", detail="written"))
        raise ConnectionError("the process died here")

    with pytest.raises(ConnectionError):
        journal.accept(env, source="rest", actor="t", route="r", side_writes=[side])
    assert journal.get(env.message_id) is None and journal.trail(env.message_id) == []
    assert [r for r in journal.rejections() if r["code"] == "SIDE"] == []

    written = []
    out = journal.accept(env, source="rest", actor="t", route="r",
                         side_writes=[lambda conn, now: written.append(now)])
    assert not out.duplicate and written == [journal.get(env.message_id).created_at]
    assert journal.accept(env, source="rest", actor="t", route="r",
                          side_writes=[lambda conn, now: written.append(now)]).duplicate
    assert len(written) == 1  # a repeat writes nothing more


def test_a_late_stage_is_recorded_without_moving_the_status_back(journal: Journal) -> None:
    from gateway.journal import Change, Stage

    env = make_env()
    mid = env.message_id
    journal.accept(env, source="rest", actor="t", route="r")
    journal.mark_published([mid], "relay")
    journal.record(mid, "DELIVERED", "w", {}, status=Status.DELIVERED)
    stage_again = Change(mid, "PUBLISHED", "router", {}, Status.PUBLISHED, (Status.ACCEPTED,), even_if_late=True,
                         stage=Stage.PUBLISHED)
    assert journal.record_many([stage_again]) == [False]  # the relay wrote this round's PUBLISHED already
    late = Change(mid, "ROUTED", "router", {"route": "r"}, Status.ROUTED, (Status.ACCEPTED, Status.PUBLISHED),
                  even_if_late=True)
    stale = Change(mid, "ROUTED", "router", {"route": "r"}, Status.ROUTED, (Status.ACCEPTED, Status.PUBLISHED))
    assert journal.record_many([late, stale]) == [False, False]
    trail = journal.trail(mid)
    assert [(e.kind, e.status) for e in trail] == [("ACCEPTED", "ACCEPTED"), ("PUBLISHED", "PUBLISHED"),
                                                   ("DELIVERED", "DELIVERED"), ("ROUTED", "DELIVERED")]
    assert trail[-1].detail == {"route": "r", "late": True}
    assert journal.get(mid).status == "DELIVERED" and journal.verify_trail(mid)


def test_send_round_again_raises_the_generation_only_where_the_message_still_is(journal: Journal) -> None:
    env = make_env()
    journal.accept(env, source="rest", actor="t", route="r")
    journal.mark_published([env.message_id], "relay")
    found = journal.get(env.message_id)
    assert journal.send_round_again(found, "sweeper", {"stuck_for_s": 600})
    rec = journal.get(env.message_id)
    assert (rec.status, rec.generation, rec.replays) == ("ACCEPTED", 1, 0)
    assert journal.trail(env.message_id)[-1].detail == {"stuck_for_s": 600, "from_status": "PUBLISHED",
                                                        "generation": 1}
    assert not journal.send_round_again(found, "sweeper", {})  # it has moved since it was found


def test_messages_by_status_are_streamed_past_any_page_and_counted(journal: Journal) -> None:
    envs = [make_env(str(i)) for i in range(7)]
    for e in envs:
        journal.accept(e, source="rest", actor="t", route="r")
        journal.record(e.message_id, "DEAD", "w", {}, status=Status.DEAD)
    assert list(journal.with_status(Status.DEAD, page=3)) == [e.message_id for e in envs]
    assert journal.count(Status.DEAD) == 7 and journal.count(Status.DELIVERED) == 0


def test_unreachable_database_is_told_apart_from_a_bug(tmp_path) -> None:
    from gateway.journal import unavailable

    gone = Journal("postgresql+psycopg://nobody:x@127.0.0.1:1/none")
    with pytest.raises(Exception) as exc:
        gone.ping()
    assert unavailable(exc.value)
    assert not unavailable(ValueError("a bug"))
    assert not unavailable(sa.exc.IntegrityError("INSERT", {}, Exception("unique")))


def test_accept_many_writes_the_new_together_and_decides_each_repeat_on_its_own(journal: Journal) -> None:
    from gateway.journal.messages import AcceptRequest

    first, rejected, reused = make_env("a"), make_env("b"), make_env("c")
    journal.accept(first, source="rest", actor="t", route="r")
    journal.accept(reused, source="rest", actor="t", route="r")
    journal.reject(Rejection("PAYLOAD_INVALID", "bad", "x", 422), source="rest", sender="lab", env=rejected)
    new = [make_env(str(i)) for i in range(5)]
    side: list[str] = []
    requests = [AcceptRequest(e, "rest", "t", "r", side_writes=[lambda conn, now, m=e.message_id: side.append(m)])
                for e in new]
    requests += [AcceptRequest(make_env("a", mid=first.message_id), "rest", "t", "r"),
                 AcceptRequest(rejected, "rest", "t", "r"),
                 AcceptRequest(make_env("other", mid=reused.message_id), "rest", "t", "r")]
    results = journal.accept_many(requests)
    assert [(r.status, r.duplicate) for r in results[:5]] == [("ACCEPTED", False)] * 5
    assert sorted(side) == sorted(e.message_id for e in new)  # each new message's side write, once
    assert (results[5].status, results[5].duplicate) == ("ACCEPTED", True)
    assert (results[6].status, results[6].duplicate) == ("ACCEPTED", False)  # resubmitted after REJECTED
    assert isinstance(results[7], Rejection) and results[7].code == "MESSAGE_ID_REUSED"
    for e in new:
        assert journal.verify_trail(e.message_id) and [x.kind for x in journal.trail(e.message_id)] == ["ACCEPTED"]


def test_a_batch_that_hits_a_constraint_keeps_nothing_and_is_decided_one_by_one(journal: Journal) -> None:
    from gateway.journal.messages import AcceptRequest
    from gateway.journal.tables import rejections

    def conflicting(conn, now) -> None:
        conn.execute(sa.insert(rejections).values(id=1, at=now, source="x", code="X", detail="d"))

    envs = [make_env(str(i)) for i in range(3)]
    results = journal.accept_many([AcceptRequest(e, "rest", "t", "r", side_writes=[conflicting]) for e in envs])
    # The batch failed on the second side write's key; alone, the first keeps id 1 and the others conflict.
    assert [type(r).__name__ for r in results] == ["AcceptOutcome", "Rejection", "Rejection"]
    assert [r.code for r in results[1:]] == ["ACCEPT_CONFLICT", "ACCEPT_CONFLICT"]
    assert journal.get(envs[0].message_id) is not None and journal.get(envs[1].message_id) is None


def test_group_commit_under_concurrency_accepts_each_message_once(journal: Journal) -> None:
    import threading

    from gateway.journal.group_commit import GroupAccept
    from gateway.journal.messages import AcceptRequest

    group = GroupAccept(journal, max_batch=16)
    envs = [make_env(str(i)) for i in range(40)]
    outcomes: list = []
    lock = threading.Lock()

    def send(env) -> None:
        for _ in range(2):  # every message twice, from two threads at once
            out = group.accept(AcceptRequest(env, "rest", "t", "r"))
            with lock:
                outcomes.append((env.message_id, out.duplicate))

    threads = [threading.Thread(target=send, args=(e,)) for e in envs for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    group.close()
    firsts = [mid for mid, dup in outcomes if not dup]
    assert sorted(firsts) == sorted(e.message_id for e in envs)  # exactly one first acceptance each
    assert len(outcomes) == 4 * len(envs)
    for e in envs:
        kinds = [x.kind for x in journal.trail(e.message_id)]
        assert kinds.count("ACCEPTED") == 1 and kinds.count("DUPLICATE_RECEIVED") == 3


def test_a_commit_is_on_disk_before_the_answer(journal: Journal) -> None:
    with journal.engine.connect() as conn:
        if journal.engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        else:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
