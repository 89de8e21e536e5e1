"""Intake shared by every inbound adapter: run the accept pipeline, audit, count.

Adapters differ in how they read a request and how they answer; what happens in
between, including the audit record and the metrics of every refusal, is here once.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.accept import Accepted, AcceptPipeline
from gateway.config import Participant
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal
from gateway.masking import mask_text
from monitoring import metrics

log = logging.getLogger("zdravlink.intake")


class Intake:
    def __init__(self, pipeline: AcceptPipeline, journal: Journal,
                 on_accepted: Callable[[], None] | None = None) -> None:
        self.pipeline = pipeline
        self.journal = journal
        self.on_accepted = on_accepted

    def receive(self, body: bytes, content_type: str, token: str | None, *, source: str,
                remote: str | None = None) -> Accepted:
        """Accept one message or raise the Rejection, which is audited before it propagates."""
        env: Envelope | None = None
        caller = None
        try:
            caller = self.pipeline.authenticate(token)
            env = self.pipeline.parse(body, content_type)
            self.pipeline.check_message_id(env)
        except Rejection as rej:
            self.refused(rej, source=source, remote=remote, caller=caller.mnemonic if caller else None, env=env)
            raise
        return self.receive_envelope(env, caller, source=source, remote=remote)

    def receive_envelope(self, env: Envelope, caller: Participant, *, source: str, remote: str | None = None,
                         verified_signature: dict[str, str] | None = None) -> Accepted:
        """Accept an envelope an adapter has already built; the Rejection is audited before it propagates."""
        try:
            accepted = self.pipeline.accept(env, caller, source=source, verified_signature=verified_signature)
        except Rejection as rej:
            self.refused(rej, source=source, remote=remote, caller=caller.mnemonic, env=env)
            raise
        if accepted.outcome.duplicate:
            metrics.DUPLICATES.labels(env.sender).inc()
        else:
            metrics.ACCEPTED.labels(env.sender, source).inc()
            if self.on_accepted:
                self.on_accepted()
        return accepted

    def refused(self, rej: Rejection, *, source: str, remote: str | None, caller: str | None,
                env: Envelope | None) -> None:
        metrics.REJECTED.labels(source, rej.code).inc()
        # Journal the envelope as REJECTED only when the caller really is its sender:
        # an anonymous or impersonating request must not occupy someone's MessageID.
        owned = env if env is not None and caller is not None and env.sender == caller else None
        log.info("refused %s from %s: %s [%s] %s", source, caller or "anonymous", rej.code, rej.field,
                 mask_text(rej.detail))
        self.journal.reject(rej, source=source, sender=caller, remote=remote,
                            message_id=env.message_id if env else None, env=owned,
                            actor=f"{source}-adapter")
