"""Two `zdravlink journal prune` at once: the second is refused while the first runs, and may start the
moment the first is killed. Two runs side by side would both chain on the same previous run (a fork in
the archive chain) and archive the same messages twice."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from gateway.envelope import Envelope
from gateway.evidence.retention import GENESIS
from gateway.evidence.sealer import Sealer
from gateway.evidence.verify import verify_journal
from gateway.journal import Journal, Status
from gateway.journal.tables import prune_runs
from gateway.xmlsafe import parse_xml
from tests.support import configs
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


def prune(config: Path, db_url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "application.cli", "journal", "prune", "--config", str(config),
                             *extra],
                            cwd=REPO, env={**os.environ, "ZL_DATABASE_URL": db_url}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_second_prune_run_is_refused_while_one_runs_and_starts_once_that_one_is_killed(db_url: str,
                                                                                          tmp_path: Path) -> None:
    journal = Journal(db_url)
    payload = parse_xml(f'<n:Notice xmlns:n="{configs.NOTICE_NS}"><n:Code>X</n:Code></n:Notice>'.encode())
    for _ in range(60):
        env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic",
                       message_type=configs.NOTICE_NS, payload=payload)
        journal.accept(env, source="rest", actor="api", route="lab-to-clinic")
        journal.record(env.message_id, "DELIVERED", "w", {}, status=Status.DELIVERED)
    Sealer(journal).seal_once()
    archives, config = tmp_path / "archives", tmp_path / "config"
    config.mkdir()
    (config / "participants.yaml").write_text(configs.participants("http://127.0.0.1:9/"))
    (config / "routes.yaml").write_text(configs.routes())
    (config / "gateway.yaml").write_text(configs.settings() + (  # share 0.01: a long rest after each chunk
        f'retention: {{default_days: 0.00001, chunk: 20, archive_dir: "{archives}", share: 0.01}}\n'))
    time.sleep(1.0)  # 0.00001 days: every message is due

    first = prune(config, db_url)
    try:
        wait_for(lambda: archives.exists() and any(archives.glob("*.zip")), timeout=60, what="the first chunk")
        second = prune(config, db_url)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1, out + err
        assert "a prune run is under way" in err and "Traceback" not in err, err
        assert first.poll() is None  # still resting after its first chunk
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    third = prune(config, db_url, "--share", "1")  # at once: the lock went with the killed run
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, out + err

    with journal.engine.connect() as conn:
        runs = conn.execute(sa.select(prune_runs).order_by(prune_runs.c.id)).all()
    assert len(runs) == 2 and runs[0].finished_at is None and runs[1].finished_at is not None
    chain = GENESIS
    for run in runs:  # one chain over both runs: the third went on from what the killed one listed
        digest = hashlib.sha256(chain.encode("ascii"))
        for archive in json.loads(run.archives):
            digest.update(archive["sha256"].encode("ascii"))
        assert run.chain == digest.hexdigest()
        chain = run.chain
    assert runs[0].messages >= 20 and runs[0].messages + runs[1].messages == 59  # the newest event's stays
    assert verify_journal(journal, trust=None, tsa_trust=None).ok
    journal.engine.dispose()
