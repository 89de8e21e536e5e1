"""The checks of the evidence chain, fed from the database (``verify``) or from an archive (``archive``).

Both sources hand the same records to one ``ChainCheck``, so the database and an
auditor's offline copy are judged by the same code. What it checks, and what each
failure means:

* each batch record's own hash, its link to the batch before, and that the id ranges
  follow each other with no gap or overlap: a batch removed or inserted;
* each batch's Merkle root over its events (and the leaves of events retention
  removed), and its event count: an event edited, removed, inserted or moved;
* each event's own per-message hash and its link to the message's event before:
  a trail rewritten before it was sealed;
* each envelope against the digest its ACCEPTED (or REJECTED) event recorded;
* each checkpoint: its statement names a batch of the chain with that batch's hash,
  the gateway's signature over it, and the TSA's token over the signature;
* that the checked batches lie under a checkpoint that verified (the tail after the
  last checkpoint rests on the database alone: a warning, not a failure).

A finding is ``broken`` (the evidence does not hold: exit 1) or a ``warning`` (the
evidence holds but says less than it could). Broken findings name the batch and the
messages whose events are in it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from gateway.evidence import merkle
from gateway.evidence.canonical import GENESIS, BatchRecord, EventRecord, Statement, imprint_of
from signing import SignatureError
from signing.cms import verify_detached
from signing.timestamps import verify as verify_timestamp
from signing.trust import TrustStore

#: An event dated this much before an event with a lower id was written into the past (clock steps, lock waits
#: and long transactions stay well inside it).
BACKDATED_AFTER = dt.timedelta(minutes=10)
MESSAGES_NAMED = 20


@dataclass(frozen=True)
class Finding:
    severity: Literal["broken", "warning"]
    batch: int | None
    what: str
    messages: tuple[str, ...] = ()

    def line(self) -> str:
        where = f"batch {self.batch}: " if self.batch is not None else ""
        named = ""
        if self.messages:
            more = len(self.messages) - MESSAGES_NAMED
            named = "; messages: " + ", ".join(self.messages[:MESSAGES_NAMED]) + (f" and {more} more" if more > 0
                                                                                  else "")
        return f"{where}{self.what}{named}"


@dataclass(frozen=True)
class CheckpointData:
    batch_seq: int
    batch_hash: str
    statement: str
    signature: bytes | None
    tsa_token: bytes | None


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    batches: int = 0
    pruned_batches: int = 0
    events: int = 0
    envelopes: int = 0
    checkpoints: int = 0
    signatures: int = 0
    timestamps: int = 0
    first_batch: int | None = None
    last_batch: int | None = None
    #: The highest batch a verified checkpoint covers (signature, or timestamp, holding).
    anchored_to: int | None = None
    signers: set[str] = field(default_factory=set)

    @property
    def broken(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "broken"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.broken

    def first_broken_batch(self) -> int | None:
        return min((f.batch for f in self.broken if f.batch is not None), default=None)


def unpack_leaves(blob: bytes | None) -> dict[int, bytes]:
    """Leaves kept for events retention removed: 8-byte big-endian event id, then the 32-byte leaf, each."""
    if not blob:
        return {}
    if len(blob) % 40:
        raise ValueError(f"pruned leaves of {len(blob)} bytes are not whole (40 bytes each)")
    return {int.from_bytes(blob[i:i + 8], "big"): blob[i + 8:i + 40] for i in range(0, len(blob), 40)}


def pack_leaves(leaves: dict[int, bytes]) -> bytes:
    return b"".join(i.to_bytes(8, "big") + leaves[i] for i in sorted(leaves))


class ChainCheck:
    def __init__(self, trust: TrustStore | None, tsa_trust: TrustStore | None, *, whole_trails: bool) -> None:
        """``whole_trails``: every trail starts inside what is checked (a message's first event is genesis-linked)."""
        self.trust = trust
        self.tsa_trust = tsa_trust
        self.whole_trails = whole_trails
        self.report = Report()
        self.headers: dict[int, BatchRecord] = {}
        self._last_hash: dict[str, str] = {}
        self._digest: dict[str, tuple[str, int]] = {}
        self._max_at: str | None = None

    def broken(self, batch: int | None, what: str, messages: Iterable[str] = ()) -> None:
        self.report.findings.append(Finding("broken", batch, what, tuple(sorted(set(messages)))))

    def warn(self, batch: int | None, what: str, messages: Iterable[str] = ()) -> None:
        self.report.findings.append(Finding("warning", batch, what, tuple(sorted(set(messages)))))

    # ---- batch records ------------------------------------------------------

    def chain(self, records: Iterable[BatchRecord], before: BatchRecord | None = None) -> None:
        """Each record's hash, and each link: ``before`` is the batch preceding the first, when known."""
        prev = before
        for rec in records:
            self.headers[rec.seq] = rec
            if not rec.hash_holds():
                self.broken(rec.seq, "the batch record was altered: its hash does not match its fields")
            if prev is None:
                if rec.seq == 1 and (rec.prev_hash != GENESIS or rec.first_event_id != 1):
                    self.broken(rec.seq, "the first batch does not start the chain (genesis, event 1)")
            elif rec.seq != prev.seq + 1:
                self.broken(rec.seq, f"batches {prev.seq + 1}–{rec.seq - 1} are missing: batch {rec.seq} follows "
                                     f"batch {prev.seq}")
            elif rec.prev_hash != prev.hash:
                self.broken(rec.seq, f"the chain is broken: this batch follows a batch {prev.seq} with another hash")
            elif rec.first_event_id != prev.last_event_id + 1:
                self.broken(rec.seq, f"the event ranges do not follow: batch {prev.seq} ends at event "
                                     f"{prev.last_event_id}, this one starts at {rec.first_event_id}")
            prev = rec

    # ---- events -------------------------------------------------------------

    def batch(self, rec: BatchRecord, found: list[EventRecord], kept_leaves: dict[int, bytes],
              wholly_pruned: bool = False) -> None:
        """A batch whose events are all here, but for those retention removed (``kept_leaves``)."""
        self.report.batches += 1
        self._span(rec.seq)
        names = [e.message_id for e in found]
        if wholly_pruned:
            self.report.pruned_batches += 1
            if found:
                self.broken(rec.seq, f"{len(found)} event(s) in a batch whose events were all pruned", names)
            return
        leaves: dict[int, bytes] = dict(kept_leaves)
        for ev in found:
            if not rec.first_event_id <= ev.id <= rec.last_event_id:
                self.broken(rec.seq, f"event {ev.id} is outside the batch's range", [ev.message_id])
            if ev.id in leaves:
                self.broken(rec.seq, f"event {ev.id} is both present and recorded as pruned", [ev.message_id])
            leaves[ev.id] = ev.leaf()
            self._event(rec.seq, ev)
        if len(leaves) != rec.event_count:
            self.broken(rec.seq, f"{len(leaves)} events where {rec.event_count} were sealed (events "
                                 f"{rec.first_event_id}–{rec.last_event_id})", names)
        elif merkle.root([leaves[i] for i in sorted(leaves)]).hex() != rec.root:
            self.broken(rec.seq, "the events are not those sealed: the Merkle root differs (an event edited, "
                                 "moved or replaced)", names)

    def proven(self, rec: BatchRecord, ev: EventRecord, index: int, path: list[bytes]) -> None:
        """One event shown to be in a batch by its Merkle audit path (an archive of one message)."""
        if rec.seq not in self.headers:
            self.broken(rec.seq, "the proof names a batch the archive has no record of", [ev.message_id])
            return
        if not merkle.verify_proof(ev.leaf(), index, rec.event_count, path, bytes.fromhex(rec.root)):
            self.broken(rec.seq, f"event {ev.id} is not in the batch: its Merkle proof fails", [ev.message_id])
        self._event(rec.seq, ev)

    def counted_batch(self, seq: int) -> None:
        self.report.batches += 1
        self._span(seq)

    def _span(self, seq: int) -> None:
        r = self.report
        r.first_batch = seq if r.first_batch is None else min(r.first_batch, seq)
        r.last_batch = seq if r.last_batch is None else max(r.last_batch, seq)

    def _event(self, seq: int, ev: EventRecord) -> None:
        self.report.events += 1
        if not ev.hash_holds():
            self.broken(seq, f"event {ev.id} ({ev.kind}) does not match its own trail hash", [ev.message_id])
        before = self._last_hash.get(ev.message_id)
        if before is not None and ev.prev_hash != before:
            self.broken(seq, f"event {ev.id} ({ev.kind}) does not follow the message's event before it",
                        [ev.message_id])
        elif before is None and self.whole_trails and ev.prev_hash != GENESIS:
            self.broken(seq, f"event {ev.id} ({ev.kind}) is the first of its message here but follows another",
                        [ev.message_id])
        self._last_hash[ev.message_id] = ev.hash
        if self._max_at is not None and ev.at < self._max_at:
            gap = dt.datetime.fromisoformat(self._max_at) - dt.datetime.fromisoformat(ev.at)
            if gap > BACKDATED_AFTER:
                self.warn(seq, f"event {ev.id} ({ev.kind}) is dated {ev.at}, {gap} before an earlier-written event: "
                               "written into the past?", [ev.message_id])
        if self._max_at is None or ev.at > self._max_at:
            self._max_at = ev.at
        digest = ev.envelope_digest()
        if digest is not None:
            self._digest[ev.message_id] = (digest, seq)

    # ---- envelopes ----------------------------------------------------------

    def envelope_expected(self, message_id: str) -> bool:
        return message_id in self._digest

    def envelope(self, message_id: str, envelope: bytes) -> None:
        expected = self._digest.get(message_id)
        if expected is None:
            return
        self.report.envelopes += 1
        if hashlib.sha256(envelope).hexdigest() != expected[0]:
            self.broken(expected[1], "the envelope is not the one its event recorded (SHA-256 differs)",
                        [message_id])

    def envelope_missing(self, message_id: str) -> None:
        expected = self._digest.get(message_id)
        if expected is not None:
            self.broken(expected[1], "the envelope its event recorded is missing", [message_id])

    def messages_with_envelopes(self) -> list[str]:
        return list(self._digest)

    # ---- checkpoints --------------------------------------------------------

    def checkpoint(self, cp: CheckpointData) -> None:
        self.report.checkpoints += 1
        seq = cp.batch_seq
        try:
            statement = Statement.parse(cp.statement)
        except (ValueError, KeyError):
            self.broken(seq, "the checkpoint's statement cannot be read")
            return
        if statement.batch != seq or statement.batch_hash != cp.batch_hash:
            self.broken(seq, "the checkpoint's record does not match its signed statement")
            return
        header = self.headers.get(seq)
        if header is None:
            self.broken(seq, "a checkpoint of a batch that is not in the chain")
            return
        if header.hash != statement.batch_hash:
            self.broken(seq, "the chain is not the one checkpointed: the signed batch hash differs")
            return
        when = dt.datetime.fromisoformat(statement.made_at)
        holds = False
        if cp.tsa_token is None:
            self.warn(seq, "the checkpoint has no timestamp (the TSA was out of reach, or none is configured)")
        elif self.tsa_trust is None:
            self.warn(seq, "the checkpoint's timestamp is not checked: no TSA trust anchors")
        else:
            try:
                stamp = verify_timestamp(cp.tsa_token, imprint_of(cp.statement, cp.signature), trust=self.tsa_trust)
                when, holds = stamp.gen_time, True
                self.report.timestamps += 1
            except SignatureError as exc:
                self.broken(seq, f"the checkpoint's timestamp does not hold: {exc}")
                return
        if cp.signature is None:
            self.warn(seq, "the checkpoint is not signed (the gateway has no signing key)")
        elif self.trust is None:
            self.warn(seq, "the checkpoint's signature is not checked: no trust anchors")
        else:
            try:
                verified = verify_detached(cp.statement.encode("utf-8"), cp.signature, trust=self.trust, signers=None,
                                           at=when)
                self.report.signatures += 1
                self.report.signers.add(verified.certificate.subject)
                holds = True
            except SignatureError as exc:
                self.broken(seq, f"the checkpoint's signature does not hold: {exc}")
                return
        if holds and (self.report.anchored_to is None or seq > self.report.anchored_to):
            self.report.anchored_to = seq

    def anchoring(self) -> None:
        """Batches checked beyond the last verified checkpoint rest on the database alone."""
        r = self.report
        if r.last_batch is None:
            return
        if r.anchored_to is None or r.anchored_to < r.last_batch:
            start = (r.anchored_to or 0) + 1 if r.anchored_to is not None and r.anchored_to >= (r.first_batch or 0) \
                else r.first_batch
            self.warn(None, f"batches {start}–{r.last_batch} are not yet under a verified checkpoint")
