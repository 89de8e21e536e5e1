"""Evidence archives: a part of the journal as a ZIP that an auditor checks without our database or network.

``export_range`` writes every batch sealed in a time range with all its events, the
envelopes those events wrote, the batch records on to the checkpoint that covers the
range (and the one before, for the link), those checkpoints with their signatures and
TSA tokens, and the trust anchors. ``export_message`` writes one message's evidence:
its envelope, its trail, and for each event the batch record and the Merkle audit
path that shows the event is in it, with the chain of batch records on to a
checkpoint. ``verify_archive`` hands the archive's records to the same ``ChainCheck``
as ``zdravlink journal verify``, so the two cannot disagree about what holds.

Layout (every text file UTF-8, JSON Lines one record a line, in order)::

    manifest.json        format, what was exported, and the SHA-256 of every other file
    batches.jsonl        batch records, by seq (pruned leaves hex-encoded)
    events.jsonl         events, by id, each exactly as the chain hashes it
    proofs.jsonl         (one message) per event: batch, index in the batch, audit path
    checkpoints.jsonl    statement, signature and TSA token (base64)
    envelopes/ID.xml     envelopes as stored
    trust/, tsa-trust/   the CA certificates (and CRLs) the signatures and tokens chain to

The manifest's digests find a changed byte in any file, the chain a changed record
even if the manifest was rewritten to match, and the checkpoints a chain rebuilt to
match: they are signed by the gateway and timestamped by the TSA.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from gateway.evidence import merkle
from gateway.evidence.canonical import BatchRecord, EventRecord, stamp
from gateway.evidence.check import ChainCheck, CheckpointData, Report, unpack_leaves
from gateway.evidence.sealer import EVENT_COLUMNS
from gateway.evidence.verify import batch_events, sealed_range
from gateway.journal import Journal, utcnow
from gateway.journal.tables import events, evidence_batches, evidence_checkpoints, evidence_head, messages
from signing.keys import KeyFileError
from signing.trust import TrustStore
from zdravlink.errors import RefusedError

FORMAT = "zdravlink-evidence-archive/1"
MANIFEST = "manifest.json"
#: Archives of whole messages, each event with its Merkle proof (one message, or what a prune run removed).
PROVEN = ("message", "messages", "prune")


class ArchiveError(RefusedError):
    """An archive that cannot be read as one (not a ZIP, no manifest, another format)."""


@dataclass(frozen=True)
class Exported:
    path: Path
    batches: int
    events: int
    envelopes: int
    checkpoints: int
    bytes: int


class _Writer:
    """Files into the ZIP, each hashed as written, for the manifest."""

    def __init__(self, out: Path) -> None:
        self.zip = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        self.digests: dict[str, str] = {}

    def lines(self, name: str, records: Iterator[dict[str, Any]]) -> int:
        digest, count = hashlib.sha256(), 0
        with self.zip.open(name, "w", force_zip64=True) as f:
            for rec in records:
                line = (json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
                f.write(line)
                digest.update(line)
                count += 1
        self.digests[name] = digest.hexdigest()
        return count

    def file(self, name: str, data: bytes) -> None:
        self.zip.writestr(name, data)
        self.digests[name] = hashlib.sha256(data).hexdigest()

    def trust(self, folder: str, store: Path | None) -> None:
        if store is None:
            return
        for path in sorted(store.iterdir()):
            if path.is_file():
                self.file(f"{folder}/{path.name}", path.read_bytes())

    def close(self, manifest: dict[str, Any]) -> None:
        manifest["files"] = dict(sorted(self.digests.items()))
        self.zip.writestr(MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
        self.zip.close()


def _batch_json(row: Any) -> dict[str, Any]:
    data = BatchRecord.of(row).to_json()
    data["pruned_count"] = int(row.pruned_count)
    data["pruned_leaves"] = row.pruned_leaves.hex() if row.pruned_leaves is not None else None
    return data


def _checkpoint_json(row: Any) -> dict[str, Any]:
    def b64(v: bytes | None) -> str | None:
        return base64.b64encode(bytes(v)).decode("ascii") if v is not None else None

    return {"batch_seq": int(row.batch_seq), "batch_hash": row.batch_hash, "statement": row.statement,
            "signature": b64(row.signature), "tsa_token": b64(row.tsa_token)}


def _cover(conn: Connection, last: int) -> int:
    """The first checkpointed batch at or after ``last`` (the batches on to it are exported), or ``last``."""
    cover = conn.execute(select(func.min(evidence_checkpoints.c.batch_seq))
                         .where(evidence_checkpoints.c.batch_seq >= last)).scalar()
    return int(cover) if cover is not None else last


def _records(conn: Connection, first: int, upto: int) -> list[Any]:
    return list(conn.execute(select(evidence_batches).where(evidence_batches.c.seq >= first,
                                                            evidence_batches.c.seq <= upto)
                             .order_by(evidence_batches.c.seq)))


def _checkpoints(conn: Connection, first: int, upto: int) -> list[Any]:
    return list(conn.execute(select(evidence_checkpoints).where(evidence_checkpoints.c.batch_seq >= first,
                                                                evidence_checkpoints.c.batch_seq <= upto)
                             .order_by(evidence_checkpoints.c.batch_seq)))


def export_range(journal: Journal, out: Path, *, start: datetime | None, end: datetime | None,
                 trust_store: Path | None, tsa_trust_store: Path | None) -> Exported:
    """Every batch sealed in [start, end) with its events and envelopes, and what proves them."""
    w = _Writer(out)
    with journal.engine.connect() as conn:
        first, last = sealed_range(conn, start, end)
        if first is None or last is None:
            w.close({"format": FORMAT, "kind": "range", "from": start and stamp(start), "to": end and stamp(end),
                     "made_at": stamp(utcnow()), "first_batch": None, "last_batch": None})
            out_size = out.stat().st_size
            return Exported(out, 0, 0, 0, 0, out_size)
        upto = _cover(conn, last)
        rows = _records(conn, max(1, first - 1), upto)
        w.lines("batches.jsonl", (_batch_json(r) for r in rows))
        cps = _checkpoints(conn, first, upto)
        w.lines("checkpoints.jsonl", (_checkpoint_json(r) for r in cps))
        checked = [BatchRecord.of(r) for r in rows if first <= r.seq <= last]
        envelope_ids: list[str] = []

        def stream() -> Iterator[dict[str, Any]]:
            for _rec, found in batch_events(conn, checked):
                for ev in found:
                    if ev.envelope_digest() is not None:
                        envelope_ids.append(ev.message_id)
                    yield ev.to_json()

        count = w.lines("events.jsonl", stream())
        envelopes, pruned = _envelopes(conn, w, list(dict.fromkeys(envelope_ids)))
    w.trust("trust", trust_store)
    w.trust("tsa-trust", tsa_trust_store)
    w.close({"format": FORMAT, "kind": "range", "from": start and stamp(start), "to": end and stamp(end),
             "made_at": stamp(utcnow()), "first_batch": first, "last_batch": last, "events": count,
             "envelopes": envelopes, "envelopes_pruned": pruned, "checkpoints": len(cps)})
    return Exported(out, last - first + 1, count, envelopes, len(cps), out.stat().st_size)


def _envelopes(conn: Connection, w: _Writer, ids: list[str]) -> tuple[int, list[str]]:
    """The envelopes of these messages into the archive; how many, and the ids of those retention removed."""
    written, pruned = 0, []
    for i in range(0, len(ids), 500):
        for row in conn.execute(select(messages.c.message_id, messages.c.envelope, messages.c.envelope_pruned_at)
                                .where(messages.c.message_id.in_(ids[i:i + 500]))):
            if row.envelope_pruned_at is not None:
                pruned.append(row.message_id)
                continue
            w.file(f"envelopes/{row.message_id}.xml", bytes(row.envelope))
            written += 1
    return written, pruned


def export_message(journal: Journal, out: Path, message_id: str, *, trust_store: Path | None,
                   tsa_trust_store: Path | None) -> Exported:
    """One message's envelope and trail, each event with its Merkle proof, the chain on to a checkpoint."""
    with journal.engine.connect() as conn:
        trail = [EventRecord.of(r) for r in conn.execute(select(*EVENT_COLUMNS).where(
            events.c.message_id == message_id).order_by(events.c.id))]
        if not trail:
            raise LookupError(f"no events of message {message_id} in the journal")
        head = conn.execute(select(evidence_head.c.last_event_id)).scalar_one()
        if trail[0].id > head:
            raise LookupError(f"the events of message {message_id} are not sealed yet (zdravlink journal seal)")
    return export_messages(journal, out, [message_id], trust_store=trust_store, tsa_trust_store=tsa_trust_store,
                           kind="message", unsealed=sum(e.id > head for e in trail))


