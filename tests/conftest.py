"""Shared fixtures: journal URLs for SQLite and PostgreSQL, and a whole running gateway.

``scripts/test`` starts RabbitMQ and PostgreSQL and exports their URLs; tests that need
them fail loudly, never skip, when they are not there.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway_proc import GatewayProcesses
from tests.support.ports import free_port
from tests.support.rabbit_node import RabbitNode

AMQP_URL = os.environ.get("ZL_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PG_URL = os.environ.get("ZL_TEST_PG_URL", "postgresql+psycopg://zdravlink:zdravlink@127.0.0.1:5432/zdravlink")


@pytest.fixture(scope="session")
def demo_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo CA and a key and certificate of every type for the test participants and the gateway.

    Layout: ``<dir>/<name>-<type>.key|.pem`` for names gateway, lab, clinic, insurer and types
    gost2012-256, gost2012-512, rsa; ``<dir>/trust/`` (CA certificate and CRL); ``<dir>/ca/``.
    """
    from demo.ca import KEY_TYPES, create_demo_keys

    out = tmp_path_factory.mktemp("keys")
    create_demo_keys(out, ["gateway", "lab", "clinic", "insurer"], KEY_TYPES)
    return out


@pytest.fixture(scope="session")
def registry_keys(demo_keys: Path) -> Path:
    """demo_keys with GOST and RSA keys for the registries ``frmr`` and ``frmo``, and for ``other``,
    someone the gateway trusts (same CA) but who is not a registry."""
    from demo.ca import create_demo_keys

    create_demo_keys(demo_keys, ["frmr", "frmo", "other"], ("gost2012-256", "rsa"))
    return demo_keys


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return AMQP_URL


@pytest.fixture
def private_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this test's own, for tests that stop or cut the broker."""
    from tests.support.rabbit_node import RabbitNode

    node = RabbitNode(tmp_path_factory.mktemp("rabbit"), free_port())
    node.start()
    try:
        yield node
    finally:
        node.remove()


def create_database(admin, name: str, template: str = "template1") -> None:
    """CREATE DATABASE copies a template and fails while another session is creating one from it at the
    same moment ("source database template1 is being accessed by other users"): wait and try again."""
    import time

    import sqlalchemy as sa

    for attempt in range(10):
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
            return
        except sa.exc.OperationalError as exc:
            if "being accessed by other users" not in str(exc) or attempt == 9:
                raise
            time.sleep(0.3 * (attempt + 1))


def drop_database(admin, name: str) -> None:
    """Drop a test database with whatever of ours is still connected to it. Only our own sessions are
    terminated: an autovacuum worker in it belongs to the superuser, and terminating it is refused
    (DROP DATABASE stops autovacuum itself)."""
    import sqlalchemy as sa

    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = :name AND usename = current_user AND pid <> pg_backend_pid()"),
                     {"name": name})
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))


def _pg_database(base_url: str, template: str = "template1") -> Iterator[str]:
    import sqlalchemy as sa

    name = f"zl_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    create_database(admin, name, template)
    try:
        yield base_url.rsplit("/", 1)[0] + "/" + name
    finally:
        drop_database(admin, name)
        admin.dispose()


class JournalTemplates:
    """A journal at the newest schema, made once per xdist worker on each database; a test's journal is a copy.

    Each of the 155 tests on PostgreSQL spent 0.3-0.5 s creating a database from template1 and migrating it,
    and workers creating theirs at the same moment waited on each other. Migrating from empty is still
    done here, once per worker and database, and by the migration tests (``empty_db_url``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sqlite: Path | None = None
        self._postgres: Iterator[str] | None = None
        self._postgres_name = ""

    def sqlite(self, target: Path) -> str:
        import sqlite3

        from gateway.journal import Journal

        if self._sqlite is None:
            template = self.directory / "template.db"
            journal = Journal(f"sqlite:///{template}")
            journal.migrate()
            journal.engine.dispose()
            self._sqlite = template
        with sqlite3.connect(self._sqlite) as source, sqlite3.connect(target) as copy:
            source.backup(copy)  # the backup API: a consistent copy whatever the WAL holds
        return f"sqlite:///{target}"

    def postgres(self) -> Iterator[str]:
        from gateway.journal import Journal

        if self._postgres is None:
            self._postgres = _pg_database(PG_URL)
            url = next(self._postgres)
            journal = Journal(url)
            journal.migrate()
            journal.engine.dispose()  # a template with a session open cannot be copied
            self._postgres_name = url.rsplit("/", 1)[1]
        yield from _pg_database(PG_URL, self._postgres_name)

    def drop(self) -> None:
        if self._postgres is not None:
            self._postgres.close()  # _pg_database's finally: the template is dropped


@pytest.fixture(scope="session")
def journal_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JournalTemplates]:
    templates = JournalTemplates(tmp_path_factory.mktemp("journal-templates"))
    yield templates
    templates.drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, journal_templates: JournalTemplates) -> Iterator[str]:
    """A fresh journal database at the newest schema: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        yield journal_templates.sqlite(tmp_path / "journal.db")
    else:
        yield from journal_templates.postgres()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database, for the tests of the migrations themselves: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'journal.db'}"
    else:
        yield from _pg_database(PG_URL)


def module_gateway(directory: Path, participants: str, routes: str, *, settings: str, amqp_url: str,
                   mllp: bool = False, **options: Any) -> Iterator[GatewayProcesses]:
    """A started gateway for a module-scoped fixture to ``yield from``, stopped at the module's end: a module
    whose tests share one configuration shares one gateway (``gateway_factory`` starts one per test).
    ``options`` go to ``GatewayProcesses`` (``mappings``, ``delivery_workers`` …)."""
    options.setdefault("db_url", None)
    options.setdefault("delivery_workers", 1)
    gateway = GatewayProcesses(directory, participants, routes, settings=settings, amqp_url=amqp_url,
                               api_port=free_port(), mllp_port=free_port() if mllp else None, **options)
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path, amqp_url: str) -> Iterator:
    """Start a whole gateway (API, router, delivery) as real processes on a config written by the test."""
    started: list[GatewayProcesses] = []

    def make(participants: str, routes: str, *, db_url: str | None = None, settings: str = "",
             delivery_workers: int = 1, mappings: Path | None = None,
             tariffs: Path | None = None, oms: Path | None = None,
             broker_url: str | None = None, files: dict[str, str] | None = None,
             reconciler: bool = False) -> GatewayProcesses:
        gw = GatewayProcesses(
            tmp_path / f"gw{len(started)}", participants, routes, settings=settings,
            amqp_url=broker_url or amqp_url,
            db_url=db_url, api_port=free_port(), delivery_workers=delivery_workers, mappings=mappings,
            mllp_port=free_port() if mappings is not None else None, tariffs=tariffs, oms=oms, files=files,
            reconciler=reconciler,
        )
        started.append(gw)
        gw.start()
        return gw

    yield make
    for gw in started:
        gw.stop()
