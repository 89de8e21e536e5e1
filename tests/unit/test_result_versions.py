"""Versions of lab results per order: one message may carry several orders, each with its own history."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from alembic import command

from gateway.journal import Journal
from gateway.journal.migrate import alembic_config, upgrade
from gateway.journal.results import ResultVersions
from gateway.journal.tables import result_versions
from tests.unit.test_journal import make_env


def test_one_message_remembers_each_of_its_orders_with_its_acceptance(db_url: str) -> None:
    journal = Journal(db_url)
    journal.migrate()
    versions = ResultVersions(journal)
    first, second = make_env("v1"), make_env("v2")
    journal.accept(first, source="hl7", actor="t", route="r", side_writes=[versions.remember_write(
        first.message_id, [("lab:CBC", "P"), ("lab:RENAL", "P"), ("lab:RENAL", "F")])])  # named twice: kept once
    journal.accept(second, source="hl7", actor="t", route="r",
                   side_writes=[versions.remember_write(second.message_id, [("lab:RENAL", "C")])])
    again = journal.accept(make_env("v2", mid=second.message_id), source="hl7", actor="t", route="r",
                           side_writes=[versions.remember_write(second.message_id, [("lab:RENAL", "C")])])
    assert again.duplicate  # a repeat writes nothing again
    assert versions.latest("lab:CBC", other_than=second.message_id) == first.message_id
    assert versions.latest("lab:RENAL", other_than=second.message_id) == first.message_id
    assert versions.latest("lab:RENAL", other_than=first.message_id) == second.message_id
    with journal.engine.connect() as conn:
        rows = conn.execute(sa.select(result_versions.c.result_id, result_versions.c.status)
                            .where(result_versions.c.message_id == first.message_id)
                            .order_by(result_versions.c.result_id)).all()
    assert [tuple(r) for r in rows] == [("lab:CBC", "P"), ("lab:RENAL", "P")]
    journal.engine.dispose()


def test_a_result_whose_versions_cannot_be_written_is_not_accepted(db_url: str) -> None:
    """Written after the accept, a failure between the two left an accepted result no correction could name."""
    journal = Journal(db_url)
    journal.migrate()
    versions = ResultVersions(journal)
    env = make_env("v1")

    def refuse(conn, cursor, statement: str, *_: object) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO result_versions"):
            raise RuntimeError("the database refused the versions")

    sa.event.listen(journal.engine, "before_cursor_execute", refuse)
    try:
        with pytest.raises(RuntimeError):
            journal.accept(env, source="hl7", actor="t", route="r",
                           side_writes=[versions.remember_write(env.message_id, [("lab:CBC", "P")])])
    finally:
        sa.event.remove(journal.engine, "before_cursor_execute", refuse)
    assert journal.get(env.message_id) is None, "the lab got no AA, so it resends, and the resend is not a repeat"
    journal.accept(env, source="hl7", actor="t", route="r",
                   side_writes=[versions.remember_write(env.message_id, [("lab:CBC", "P")])])
    assert versions.latest("lab:CBC", other_than="") == env.message_id
    journal.engine.dispose()


def test_migration_0008_keeps_the_rows_and_goes_back(empty_db_url: str) -> None:
    engine = sa.create_engine(empty_db_url)
    upgrade(engine, "0006")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO messages (message_id, sender, recipient, message_type, route, status, fingerprint, source, "
            "envelope, created_at, updated_at, attempts, replays) VALUES ('m1', 'a', 'b', 't', 'r', 'ACCEPTED', 'f', "
            "'s', '<x/>', :n, :n, 0, 0)"), {"n": now})
        conn.execute(sa.text("INSERT INTO result_versions VALUES ('m1', 'lab:A', 'F', :n)"), {"n": now})
    upgrade(engine, "0008")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO result_versions VALUES ('m1', 'lab:B', 'P', :n)"), {"n": now})
        rows = conn.execute(sa.text("SELECT result_id, status FROM result_versions ORDER BY result_id")).all()
    assert [tuple(r) for r in rows] == [("lab:A", "F"), ("lab:B", "P")]
    command.downgrade(alembic_config(engine), "0006")
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT message_id, result_id FROM result_versions")).all()
    assert [tuple(r) for r in rows] == [("m1", "lab:A")]
    engine.dispose()