def export_messages(journal: Journal, out: Path, message_ids: list[str], *, trust_store: Path | None,
                    tsa_trust_store: Path | None, kind: str = "messages", unsealed: int = 0,
                    extra: dict[str, Any] | None = None) -> Exported:
    """These messages' sealed events with their Merkle proofs and envelopes, the batch records on to a checkpoint.

    Each batch that holds one of their events is read whole once (its other events only for their leaves).
    """
    w = _Writer(out)
    with journal.engine.connect() as conn:
        head = int(conn.execute(select(evidence_head.c.last_event_id)).scalar_one())
        sealed: list[EventRecord] = []
        for i in range(0, len(message_ids), 500):
            sealed.extend(EventRecord.of(r) for r in conn.execute(select(*EVENT_COLUMNS).where(
                events.c.message_id.in_(message_ids[i:i + 500]), events.c.id <= head)))
        sealed.sort(key=lambda e: e.id)
        if not sealed:
            w.zip.close()
            out.unlink()
            raise LookupError("none of these messages has a sealed event")
        batch_rows = list(conn.execute(select(evidence_batches).where(
            evidence_batches.c.last_event_id >= sealed[0].id, evidence_batches.c.first_event_id <= sealed[-1].id)
            .order_by(evidence_batches.c.seq)))
        proofs: list[dict[str, Any]] = []
        pending = iter(sealed)
        ev: EventRecord | None = next(pending)
        for row in batch_rows:
            if ev is None:
                break
            if ev.id > row.last_event_id:
                continue
            rec = BatchRecord.of(row)
            leaves = unpack_leaves(row.pruned_leaves)
            for other in conn.execute(select(*EVENT_COLUMNS).where(events.c.id >= rec.first_event_id,
                                                                   events.c.id <= rec.last_event_id)):
                leaves[int(other.id)] = EventRecord.of(other).leaf()
            order = sorted(leaves)
            hashes = [leaves[k] for k in order]
            position = {k: n for n, k in enumerate(order)}
            wanted: list[EventRecord] = []
            while ev is not None and ev.id <= rec.last_event_id:
                wanted.append(ev)
                ev = next(pending, None)
            paths = merkle.proofs(hashes, [position[e.id] for e in wanted])
            for e, path in zip(wanted, paths, strict=True):
                proofs.append({"event": e.id, "batch": rec.seq, "index": position[e.id],
                               "path": [p.hex() for p in path]})
        seqs = [p["batch"] for p in proofs]
        upto = _cover(conn, max(seqs))
        rows = _records(conn, min(seqs), upto)
        cps = _checkpoints(conn, min(seqs), upto)
        w.lines("batches.jsonl", (_batch_json(r) for r in rows))
        w.lines("checkpoints.jsonl", (_checkpoint_json(r) for r in cps))
        w.lines("events.jsonl", (e.to_json() for e in sealed))
        w.lines("proofs.jsonl", iter(proofs))
        with_envelope = list(dict.fromkeys(e.message_id for e in sealed if e.envelope_digest()))
        envelopes, pruned = _envelopes(conn, w, with_envelope)
    w.trust("trust", trust_store)
    w.trust("tsa-trust", tsa_trust_store)
    w.close({"format": FORMAT, "kind": kind, "messages": list(dict.fromkeys(e.message_id for e in sealed)),
             "made_at": stamp(utcnow()), "first_batch": min(seqs), "last_batch": max(seqs), "events": len(sealed),
             "unsealed": unsealed, "envelopes": envelopes, "envelopes_pruned": pruned, "checkpoints": len(cps),
             **(extra or {})})
    return Exported(out, len(set(seqs)), len(sealed), envelopes, len(cps), out.stat().st_size)


