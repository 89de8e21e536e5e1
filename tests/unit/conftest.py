"""Fixtures the journal's unit tests share: a migrated journal on each database, the demo TSA."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.emulators.tsa import TsaServer
from gateway.journal import Journal


@pytest.fixture
def journal(db_url: str) -> Iterator[Journal]:
    """A migrated journal on SQLite and on PostgreSQL (``db_url``); a module may define its own."""
    j = Journal(db_url)
    j.migrate()
    yield j
    j.engine.dispose()


@pytest.fixture(scope="module")
def tsa(demo_keys: Path) -> Iterator[TsaServer]:
    server = TsaServer(demo_keys).start()
    yield server
    server.stop()
