"""The deadline watcher when the gateway's own pipeline refuses a TIMEOUT: tried at every poll, logged once;
and a watcher (or a registry worker) killed right after an answer's commit.

The journal and the correlation store are real (SQLite and PostgreSQL); the reply sender, or the intake
under the real reply sender, stands in for the accept pipeline.
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from lxml import etree

from adapters.registries.deadlines import DeadlineWatcher
from adapters.registries.replies import ReplySender
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal, SideWrite
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


def asked(journal: Journal, requests: RegistryRequests) -> Envelope:
    payload = parse_xml(f'<wv:WorkerVerificationRequest xmlns:wv="{WORKER_NS}"><wv:SNILS>11223344595</wv:SNILS>'
                        '</wv:WorkerVerificationRequest>'.encode())
    env = Envelope(message_id=str(uuid.uuid1()), sender="clinic", recipient="frmr", message_type=WORKER_NS,
                   payload=payload)
    journal.accept(env, source="rest", actor="t", route="r",
                   side_writes=[requests.open_write(env.message_id, "clinic", "frmr", WORKER_NS, 1.0)])
    return env


def test_a_refused_timeout_is_tried_at_every_poll_and_logged_once(journal: Journal,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    requests = RegistryRequests(journal)
    env = asked(journal, requests)
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


class KilledAfterTheAccept:
    """The intake's part ReplySender uses: journals the answer with its side writes, as the real one does;
    the first time, the process "dies" right after that commit."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.deaths = 1
        self.pipeline = SimpleNamespace(config=SimpleNamespace(participants={"frmr": SimpleNamespace(name="ФРМР")}))

    def receive_envelope(self, env: Envelope, caller: object, *, source: str, verified_signature: object = None,
                         side_writes: Sequence[SideWrite] = ()) -> None:
        self.journal.accept(env, source=source, actor="t", route="r", side_writes=side_writes)
        if self.deaths:
            self.deaths -= 1
            raise RuntimeError("killed after the answer's commit")


def test_a_watcher_killed_after_the_timeouts_commit_leaves_the_request_showing_it(journal: Journal) -> None:
    """The TIMEOUT answer and the request's DEADLINE_PASSED commit together: with two commits, the next
    watcher found the answer journalled, took it as sent, and the request's trail never named it."""
    replies = ReplySender(journal, KilledAfterTheAccept(journal))  # type: ignore[arg-type]
    env = asked(journal, replies.requests)
    watcher = DeadlineWatcher(SimpleNamespace(participants={}), journal, replies)  # type: ignore[arg-type]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    with pytest.raises(RuntimeError):
        watcher.run_once(later)
    assert watcher.run_once(later) == 1  # the next pass finishes it, under the id claimed the first time
    passed = [e for e in journal.trail(env.message_id) if e.kind == "DEADLINE_PASSED"]
    pending = replies.requests.get(env.message_id)
    assert pending is not None and pending.timeout_id is not None
    assert [e.detail["answer"] for e in passed] == [pending.timeout_id]
    assert journal.get(pending.timeout_id) is not None and watcher.run_once(later) == 0


def test_an_answer_killed_after_its_commit_leaves_the_request_answered(journal: Journal) -> None:
    replies = ReplySender(journal, KilledAfterTheAccept(journal))  # type: ignore[arg-type]
    env = asked(journal, replies.requests)
    answer = parse_xml(f'<wv:WorkerVerificationResponse xmlns:wv="{WORKER_NS}"><wv:Found>true</wv:Found>'
                       '</wv:WorkerVerificationResponse>'.encode())
    with pytest.raises(RuntimeError):
        replies.answer(env, answer, "registry", {})
    answer_id, late = replies.answer(env, answer, "registry", {})  # the request handled again: the same id
    noted = [e for e in journal.trail(env.message_id) if e.kind == "REGISTRY_ANSWERED"]
    assert not late and [e.detail["answer"] for e in noted] == [answer_id]
    pending = replies.requests.get(env.message_id)
    assert pending is not None and pending.answer_id == answer_id
    assert replies.requests.due(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)) == []