# ---- verifying ------------------------------------------------------------------


def _jsonl(z: zipfile.ZipFile, name: str) -> Iterator[dict[str, Any]]:
    if name not in z.namelist():
        return
    with z.open(name) as f:
        for line in f:
            yield json.loads(line)


def _digests_hold(z: zipfile.ZipFile, manifest: dict[str, Any], check: ChainCheck) -> None:
    listed: dict[str, str] = manifest.get("files", {})
    present = set(z.namelist()) - {MANIFEST}
    for name in sorted(present - set(listed)):
        check.broken(None, f"{name} is in the archive but not in its manifest")
    for name, expected in listed.items():
        if name not in present:
            check.broken(None, f"{name} is in the manifest but missing from the archive")
            continue
        digest = hashlib.sha256()
        with z.open(name) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            check.broken(None, f"{name} is not the file exported: its SHA-256 differs from the manifest's")


def _store(z: zipfile.ZipFile, folder: str, tmp: Path) -> TrustStore | None:
    names = [n for n in z.namelist() if n.startswith(folder + "/") and not n.endswith("/")]
    if not names:
        return None
    target = tmp / folder
    target.mkdir()
    for n in names:
        (target / Path(n).name).write_bytes(z.read(n))
    try:
        return TrustStore.from_directory(target)
    except KeyFileError:
        return None


