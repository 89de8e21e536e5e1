"""Checkpoints: the chain's head signed by the gateway and timestamped by a TSA, at an interval.

The batch chain shows that nothing changed *relative to its head*; someone who
controls the database could rebuild the whole chain. A checkpoint takes the head out
of the operator's hands: the gateway's key signs a statement of the head batch's hash
(a detached CMS, which ``openssl cms -verify`` checks too), and an RFC 3161 TSA
timestamps that signature, so the chain up to that batch existed, as it is, at the
TSA's time. A checkpoint is made every ``checkpoint_interval_seconds`` (or every
``checkpoint_every_batches`` batches) if the chain has grown.

The TSA is never on the message path. When it cannot be reached the checkpoint is
kept, signed, without its timestamp; the checkpointer asks again with a growing pause
(up to ``tsa_retry_max_seconds``), warns once when the TSA goes and every ten minutes
while it stays away, and stamps every waiting checkpoint, oldest first, when it
returns. ``zl_evidence_timestamp_lag_seconds`` shows how long the chain has gone
without a timestamp; the alert fires past ``timestamp_alert_after_seconds``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.evidence.canonical import Statement, imprint_of, stamp
from gateway.evidence.tsa import TsaClient, TsaUnavailable
from gateway.journal import Journal, utcnow
from gateway.journal.model import as_utc
from gateway.journal.tables import evidence_batches, evidence_checkpoints, evidence_head
from signing.cms import sign_detached
from signing.xmldsig import Signer

log = logging.getLogger("zdravlink.evidence")

#: Checkpoints timestamped per round at most, so catching up after a long outage does not hold the loop.
CATCH_UP_PER_ROUND = 200
WARN_EVERY_SECONDS = 600.0
FIRST_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Round:
    """What one round did: the batch a new checkpoint covers, timestamps obtained, and the TSA's failure."""

    made: int | None
    timestamped: int
    failure: str | None


class Checkpointer:
    def __init__(self, journal: Journal, signer: Signer | None, tsa: TsaClient | None, *, interval: float,
                 every_batches: int | None = None, retry_max: float = 300.0,
                 first_retry: float = FIRST_RETRY_SECONDS) -> None:
        self.journal = journal
        self.signer = signer
        self.tsa = tsa
        self.interval = interval
        self.every_batches = every_batches
        self.retry_max = retry_max
        self.first_retry = first_retry
        self._next_try = 0.0
        self._delay = first_retry
        self._failing_since: float | None = None
        self._warned_at = 0.0

    def run_once(self) -> Round:
        made = self.make(force=False)
        timestamped, failure = self.timestamp_waiting()
        return Round(made, timestamped, failure)

    def make(self, force: bool) -> int | None:
        """Sign a checkpoint of the head if it is due (or ``force``) and the chain grew; its batch, or None."""
        now = utcnow()
        with self.journal.engine.connect() as conn:
            top = conn.execute(select(evidence_head.c.seq, evidence_head.c.hash)
                               .where(evidence_head.c.id == 1)).one()
            last = conn.execute(select(evidence_checkpoints.c.batch_seq, evidence_checkpoints.c.made_at)
                                .order_by(evidence_checkpoints.c.batch_seq.desc()).limit(1)).first()
        if top.seq == 0 or (last is not None and last.batch_seq >= top.seq):
            return None
        if not force and last is not None:
            due = now - as_utc(last.made_at) >= timedelta(seconds=self.interval)
            grown = self.every_batches is not None and top.seq - last.batch_seq >= self.every_batches
            if not (due or grown):
                return None
        statement = Statement(int(top.seq), top.hash, stamp(now)).text()
        signature = sign_detached(statement.encode("utf-8"), self.signer) if self.signer is not None else None
        try:
            with self.journal.engine.begin() as conn:
                conn.execute(insert(evidence_checkpoints).values(
                    batch_seq=top.seq, batch_hash=top.hash, made_at=now, statement=statement, signature=signature,
                    tsa_attempts=0))
        except IntegrityError:
            return None  # another evidence process checkpointed this batch a moment ago
        return int(top.seq)

    def timestamp_waiting(self) -> tuple[int, str | None]:
        """Timestamp checkpoints still without one, oldest first; how many got one, and the TSA's failure."""
        if self.tsa is None or time.monotonic() < self._next_try:
            return 0, None
        with self.journal.engine.connect() as conn:
            waiting = conn.execute(
                select(evidence_checkpoints.c.batch_seq, evidence_checkpoints.c.statement,
                       evidence_checkpoints.c.signature)
                .where(evidence_checkpoints.c.tsa_time.is_(None))
                .order_by(evidence_checkpoints.c.batch_seq).limit(CATCH_UP_PER_ROUND)).all()
        done = 0
        for cp in waiting:
            try:
                stamped = self.tsa.stamp(imprint_of(cp.statement, cp.signature))
            except TsaUnavailable as exc:
                self._failed(cp.batch_seq, str(exc))
                return done, str(exc)
            with self.journal.engine.begin() as conn:
                conn.execute(update(evidence_checkpoints).where(evidence_checkpoints.c.batch_seq == cp.batch_seq)
                             .values(tsa_token=stamped.token, tsa_time=stamped.timestamp.gen_time, tsa_error=None,
                                     tsa_attempts=evidence_checkpoints.c.tsa_attempts + 1))
            done += 1
        if self._failing_since is not None:
            log.info("the TSA answers again after %.0f s; %d checkpoint(s) timestamped",
                     time.monotonic() - self._failing_since, done)
        self._failing_since, self._delay, self._next_try = None, self.first_retry, 0.0
        return done, None

    def _failed(self, batch_seq: int, reason: str) -> None:
        with self.journal.engine.begin() as conn:
            conn.execute(update(evidence_checkpoints).where(evidence_checkpoints.c.batch_seq == batch_seq)
                         .values(tsa_error=reason[:2000], tsa_attempts=evidence_checkpoints.c.tsa_attempts + 1))
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since, self._warned_at = now, now
            log.warning("the TSA %s gave no timestamp (%s); messages flow on, checkpoints wait for it",
                        self.tsa.url if self.tsa else "", reason)
        elif now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("the TSA has given no timestamp for %.0f s (%s); checkpoints wait for it",
                        now - self._failing_since, reason)
        self._next_try = now + self._delay
        self._delay = min(self.retry_max, self._delay * 2)


