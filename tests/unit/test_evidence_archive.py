"""Evidence archives: exported, checked elsewhere with no database and no network, and every change found."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import zipfile
from pathlib import Path

import pytest

from demo.ca import demo_signer
from demo.emulators.tsa import TsaServer
from gateway.evidence.archive import ArchiveError, export_message, export_range, verify_archive
from gateway.evidence.checkpoints import Checkpointer
from gateway.evidence.sealer import Sealer
from gateway.evidence.tsa import TsaClient
from gateway.journal import Journal
from signing import TrustStore
from tests.unit.test_evidence import TAMPERING, _traffic


@pytest.fixture
def evidence(journal: Journal, demo_keys: Path, tsa: TsaServer) -> list[list[str]]:
    """Three sealed batches of three messages; a checkpoint, signed and timestamped, of the last."""
    trust = TrustStore.from_directory(demo_keys / "trust")
    sealer = Sealer(journal)
    per_batch = []
    for _ in range(3):
        per_batch.append(_traffic(journal, 3))
        sealer.seal_once()
    cp = Checkpointer(journal, demo_signer(demo_keys, "gateway", "gost2012-256"), TsaClient(tsa.url, trust),
                      interval=3600)
    cp.make(force=True)
    assert cp.timestamp_waiting() == (1, None)
    return per_batch


def _export(journal: Journal, demo_keys: Path, out: Path) -> Path:
    export_range(journal, out, start=None, end=None, trust_store=demo_keys / "trust",
                 tsa_trust_store=demo_keys / "trust")
    return out


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network from here on: any connection attempt fails the test."""
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("verify-archive tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_an_archive_verifies_elsewhere_without_database_or_network(journal: Journal, evidence: list[list[str]],
                                                                   demo_keys: Path, tmp_path: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    made = _export(journal, demo_keys, tmp_path / "out.zip")
    elsewhere = tmp_path / "auditor"
    elsewhere.mkdir()
    copy = Path(shutil.copy(made, elsewhere / "evidence.zip"))
    journal.engine.dispose()
    request.getfixturevalue("offline")
    auditor_trust = TrustStore.from_directory(demo_keys / "trust")
    report = verify_archive(copy, trust=auditor_trust, tsa_trust=auditor_trust)
    assert report.ok, [f.line() for f in report.broken]
    assert (report.batches, report.events, report.envelopes, report.signatures, report.timestamps) == (3, 27, 9, 1, 1)
    assert report.anchored_to == 3 and not report.warnings
    # With the archive's own CA certificates it holds too, with a warning saying whose anchors those are.
    own = verify_archive(copy)
    assert own.ok and any("archive carries" in f.what for f in own.warnings)


def _rewrite(src: Path, dst: Path, name: str, change: bytes | None, *, fix_manifest: bool) -> None:
    """A copy of the archive with ``name`` replaced by ``change`` (None: one byte flipped), manifest fixed or not."""
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    data = files[name]
    if change is None:
        i = len(data) // 2
        change = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
    files[name] = change
    if fix_manifest and name != "manifest.json":
        manifest = json.loads(files["manifest.json"])
        manifest["files"][name] = hashlib.sha256(change).hexdigest()
        files["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)


@pytest.mark.parametrize("name", ["events.jsonl", "batches.jsonl", "checkpoints.jsonl", "envelope",
                                  "trust/zdravlink-demo-ca.pem", "manifest.json"])
def test_a_changed_byte_anywhere_is_found(journal: Journal, evidence: list[list[str]], demo_keys: Path,
                                          tmp_path: Path, name: str) -> None:
    made = _export(journal, demo_keys, tmp_path / "out.zip")
    if name == "envelope":
        name = f"envelopes/{evidence[0][0]}.xml"
    _rewrite(made, tmp_path / "changed.zip", name, None, fix_manifest=False)
    try:
        report = verify_archive(tmp_path / "changed.zip")
    except ArchiveError:
        assert name == "manifest.json"  # the manifest itself no longer reads
        return
    assert not report.ok, name


def test_an_event_changed_with_its_manifest_digest_is_found_by_the_chain(journal: Journal,
                                                                         evidence: list[list[str]],
                                                                         demo_keys: Path, tmp_path: Path) -> None:
    made = _export(journal, demo_keys, tmp_path / "out.zip")
    with zipfile.ZipFile(made) as z:
        lines = z.read("events.jsonl").decode().splitlines(keepends=True)
    record = json.loads(lines[12])
    record["actor"] = "someone-else"
    lines[12] = json.dumps(record, sort_keys=True) + "\n"
    _rewrite(made, tmp_path / "forged.zip", "events.jsonl", "".join(lines).encode(), fix_manifest=True)
    report = verify_archive(tmp_path / "forged.zip")
    assert not report.ok and report.first_broken_batch() == 2
    assert any(record["message_id"] in f.messages for f in report.broken)


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampering_in_the_journal_is_found_in_its_archive(journal: Journal, evidence: list[list[str]],
                                                          demo_keys: Path, tmp_path: Path, how: str) -> None:
    batch, _mid = TAMPERING[how](journal, evidence)
    report = verify_archive(_export(journal, demo_keys, tmp_path / "out.zip"))
    assert not report.ok, how
    assert report.first_broken_batch() == batch, [f.line() for f in report.broken]


def test_one_message_archive_proves_its_events_by_merkle_paths(journal: Journal, evidence: list[list[str]],
                                                               demo_keys: Path, tmp_path: Path) -> None:
    mid = evidence[1][1]
    out = tmp_path / "one.zip"
    done = export_message(journal, out, mid, trust_store=demo_keys / "trust", tsa_trust_store=demo_keys / "trust")
    assert (done.events, done.envelopes) == (3, 1)
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        proofs = [json.loads(line) for line in z.read("proofs.jsonl").splitlines()]
    assert not any(n.startswith("envelopes/") and mid not in n for n in names)  # no one else's envelope
    assert {p["batch"] for p in proofs} == {2} and all(len(p["path"]) == 4 for p in proofs)  # 9 leaves: 4 levels
    trust = TrustStore.from_directory(demo_keys / "trust")
    report = verify_archive(out, trust=trust, tsa_trust=trust)
    assert report.ok, [f.line() for f in report.broken]
    assert (report.events, report.envelopes, report.timestamps, report.anchored_to) == (3, 1, 1, 3)
    # Another message's event in its place, manifest fixed: its proof fails.
    with zipfile.ZipFile(out) as z:
        lines = z.read("events.jsonl").decode().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["actor"] = "someone-else"
    lines[1] = json.dumps(record, sort_keys=True) + "\n"
    _rewrite(out, tmp_path / "forged.zip", "events.jsonl", "".join(lines).encode(), fix_manifest=True)
    forged = verify_archive(tmp_path / "forged.zip", trust=trust, tsa_trust=trust)
    assert not forged.ok and forged.first_broken_batch() == 2


def test_a_message_not_sealed_is_not_exported(journal: Journal, tmp_path: Path) -> None:
    mid = _traffic(journal, 1)[0]
    with pytest.raises(LookupError, match="not sealed"):
        export_message(journal, tmp_path / "x.zip", mid, trust_store=None, tsa_trust_store=None)
    assert not (tmp_path / "x.zip").exists()
