"""The journal's search: a loaded journal's trails verify, filters select what they say, plans use the indexes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.journal import Journal
from gateway.journal import search as s

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from journal_loader import CLINICS, LABS, load

# One worker runs the module: its tests share one journal of 3,000 loaded messages.
pytestmark = pytest.mark.xdist_group("search")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Journal:
    url = f"sqlite:///{tmp_path_factory.mktemp('search') / 'j.db'}"
    load(url, 3000, progress=False)
    return Journal(url)


def test_the_loader_writes_trails_that_verify_and_the_statuses_it_promises(loaded: Journal) -> None:
    assert list(loaded.broken_trails()) == []
    dead = s.search(loaded, s.MessageFilter(statuses=("DEAD",)), limit=1000).rows
    assert dead and all(r.last_error for r in dead)
    assert all(loaded.trail(r.message_id)[-1].kind == "DEAD" for r in dead[:20])
    assert s.journal_size(loaded)["messages"] == 3000


def test_filters_select_what_they_say_and_pages_do_not_overlap(loaded: Journal) -> None:
    f = s.MessageFilter(sender=LABS[0], recipient=CLINICS[1])
    seen: list[str] = []
    cursor = None
    while True:
        page = s.search(loaded, f, cursor=cursor, limit=7)
        assert all(r.sender == LABS[0] and r.recipient == CLINICS[1] for r in page.rows)
        seen += [r.message_id for r in page.rows]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == s.count_upto(loaded, f)[0] > 7
    times = [r.created_at for r in s.iterate(loaded, f)]
    assert times == sorted(times, reverse=True)
    reason = s.dead_letters(reason="HTTP 400")
    assert all("HTTP 400" in (r.last_error or "") for r in s.iterate(loaded, reason))
    assert sum(s.preview(loaded, reason).values()) == s.count_upto(loaded, reason)[0]


def test_a_rare_status_leads_sqlites_plan_through_the_status_index(loaded: Journal) -> None:
    """Without the lead SQLite walks a sender's whole history for its few DEAD messages (docs/PERFORMANCE.md)."""
    f = s.MessageFilter(sender=LABS[0], statuses=("DEAD",))
    query = s._keyset(select(*s._ROW).where(*s._where(loaded, f)), True, None).limit(51)
    sql = str(query.compile(loaded.engine, compile_kwargs={"literal_binds": True}))
    with loaded.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    assert "ix_messages_status_created" in plan, plan
    common = s.MessageFilter(sender=LABS[0], statuses=("DELIVERED",))
    assert "||" not in str(select(*s._ROW).where(*s._where(loaded, common)))  # the common status keeps its index