@dataclass(frozen=True)
class EvidenceState:
    """What the metrics and the console show of the chain, read from the journal when asked."""

    batches: int
    last_sealed_at: datetime | None
    unsealed_events: int
    oldest_unsealed_age: float
    checkpoints: int
    waiting_timestamps: int
    last_timestamp_at: datetime | None
    #: How long the oldest batch not yet under a timestamped checkpoint has waited; 0 when none waits.
    timestamp_lag: float
    last_tsa_error: str | None


def evidence_state(journal: Journal) -> EvidenceState:
    from gateway.journal.tables import events

    now = utcnow()
    with journal.engine.connect() as conn:
        top = conn.execute(select(evidence_head.c.seq, evidence_head.c.last_event_id)
                           .where(evidence_head.c.id == 1)).one()
        last_batch = conn.execute(select(evidence_batches.c.sealed_at).where(evidence_batches.c.seq == top.seq)
                                  ).scalar()
        unsealed = conn.execute(select(func.count(), func.min(events.c.at))
                                .where(events.c.id > top.last_event_id)).one()
        cps = conn.execute(select(func.count(), func.count(evidence_checkpoints.c.tsa_time))
                           .select_from(evidence_checkpoints)).one()
        stamped = conn.execute(select(evidence_checkpoints.c.batch_seq, evidence_checkpoints.c.tsa_time)
                               .where(evidence_checkpoints.c.tsa_time.is_not(None))
                               .order_by(evidence_checkpoints.c.batch_seq.desc()).limit(1)).first()
        covered = stamped.batch_seq if stamped is not None else 0
        oldest_uncovered = conn.execute(select(evidence_batches.c.sealed_at)
                                        .where(evidence_batches.c.seq == covered + 1)).scalar()
        error = conn.execute(select(evidence_checkpoints.c.tsa_error)
                             .where(evidence_checkpoints.c.tsa_time.is_(None),
                                    evidence_checkpoints.c.tsa_error.is_not(None))
                             .order_by(evidence_checkpoints.c.batch_seq.desc()).limit(1)).scalar()
    return EvidenceState(
        batches=int(top.seq), last_sealed_at=as_utc(last_batch), unsealed_events=int(unsealed[0]),
        oldest_unsealed_age=(now - as_utc(unsealed[1])).total_seconds() if unsealed[1] is not None else 0.0,
        checkpoints=int(cps[0]), waiting_timestamps=int(cps[0]) - int(cps[1]),
        last_timestamp_at=as_utc(stamped.tsa_time) if stamped is not None else None,
        timestamp_lag=max(0.0, (now - as_utc(oldest_uncovered)).total_seconds()) if oldest_uncovered else 0.0,
        last_tsa_error=error)
