"""`zdravlink journal prune` killed with SIGKILL in the middle of its chunks, three times, then let finish.

Each kill lands while the run archives its k-th chunk (or just after): nothing may be lost and
nothing removed without a listed archive. Afterwards every message the rules let go is gone,
each is in exactly one archive the runs' records list, the archive chain over all runs (the
killed ones too) recomputes, no ``.partial`` file is left, and the journal's chain verifies.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.envelope import Envelope
from gateway.evidence.retention import GENESIS
from gateway.evidence.sealer import Sealer
from gateway.evidence.verify import verify_journal
from gateway.journal import Journal, Status
from gateway.journal.tables import messages, prune_runs
from gateway.xmlsafe import parse_xml
from tests.support import configs

pytestmark = pytest.mark.faults  # SIGKILLs the pruner: run with the fault scenarios, alone
REPO = Path(__file__).resolve().parents[2]
COUNT = 400
CHUNK = 25


def fill(journal: Journal) -> None:
    payload = parse_xml(f'<n:Notice xmlns:n="{configs.NOTICE_NS}"><n:Code>X</n:Code></n:Notice>'.encode())
    for _ in range(COUNT):
        env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic",
                       message_type=configs.NOTICE_NS, payload=payload)
        journal.accept(env, source="rest", actor="api", route="lab-to-clinic")
        journal.record(env.message_id, "DELIVERED", "w", {}, status=Status.DELIVERED)
    Sealer(journal).seal_once()


def prune(config: Path, db_url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "application.cli", "journal", "prune", "--config", str(config),
                             *extra], cwd=REPO, env={**os.environ, "ZL_DATABASE_URL": db_url},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_at_chunk(proc: subprocess.Popen[bytes], archives: Path, k: int) -> None:
    """SIGKILL ``proc`` as soon as its ``k``-th archive of this run shows (still ``.partial`` or complete)."""
    seen = {p.name.removesuffix(".partial") for p in archives.glob("*")} if archives.exists() else set()
    new: set[str] = set()
    deadline = time.monotonic() + 120
    while len(new) < k:
        assert proc.poll() is None, f"the run ended before its chunk {k}: {proc.stdout.read().decode()[-2000:]}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no archive appeared"
        if archives.exists():
            new = {p.name.removesuffix(".partial") for p in archives.glob("*")} - seen
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_a_pruner_killed_mid_chunk_loses_nothing_and_lists_all_it_removed(db_url: str, tmp_path: Path) -> None:
    journal = Journal(db_url)
    journal.migrate()
    fill(journal)
    archives = tmp_path / "archives"
    config = tmp_path / "config"
    config.mkdir()
    (config / "participants.yaml").write_text(configs.participants("http://127.0.0.1:9/"))
    (config / "routes.yaml").write_text(configs.routes())
    (config / "gateway.yaml").write_text(configs.settings() + (
        f'retention: {{default_days: 0.00001, chunk: {CHUNK}, archive_dir: "{archives}", share: 0.5}}\n'))
    time.sleep(1.0)  # 0.00001 days: every message is due

    for k in (1, 2, 3):
        kill_at_chunk(prune(config, db_url), archives, k)
    final = prune(config, db_url, "--share", "1")
    out = final.communicate(timeout=120)[0].decode()
    assert final.returncode == 0, out

    with journal.engine.connect() as conn:
        left = conn.execute(sa.select(messages.c.message_id)).scalars().all()
        runs = conn.execute(sa.select(prune_runs).order_by(prune_runs.c.id)).all()
    assert len(left) == 1  # the newest event's message stays (pruning it would hand its id out again)
    assert len(runs) == 4 and [r.finished_at is None for r in runs] == [True, True, True, False]
    assert runs[1].messages >= CHUNK and runs[2].messages >= 2 * CHUNK  # the killed runs did remove chunks
    assert not list(archives.glob("*.partial"))

    # Every removed message is in exactly one listed archive, whose digest is the file's; the chain recomputes.
    removed: list[str] = []
    chain = GENESIS
    for run in runs:
        listed = json.loads(run.archives)
        digest = hashlib.sha256(chain.encode("ascii"))
        for archive in listed:
            data = (archives / archive["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == archive["sha256"]
            digest.update(archive["sha256"].encode("ascii"))
            with zipfile.ZipFile(archives / archive["file"]) as z:
                removed += json.loads(z.read("manifest.json"))["messages"]
        assert (run.chain is None) == (not listed)
        if listed:
            assert run.chain == digest.hexdigest()
            chain = run.chain
        assert run.messages == sum(a["messages"] for a in listed)
    assert len(removed) == len(set(removed)) == COUNT - 1
    assert set(left).isdisjoint(removed)

    report = verify_journal(journal, trust=None, tsa_trust=None)
    assert report.ok, [f.line() for f in report.broken]
    journal.engine.dispose()
