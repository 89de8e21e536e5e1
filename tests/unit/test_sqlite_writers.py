"""SQLite writers queue on ``<database>-writers``: held from a transaction's first write to its end."""
from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.journal.engine import make_engine
from gateway.journal.sqlite_writers import QueuedWriterConnection, lock_path


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'j.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    yield engine
    engine.dispose()


def queue_taken(tmp_path: Path) -> bool:
    """Is another connection holding the writers' lock? (Asked without waiting.)"""
    fd = os.open(tmp_path / "j.db-writers", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_journals_sqlite_connections_queue_their_writers(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert isinstance(conn.connection.dbapi_connection, QueuedWriterConnection)
    assert lock_path("/var/lib/zl/journal.db") == "/var/lib/zl/journal.db-writers"
    assert lock_path(":memory:") is None and lock_path("") is None


def test_held_from_the_first_write_to_the_commit_and_never_by_a_reader(engine: sa.Engine, tmp_path: Path) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT count(*) FROM t")).scalar()
        assert not queue_taken(tmp_path)
        conn.execute(sa.text("INSERT INTO t (k, v) VALUES (1, 'a')"))
        assert queue_taken(tmp_path)
        conn.execute(sa.text("UPDATE t SET v = 'b' WHERE k = 1"))  # the same transaction: no second take
        conn.commit()
        assert not queue_taken(tmp_path)


def test_released_by_a_rollback_after_a_failed_write(engine: sa.Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t (k, v) VALUES (1, 'a')"))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t (k, v) VALUES (1, 'again')"))
    assert not queue_taken(tmp_path)


def test_a_second_writer_waits_for_the_first_ones_commit(engine: sa.Engine) -> None:
    order: list[str] = []
    first = engine.connect()
    first.execute(sa.text("INSERT INTO t (k, v) VALUES (1, 'first')"))
    started = threading.Event()

    def second() -> None:
        with engine.begin() as conn:
            started.set()
            conn.execute(sa.text("INSERT INTO t (k, v) VALUES (2, 'second')"))
            order.append("second wrote")

    thread = threading.Thread(target=second)
    thread.start()
    started.wait(5)
    order.append("first commits")
    first.commit()
    first.close()
    thread.join(10)
    assert order == ["first commits", "second wrote"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT v FROM t ORDER BY k")).scalars().all() == ["first", "second"]


def test_a_writer_killed_while_holding_the_queue_does_not_stop_the_others(engine: sa.Engine, tmp_path: Path) -> None:
    """The kernel drops a dead process's flock with its file descriptors: SIGKILL mid-transaction."""
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, sqlalchemy as sa\n"
         "from gateway.journal.engine import make_engine\n"
         f"conn = make_engine({str(engine.url)!r}).connect()\n"
         "conn.execute(sa.text(\"INSERT INTO t (k, v) VALUES (9, 'never committed')\"))\n"
         "print('held', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert queue_taken(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert not queue_taken(tmp_path)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t (k, v) VALUES (1, 'after')"))
        assert conn.execute(sa.text("SELECT v FROM t ORDER BY k")).scalars().all() == ["after"]
