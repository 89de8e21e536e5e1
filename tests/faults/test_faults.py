"""The fault suite: under steady load, each fault of issue 13, and not one accepted message lost.

Real processes, a RabbitMQ node of the suite's own and the real PostgreSQL, each reached
through a TCP proxy the scenario cuts; the recipient is a real HTTP server behind its
own proxy. ``scripts/test -m faults`` runs this alone (about 12 minutes here);
``-m "not faults"`` leaves it out. ``bench/bench_faults.py`` runs the same scenarios and
prints the table in docs/RELIABILITY.md.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_URL
from tests.support.faults import HEADER, SCENARIOS, Bench, Scenario, run

pytestmark = [pytest.mark.faults, pytest.mark.broker, pytest.mark.postgres, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    b = Bench(tmp_path_factory.mktemp("faults"), PG_URL)
    print("\n" + HEADER)
    yield b
    b.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_nothing_accepted_is_lost_and_nothing_dies_by_mistake(bench: Bench, scenario: Scenario,
                                                              tmp_path: Path) -> None:
    result = run(bench, scenario, tmp_path / "gw")
    print(result.row())
    assert result.accepted >= scenario.count, result
    assert result.lost == 0, result.notes[:10]
    assert not [n for n in result.notes if n.startswith("unexpected answer")], result.notes
    assert result.dead == scenario.expect_dead, result.notes
    assert result.dead_without_reason == 0
    assert result.foreign_keys == 0  # every repeat the recipient saw carried its message's own key
    assert result.missing_stages == 0, result.notes  # every delivered message's trail shows every stage
    assert result.journal_check_ok and result.broken_trails == 0, result.journal_check
