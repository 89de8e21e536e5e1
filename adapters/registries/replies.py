"""Sending a registry's answer back to the MIS that asked (EIP: Return Address, Correlation Identifier).

The answer is a message of its own, from the registry to the requester, carrying
ReferenceMessageID = the request's MessageID. It enters through the same accept
pipeline as everything else (schema, answer route, journal, outbox), so it is
journalled, signed by the gateway on delivery, retried and dead-lettered like any
message, and the MIS receives it by push or pull as its configuration says.

Its MessageID is reserved in the correlation store before it is journalled: a worker
killed in between leaves the id behind, and whoever handles the request next sends the
answer under that id instead of a second one. The answer, the request's event that names
it (REGISTRY_ANSWERED, LATE_ANSWER or DEADLINE_PASSED) and the request's answered mark
commit together: a worker killed between two commits left an answer whose request's trail
never showed it, as whoever came next found the answer journalled and took it as done.
"""
from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime
from typing import Literal

from lxml import etree
from sqlalchemy.engine import Connection

from adapters.intake import Intake
from adapters.registries.verdicts import verdict_of
from gateway.envelope import Envelope
from gateway.journal import Change, Journal, SideWrite
from gateway.journal.correlation import RegistryRequests
from monitoring import metrics

log = logging.getLogger(__name__)

Origin = Literal["registry", "cache", "timeout"]


class ReplySender:
    def __init__(self, journal: Journal, intake: Intake) -> None:
        self.journal = journal
        self.intake = intake
        self.requests = RegistryRequests(journal)
        self.actor = f"registry-adapter:{os.getpid()}"

    def answer(self, request: Envelope, payload: etree._Element, origin: Origin,
               evidence: dict[str, str]) -> tuple[str, bool]:
        """Send the registry's (or the cache's) answer; returns its MessageID and whether it came after a TIMEOUT.

        Raises the Rejection if the answer cannot be accepted (no answer route, schema).
        """
        answer_id, late = self.requests.reserve_answer(request.message_id, str(uuid.uuid1()))
        if self.journal.get(answer_id) is None:
            registry = request.recipient
            detail = {"answer": answer_id, "verdict": verdict_of(payload), "origin": origin}
            self._accept(request, answer_id, payload, evidence,
                         Change.of(request.message_id, "LATE_ANSWER" if late else "REGISTRY_ANSWERED", self.actor,
                                   detail), self.requests.answered_write(request.message_id))
            metrics.REGISTRY_ANSWERS.labels(registry, origin, verdict_of(payload)).inc()
            if late:
                metrics.REGISTRY_LATE.labels(registry).inc()
        return answer_id, late

    def timeout(self, request: Envelope, timeout_id: str, payload: etree._Element, reason: str) -> None:
        """Send the TIMEOUT answer under the id the deadline watcher claimed."""
        if self.journal.get(timeout_id) is None:
            self._accept(request, timeout_id, payload, {"origin": "gateway", "reason": "deadline"},
                         Change.of(request.message_id, "DEADLINE_PASSED", self.actor,
                                   {"answer": timeout_id, "reason": reason}))
            metrics.REGISTRY_ANSWERS.labels(request.recipient, "timeout", "timeout").inc()
        self.requests.timed_out(request.message_id)

    def _accept(self, request: Envelope, message_id: str, payload: etree._Element, evidence: dict[str, str],
                noted: Change, *more: SideWrite) -> None:
        """Accept the answer; ``noted`` (the request's event naming it) and ``more`` commit with it."""
        registry = self.intake.pipeline.config.participants[request.recipient]
        env = Envelope(message_id=message_id, sender=request.recipient, recipient=request.sender,
                       message_type=request.message_type, payload=payload,
                       reference_message_id=request.message_id, test_message=request.test_message)

        def note(conn: Connection, _at: datetime) -> None:
            self.journal.record_within(conn, [noted])

        self.intake.receive_envelope(env, registry, source="registry", verified_signature=evidence,
                                     side_writes=[note, *more])
