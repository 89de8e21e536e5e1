"""The deadline watcher: a MIS that asked a registry gets an answer in time, even if it is TIMEOUT.

A request is owed a TIMEOUT answer when its deadline (``registries.<type>.deadline_seconds``,
counted from acceptance) passes with no registry answer, or as soon as it is
dead-lettered, since then nothing more will come unless an operator replays it. The
registry's answer may still come later (a retry that finally succeeds, a replay after
recovery): it is journalled and delivered too, and the request's trail shows it as
LATE_ANSWER, so the MIS sees TIMEOUT first and the real answer after it.

The watcher claims each TIMEOUT with a guarded update before sending it, so several
watchers, or a watcher racing a late answer, never send two outcomes for one moment.

A TIMEOUT the gateway's own pipeline refuses (no answer route back to the MIS, a schema)
stays claimed and is tried again at every poll, so it goes out once the configuration
is mended; the refusal is logged once per request and reason, not at every poll.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid

from adapters.registries.replies import ReplySender
from adapters.registries.verdicts import timeout_answer
from gateway.config import GatewayConfig
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal, Status
from gateway.masking import mask_text
from gateway.xmlsafe import parse_xml

log = logging.getLogger(__name__)


class DeadlineWatcher:
    def __init__(self, config: GatewayConfig, journal: Journal, replies: ReplySender) -> None:
        self.config = config
        self.journal = journal
        self.replies = replies
        self.requests = replies.requests
        #: Requests whose TIMEOUT was refused, with the refusal's code: logged once, not at every poll.
        self._refused: dict[str, str] = {}

    def run_once(self, now: dt.datetime | None = None) -> int:
        """Send every TIMEOUT that is due; returns how many were sent."""
        now = now or dt.datetime.now(dt.UTC)
        sent = 0
        due = self.requests.due(now)
        self._refused = {p.message_id: self._refused[p.message_id] for p in due if p.message_id in self._refused}
        for pending in due:
            timeout_id = self.requests.claim_timeout(pending.message_id, str(uuid.uuid1()))
            rec = self.journal.get(pending.message_id)
            if timeout_id is None or rec is None:
                continue
            request = Envelope.from_element(parse_xml(rec.envelope))
            registry = self.config.participants.get(pending.registry)
            name = registry.name if registry else pending.registry
            if rec.status == Status.DEAD.value:
                reason = (f"{name} did not answer: the request went to the dead letter channel "
                          f"({rec.last_error or 'no detail'})")
            else:
                waited = (pending.deadline_at - pending.accepted_at).total_seconds()
                reason = f"no answer from {name} within {waited:g} s"
            try:
                self.replies.timeout(request, timeout_id, timeout_answer(request.payload, reason[:1000], now), reason)
                sent += 1
                if self._refused.pop(pending.message_id, None) is not None:
                    log.info("TIMEOUT answer to %s accepted after all", pending.message_id)
            except Rejection as rej:
                if self._refused.get(pending.message_id) != rej.code:
                    log.error("TIMEOUT answer to %s refused: %s %s; tried again at every poll", pending.message_id,
                              rej.code, mask_text(rej.detail))
                self._refused[pending.message_id] = rej.code
        return sent

    def run(self, stop: threading.Event) -> None:
        interval = self.config.settings.registries.deadline_poll_seconds
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("deadline watcher pass failed")
            stop.wait(interval)
