"""Intake shared by every inbound adapter: run the accept pipeline, audit, count.

Adapters differ in how they read a request and how they answer; what happens in
between, including the audit record and the metrics of every refusal, is here once.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import errors
from gateway.accept import Accepted, AcceptPipeline
from gateway.config import Participant
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal, SideWrite
from gateway.masking import mask_text
from gateway.ratelimit import RateLimiter
from gateway.tls import PeerCertificate
from monitoring import metrics

log = logging.getLogger("zdravlink.intake")


class Intake:
    def __init__(self, pipeline: AcceptPipeline, journal: Journal,
                 on_accepted: Callable[[], None] | None = None, shared_limits: Path | None = None) -> None:
        """``shared_limits``: the directory where the accepting processes of this host share their rate
        limit buckets (``ZL_RUN_DIR``); None: this process keeps its own."""
        self.pipeline = pipeline
        self.journal = journal
        self.on_accepted = on_accepted
        self.limits = RateLimiter({m: p.rate_limit for m, p in pipeline.config.participants.items()
                                   if p.rate_limit is not None}, shared_dir=shared_limits)

    def authenticate(self, token: str | None, peer: PeerCertificate | None, *, source: str,
                     remote: str | None) -> Participant:
        """The caller (token, client certificate); a refusal is audited with its reason before it propagates."""
        try:
            return self.pipeline.authenticate(token, peer)
        except Rejection as rej:
            self.refused(rej, source=source, remote=remote, caller=_named(rej), env=None)
            raise

    def admit(self, caller: Participant, size: int, *, source: str, remote: str | None) -> None:
        """Within the caller's rate limit, or a 429 RATE_LIMITED with Retry-After (audited, counted): nothing taken."""
        verdict = self.limits.admit(caller.mnemonic, size)
        if verdict.admitted:
            return
        retry = max(1, math.ceil(verdict.wait))
        metrics.RATE_LIMITED.labels(caller.mnemonic, source, verdict.limit).inc()
        lim = caller.rate_limit
        said = (f"{lim.messages_per_second:g} messages/s" if verdict.limit == "messages" and lim
                and lim.messages_per_second else f"{lim.bytes_per_second} bytes/s" if lim else "its limit")
        rej = Rejection(errors.RATE_LIMITED, f"{caller.mnemonic!r} sends faster than {said}: send again in "
                        f"{retry} s (nothing was accepted)", None, status=429, extra={"retry_after": retry})
        self.refused(rej, source=source, remote=remote, caller=caller.mnemonic, env=None)
        raise rej

    def pace(self, participant: str, size: int) -> float:
        """Take a message whatever the limit and return how long to hold its answer (MLLP: slowed, not dropped)."""
        verdict = self.limits.debit(participant, size)
        if verdict.wait > 0:
            metrics.RATE_LIMITED.labels(participant, "hl7", verdict.limit).inc()
            metrics.RATE_LIMIT_DELAY.labels(participant).inc(verdict.wait)
        return verdict.wait

    def receive(self, body: bytes, content_type: str, token: str | None, *, source: str,
                remote: str | None = None, peer: PeerCertificate | None = None) -> Accepted:
        """Accept one message or raise the Rejection, which is audited before it propagates."""
        env: Envelope | None = None
        caller = None
        try:
            caller = self.pipeline.authenticate(token, peer)
        except Rejection as rej:
            self.refused(rej, source=source, remote=remote, caller=_named(rej), env=None)
            raise
        self.admit(caller, len(body), source=source, remote=remote)
        try:
            env = self.pipeline.parse(body, content_type)
            self.pipeline.check_message_id(env)
        except Rejection as rej:
            self.refused(rej, source=source, remote=remote, caller=caller.mnemonic if caller else None, env=env)
            raise
        return self.receive_envelope(env, caller, source=source, remote=remote)

    def receive_envelope(self, env: Envelope, caller: Participant, *, source: str, remote: str | None = None,
                         verified_signature: dict[str, str] | None = None,
                         side_writes: Sequence[SideWrite] = ()) -> Accepted:
        """Accept an envelope an adapter has already built; the Rejection is audited before it propagates.
        ``side_writes`` commit with the message or not at all (``AcceptPipeline.accept``)."""
        try:
            accepted = self.pipeline.accept(env, caller, source=source, verified_signature=verified_signature,
                                            side_writes=side_writes)
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
        explanation = rej.extra.get("explanation")
        audited = dataclasses.replace(rej, detail=f"{rej.detail}\n{explanation}") if explanation else rej
        self.journal.reject(audited, source=source, sender=caller, remote=remote,
                            message_id=env.message_id if env else None, env=owned,
                            actor=f"{source}-adapter")


def _named(rej: Rejection) -> str | None:
    """The participant a refusal names (an expired token, a certificate not its own), for the audit's sender."""
    named = rej.extra.get("participant")
    return named if isinstance(named, str) else None
