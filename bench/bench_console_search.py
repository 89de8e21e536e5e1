"""The console's search on a journal of a million messages: time per page, query and whole page.

Loads ``--count`` messages with their trails into a PostgreSQL database of its own
(``bench/journal_loader.py``; kept between runs with ``--keep``, reused when it already
holds that many), then, for each search an operator makes, times:

- **query**: one page of 50 (``gateway.journal.search.search``) plus the capped count
  (``count_upto``), which is what the journal does for a page;
- **page**: ``GET /console/messages?…`` through the console itself (session check,
  query, count, template), in process, without a browser.

Each figure is the median and the 95th percentile of ``--runs`` repetitions, after one
warm-up. Deep pages use the keyset cursor an operator gets by pressing "next" 200 times.

    .venv/bin/python bench/bench_console_search.py --count 1000000 --keep
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from journal_loader import CLINICS, LAB_RESULT, LABS, load, write_config

from gateway.journal import Journal, utcnow
from gateway.journal import search as s

PG = "postgresql+psycopg://zdravlink:zdravlink@127.0.0.1:5432/zdravlink"
DATABASE = "zl_bench_console_search"


def _database(count: int) -> str:
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    url = PG.rsplit("/", 1)[0] + "/" + DATABASE
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": DATABASE}).scalar()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
    admin.dispose()
    return _loaded(url, count)


def _loaded(url: str, count: int) -> str:
    """``url`` holding at least ``count`` messages, loading what is missing."""
    journal = Journal(url)
    journal.migrate()
    have = s.journal_size(journal)["messages"]
    journal.engine.dispose()
    if have < count:
        print(f"loading {count - have:,} messages into {DATABASE} (has {have:,})", file=sys.stderr)
        done = load(url, count - have, seed=have + 17)
        print(f"loaded in {done['seconds']:.0f} s ({done['messages'] / done['seconds']:,.0f} messages/s, "
              f"{done['events']:,} events)", file=sys.stderr)
    return url


def _drop() -> None:
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
    admin.dispose()


def _time(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()
    took = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        took.append((time.perf_counter() - t) * 1000)
    took.sort()
    return statistics.median(took), took[min(len(took) - 1, int(len(took) * 0.95))]


def _console(url: str, config_dir: Path):
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    from adapters.console.operators import add_operator, load_operators
    from adapters.console.web import Console
    from gateway.config import load_config

    write_config(config_dir)
    (config_dir / "gateway.yaml").write_text(f'database: {{url: "{url}"}}\n'
                                             'broker: {url: "amqp://guest:guest@127.0.0.1:9/%2F"}\n')
    add_operator(config_dir, "bench", "viewer", "bench-password")
    text = (config_dir / "operators.yaml").read_text().split("\n", 1)[1]
    (config_dir / "operators.yaml").write_text("console: {secure_cookies: false}\n" + text)
    app = FastAPI()
    Console(load_config(config_dir), Journal(url), load_operators(config_dir), {}).mount(app)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = TestClient(app, client=("127.0.0.1", 5000))
    client.get("/console/login")
    client.post("/console/login", data={"name": "bench", "password": "bench-password",
                                        "csrf": client.cookies.get("zl_login_csrf")})
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the loaded database for the next run")
    parser.add_argument("--url", help="a journal of your own instead (e.g. sqlite:///var/bench.db), loaded up to "
                                      "--count if it holds fewer")
    args = parser.parse_args()
    url = _database(args.count) if args.url is None else _loaded(args.url, args.count)
    journal = Journal(url)
    size = s.journal_size(journal)
    print(f"journal: {size['messages']:,} messages, {size['events']:,} events, {size['bytes'] / 2 ** 30:.1f} GiB "
          f"({journal.engine.dialect.name})\n")
    now = utcnow()
    a_dead = s.search(journal, s.MessageFilter(statuses=("DEAD",)), limit=1).rows[0]
    a_result = journal.engine.connect().execute(sa.text("SELECT result_id FROM result_versions LIMIT 1 OFFSET 5000")
                                                ).scalar()
    deep = None
    for _ in range(200):
        deep = s.search(journal, s.MessageFilter(), cursor=deep, limit=50).next_cursor
    cases: list[tuple[str, s.MessageFilter, str | None, dict[str, str]]] = [
        ("everything, newest first", s.MessageFilter(), None, {}),
        ("everything, page 201", s.MessageFilter(), deep, {"after": deep or ""}),
        ("by MessageID", s.MessageFilter(message_id=a_dead.message_id), None, {"message_id": a_dead.message_id}),
        ("sender (a lab)", s.MessageFilter(sender=LABS[0]), None, {"sender": LABS[0]}),
        ("recipient (a clinic)", s.MessageFilter(recipient=CLINICS[3]), None, {"recipient": CLINICS[3]}),
        ("message type", s.MessageFilter(message_type=LAB_RESULT), None, {"message_type": LAB_RESULT}),
        ("route", s.MessageFilter(route="service-records"), None, {"route": "service-records"}),
        ("status DEAD", s.MessageFilter(statuses=("DEAD",)), None, {"status": "DEAD"}),
        ("status DELIVERED, oldest first", s.MessageFilter(statuses=("DELIVERED",)), None,
         {"status": "DELIVERED", "order": "oldest"}),
        ("sender + status DEAD", s.MessageFilter(sender=LABS[1], statuses=("DEAD",)), None,
         {"sender": LABS[1], "status": "DEAD"}),
        ("recipient + last 24 h", s.MessageFilter(recipient=CLINICS[0], since=now - timedelta(days=1)), None,
         {"recipient": CLINICS[0], "since": (now - timedelta(days=1)).isoformat(timespec="minutes")}),
        ("a day a week ago", s.MessageFilter(since=now - timedelta(days=8), until=now - timedelta(days=7)), None,
         {"since": (now - timedelta(days=8)).date().isoformat(), "until": (now - timedelta(days=7)).date().isoformat()}),
        ("lab ResultId", s.MessageFilter(result_id=a_result), None, {"result_id": a_result}),
        ("dead letters: reason contains 'HTTP 400'", s.dead_letters(reason="HTTP 400"), None, {}),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        client = _console(url, Path(tmp))
        print(f"{'search':<44} {'query ms (median / p95)':>24} {'page ms (median / p95)':>24}")
        for name, f, cursor, query in cases:
            q_med, q_p95 = _time(lambda: (s.search(journal, f, cursor=cursor, limit=50), s.count_upto(journal, f)),
                                 args.runs)
            path = "/console/dead?" + urlencode({"reason": "HTTP 400"}) if name.startswith("dead") else \
                "/console/messages?" + urlencode(query)
            r = client.get(path)
            assert r.status_code == 200, (path, r.text[:300])
            p_med, p_p95 = _time(lambda: client.get(path), args.runs)
            print(f"{name:<44} {q_med:>11.1f} / {q_p95:>8.1f} {p_med:>13.1f} / {p_p95:>8.1f}")
        for name, f in (("replay preview: every dead letter", s.dead_letters()),
                        ("replay preview: dead, a route, 'HTTP 400'", s.dead_letters("HTTP 400", route="lab-results"))):
            q_med, q_p95 = _time(lambda: s.preview(journal, f), args.runs)
            print(f"{name:<44} {q_med:>11.1f} / {q_p95:>8.1f}")
    journal.engine.dispose()
    if not args.keep and args.url is None:
        _drop()


if __name__ == "__main__":
    main()
