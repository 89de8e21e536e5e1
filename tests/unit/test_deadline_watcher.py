"""The deadline watcher when the gateway's own pipeline refuses a TIMEOUT: tried at every poll, logged once.

The journal and the correlation store are real (SQLite and PostgreSQL); the reply sender stands in for the
intake, refusing as a missing answer route would, then accepting once "the route is mended".
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from types import SimpleNamespace

import pytest
from lxml import etree

from adapters.registries.deadlines import DeadlineWatcher
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal
from gateway.journal.correlation import RegistryRequests
from gateway.xmlsafe import parse_xml

WORKER_NS = "urn://zdravlink/types/worker-verification/1.0"


class Replies:
    """Refuses the TIMEOUT ``refusals`` times (no answer route), then takes it as the real sender does."""

    def __init__(self, requests: RegistryRequests, refusals: int) -> None:
        self.requests = requests
        self.refusals = refusals
        self.sent: list[str] = []

    def timeout(self, request: Envelope, timeout_id: str, payload: etree._Element, reason: str) -> None:
        if self.refusals:
            self.refusals -= 1
            raise Rejection("NO_ROUTE", f"no route from frmr to clinic for {WORKER_NS}", status=422)
        self.sent.append(timeout_id)
        self.requests.timed_out(request.message_id)



def test_a_refused_timeout_is_tried_at_every_poll_and_logged_once(journal: Journal,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    requests = RegistryRequests(journal)
    payload = parse_xml(f'<wv:WorkerVerificationRequest xmlns:wv="{WORKER_NS}"><wv:SNILS>11223344595</wv:SNILS>'
                        '</wv:WorkerVerificationRequest>'.encode())
    env = Envelope(message_id=str(uuid.uuid1()), sender="clinic", recipient="frmr", message_type=WORKER_NS,
                   payload=payload)
    journal.accept(env, source="rest", actor="t", route="r",
                   side_writes=[requests.open_write(env.message_id, "clinic", "frmr", WORKER_NS, 1.0)])
    replies = Replies(requests, refusals=3)
    watcher = DeadlineWatcher(SimpleNamespace(participants={}), journal, replies)  # type: ignore[arg-type]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    with caplog.at_level(logging.INFO, logger="adapters.registries.deadlines"):
        assert [watcher.run_once(later) for _ in range(4)] == [0, 0, 0, 1]
        assert watcher.run_once(later) == 0  # sent: no longer due
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "NO_ROUTE" in refused[0].getMessage()
    assert any("accepted after all" in r.getMessage() for r in caplog.records)
    pending = requests.get(env.message_id)
    assert len(replies.sent) == 1 and pending is not None and replies.sent == [pending.timeout_id]