def verify_archive(path: Path, *, trust: TrustStore | None = None, tsa_trust: TrustStore | None = None) -> Report:
    """Check an archive with nothing but itself (and the auditor's own trust anchors, when given)."""
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArchiveError(f"{path}: not a ZIP archive ({exc})") from None
    with z, tempfile.TemporaryDirectory(prefix="zl-archive-") as tmp:
        try:
            manifest = json.loads(z.read(MANIFEST))
        except (KeyError, ValueError) as exc:
            raise ArchiveError(f"{path}: no readable {MANIFEST} ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise ArchiveError(f"{path}: format {manifest.get('format')!r}, not {FORMAT}")
        own = trust is None or tsa_trust is None
        trust = trust or _store(z, "trust", Path(tmp))
        tsa_trust = tsa_trust or _store(z, "tsa-trust", Path(tmp)) or trust
        kind = manifest.get("kind")
        check = ChainCheck(trust, tsa_trust, whole_trails=kind in PROVEN)
        if own and trust is not None:
            check.warn(None, "the signatures are checked against the CA certificates the archive carries; give your "
                             "own (--trust) to rely on them")
        _digests_hold(z, manifest, check)
        try:
            _verify_records(z, manifest, check, kind)
        except (ValueError, KeyError, TypeError) as exc:
            check.broken(None, f"a record cannot be read: {type(exc).__name__}: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
    check.anchoring()
    return check.report


def _verify_records(z: zipfile.ZipFile, manifest: dict[str, Any], check: ChainCheck, kind: str | None) -> None:
    if manifest.get("first_batch") is None:
        return
    first, last = int(manifest["first_batch"]), int(manifest["last_batch"])
    rows = list(_jsonl(z, "batches.jsonl"))
    pruned = {int(r["seq"]): (int(r.pop("pruned_count")), r.pop("pruned_leaves")) for r in rows}
    records = [BatchRecord(**r) for r in rows]
    before = next((r for r in records if r.seq == first - 1), None)
    check.chain([r for r in records if r.seq >= first], before)
    for cp in _jsonl(z, "checkpoints.jsonl"):
        check.checkpoint(CheckpointData(int(cp["batch_seq"]), cp["batch_hash"], cp["statement"],
                                        base64.b64decode(cp["signature"]) if cp["signature"] else None,
                                        base64.b64decode(cp["tsa_token"]) if cp["tsa_token"] else None))
    by_seq = {r.seq: r for r in records}
    if kind in PROVEN:
        proofs = {int(p["event"]): p for p in _jsonl(z, "proofs.jsonl")}
        for data in _jsonl(z, "events.jsonl"):
            ev = EventRecord(**data)
            p = proofs.get(ev.id)
            rec = by_seq.get(int(p["batch"])) if p else None
            if p is None or rec is None:
                check.broken(None, f"event {ev.id} has no proof or no batch record in the archive", [ev.message_id])
                continue
            check.proven(rec, ev, int(p["index"]), [bytes.fromhex(h) for h in p["path"]])
        for seq in sorted({int(p["batch"]) for p in proofs.values()}):
            check.counted_batch(seq)
    else:
        checked = [r for r in records if first <= r.seq <= last]
        for rec, found in _archived_batches(z, checked, check):
            count, blob = pruned[rec.seq]
            kept = unpack_leaves(bytes.fromhex(blob)) if blob else {}
            check.batch(rec, found, kept, wholly_pruned=count == rec.event_count and blob is None)
    pruned_envelopes = set(manifest.get("envelopes_pruned", []))
    names = set(z.namelist())
    for mid in check.messages_with_envelopes():
        name = f"envelopes/{mid}.xml"
        if name in names:
            check.envelope(mid, z.read(name))
        elif mid in pruned_envelopes:
            check.warn(None, "the envelope was removed by retention before this export (its prune archive holds "
                             "it)", [mid])
        else:
            check.envelope_missing(mid)


def _archived_batches(z: zipfile.ZipFile, records: list[BatchRecord], check: ChainCheck
                      ) -> Iterator[tuple[BatchRecord, list[EventRecord]]]:
    """Each exported batch with the archive's events in its range (events are in id order)."""
    if not records:
        return
    pending = iter(records)
    rec: BatchRecord | None = next(pending)
    found: list[EventRecord] = []
    for data in _jsonl(z, "events.jsonl"):
        ev = EventRecord(**data)
        while rec is not None and ev.id > rec.last_event_id:
            yield rec, found
            rec, found = next(pending, None), []
        if rec is None:
            check.broken(None, f"event {ev.id} lies beyond every batch of the archive", [ev.message_id])
            continue
        found.append(ev)
    if rec is not None:
        yield rec, found
    for rest in pending:
        yield rest, []
