"""Versions of lab results per order: one message may carry several orders, each with its own history."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import command

from gateway.journal import Journal
from gateway.journal.migrate import alembic_config, upgrade
from gateway.journal.results import ResultVersions
from tests.unit.test_journal import make_env


def test_one_message_remembers_each_of_its_orders(db_url: str) -> None:
    journal = Journal(db_url)
    journal.migrate()
    versions = ResultVersions(journal)
    first, second = make_env("v1"), make_env("v2")
    for env in (first, second):
        journal.accept(env, source="hl7", actor="t", route="r")
    versions.remember("lab:CBC", first.message_id, "P")
    versions.remember("lab:RENAL", first.message_id, "P")
    versions.remember("lab:RENAL", first.message_id, "P")  # a repeat changes nothing
    versions.remember("lab:RENAL", second.message_id, "C")
    assert versions.latest("lab:CBC", other_than=second.message_id) == first.message_id
    assert versions.latest("lab:RENAL", other_than=second.message_id) == first.message_id
    assert versions.latest("lab:RENAL", other_than=first.message_id) == second.message_id
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
