"""The evidence chain from the shell: seal and checkpoint now, and verify the chain with its checkpoints."""
from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from application.cli.common import ConfigOpt, err, journal_app, keyring_or_exit, load_or_exit, out
from application.cli.console import utc

if TYPE_CHECKING:
    from gateway.evidence.check import Report


@journal_app.command("seal")
def journal_seal(config: Path | None = ConfigOpt,
                 checkpoint: bool = typer.Option(True, "--checkpoint/--no-checkpoint",
                                                 help="Also checkpoint the head now (signed; timestamped if a "
                                                      "TSA is configured and answers)")) -> None:
    """Seal every settled event into the chain now (the reconciler does it every few seconds)."""
    from gateway.evidence.duty import EvidenceDuty
    from gateway.journal import Journal

    cfg = load_or_exit(config)
    duty = EvidenceDuty.of(cfg, Journal(cfg.settings.database.url), keyring_or_exit(cfg).signer)
    sealed, done = duty.run_once(force_checkpoint=checkpoint)
    out.print(f"{sealed} batch(es) sealed" + (f"; checkpoint of batch {done.made}" if done.made else "")
              + (f"; {done.timestamped} timestamp(s)" if done.timestamped else "")
              + (f"; [yellow]the TSA gave no timestamp[/yellow]: {done.failure}" if done.failure else ""),
              highlight=False)


@journal_app.command("verify")
def journal_verify(config: Path | None = ConfigOpt,
                   start: datetime | None = typer.Option(None, "--from", help="Batches sealed from this time (UTC)"),
                   end: datetime | None = typer.Option(None, "--to", help="… up to this time (UTC), not included"),
                   quiet: bool = typer.Option(False, "--quiet", "-q", help="Only what is broken")) -> None:
    """Check the evidence chain, its checkpoints' signatures and timestamps and the envelopes; exit 1 if broken.

    Names the first broken batch and the messages whose events are in it.
    """
    from gateway.evidence.duty import pruner, tsa_trust
    from gateway.evidence.verify import verify_journal
    from gateway.journal import Journal

    cfg = load_or_exit(config)
    ring = keyring_or_exit(cfg)
    began = time.perf_counter()
    journal = Journal(cfg.settings.database.url)
    floor = pruner(cfg, journal).shortest_days()  # a batch younger than this cannot have lost events to retention
    report = verify_journal(journal, trust=ring.trust, tsa_trust=tsa_trust(cfg), start=utc(start), end=utc(end),
                            min_retention=timedelta(days=floor) if floor is not None else None)
    _print(report, time.perf_counter() - began, quiet)


def _print(report: Report, took: float, quiet: bool) -> None:
    for f in report.broken:
        out.print(f"[red]broken[/red] {f.line()}", highlight=False)
    if not quiet:
        for f in report.warnings:
            out.print(f"[yellow]warning[/yellow] {f.line()}", highlight=False)
    span = f"batches {report.first_batch}–{report.last_batch}" if report.first_batch is not None else "no batch"
    out.print(f"{span}: {report.events} events, {report.envelopes} envelopes, {report.checkpoints} checkpoints "
              f"({report.signatures} signatures, {report.timestamps} timestamps checked) in {took:.1f} s",
              highlight=False)
    first = report.first_broken_batch()
    if report.ok:
        out.print("[green]the evidence holds[/green]" + (f" up to batch {report.anchored_to} under a verified "
                                                          "checkpoint" if report.anchored_to else ""))
    else:
        out.print("[red]the evidence is broken[/red]" + (f": first at batch {first}" if first else ""),
                  highlight=False)
        raise typer.Exit(1)


@journal_app.command("export")
def journal_export(out_file: Path = typer.Argument(..., metavar="OUT.zip", help="The archive to write"),
                   config: Path | None = ConfigOpt,
                   start: datetime | None = typer.Option(None, "--from", help="Batches sealed from this time (UTC)"),
                   end: datetime | None = typer.Option(None, "--to", help="… up to this time (UTC), not included"),
                   message: str | None = typer.Option(None, "--message", help="One message's evidence: envelope, "
                                                      "trail, Merkle proofs, the chain on to a checkpoint")) -> None:
    """Write an archive of the evidence that `journal verify-archive` checks without the database."""
    from gateway.evidence.archive import export_message, export_range
    from gateway.evidence.duty import trust_dirs
    from gateway.journal import Journal

    cfg = load_or_exit(config)
    journal = Journal(cfg.settings.database.url)
    trust, tsa = trust_dirs(cfg)
    if message is not None:
        if start or end:
            err.print("--message exports one message whatever the time: give it without --from/--to")
            raise typer.Exit(2)
        try:
            done = export_message(journal, out_file, message, trust_store=trust, tsa_trust_store=tsa)
        except LookupError as exc:
            err.print(str(exc), highlight=False)
            raise typer.Exit(1) from None
    else:
        done = export_range(journal, out_file, start=utc(start), end=utc(end), trust_store=trust, tsa_trust_store=tsa)
    out.print(f"{done.path}: {done.batches} batches, {done.events} events, {done.envelopes} envelopes, "
              f"{done.checkpoints} checkpoints, {done.bytes:,} bytes", highlight=False)


@journal_app.command("verify-archive")
def journal_verify_archive(archive: Path = typer.Argument(..., metavar="ARCHIVE.zip", exists=True, dir_okay=False),
                           trust: Path | None = typer.Option(None, "--trust", help="Your own CA certificates for the "
                                                             "gateway's signature (default: those in the archive)"),
                           tsa_trust: Path | None = typer.Option(None, "--tsa-trust", help="… for the TSA's "
                                                                 "(default: --trust, else the archive's)"),
                           quiet: bool = typer.Option(False, "--quiet", "-q", help="Only what is broken")) -> None:
    """Check an exported archive offline: no configuration, no database, no network. Exit 1 if broken."""
    from gateway.evidence.archive import ArchiveError, verify_archive
    from signing.trust import TrustStore

    anchors = TrustStore.from_directory(trust) if trust else None
    tsa_anchors = TrustStore.from_directory(tsa_trust) if tsa_trust else anchors
    began = time.perf_counter()
    try:
        report = verify_archive(archive, trust=anchors, tsa_trust=tsa_anchors)
    except ArchiveError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(2) from None
    _print(report, time.perf_counter() - began, quiet)


@journal_app.command("prune")
def journal_prune(config: Path | None = ConfigOpt,
                  limit: int | None = typer.Option(None, "--limit", help="At most this many messages"),
                  share: float | None = typer.Option(None, "--share", min=0.01, max=1.0,
                                                     help="Share of the time spent working, the rest resting "
                                                          "(default: retention.share; 1: no rest)")) -> None:
    """Run retention once now: archive, then remove, what `retention:` lets go (the reconciler does it hourly)."""
    from gateway.evidence.duty import pruner
    from gateway.journal import Journal
    from gateway.journal.exclusive import Busy

    cfg = load_or_exit(config)
    if not cfg.settings.retention.active:
        out.print("no retention rule: nothing is ever pruned (retention: in gateway.yaml)")
        return
    began = time.perf_counter()
    try:
        done = pruner(cfg, Journal(cfg.settings.database.url), share=share).run_once(limit=limit)
    except Busy as exc:
        err.print(f"{exc}: a prune run is under way (the reconciler's or another journal prune); "
                  "nothing done, try again when it has finished", highlight=False)
        raise typer.Exit(1) from None
    took = time.perf_counter() - began
    out.print(f"run {done.run}: {done.messages} messages ({done.events} events) and {done.envelopes} envelopes "
              f"removed, {done.held} held, {done.kept_for_records} kept for business records, "
              f"{len(done.archives)} archive(s) in {took:.1f} s", highlight=False)
    for a in done.archives:
        out.print(f"  {a['file']}  sha256 {a['sha256']}  {a['messages']} messages", highlight=False)


@journal_app.command("hold")
def journal_hold(reason: str = typer.Option(..., "--reason", help="Why (a case number): kept in the journal"),
                 config: Path | None = ConfigOpt,
                 message: str | None = typer.Option(None, "--message", help="One message"),
                 participant: str | None = typer.Option(None, "--participant", help="As sender or recipient"),
                 start: datetime | None = typer.Option(None, "--from", help="Messages accepted from (UTC)"),
                 end: datetime | None = typer.Option(None, "--to", help="… up to (UTC), not included")) -> None:
    """Place a legal hold: what it covers (all given must match) is not pruned until it is released."""
    from application.cli.console import audit_cli, cli_operator
    from gateway.evidence.retention import place_hold
    from gateway.journal import Journal

    cfg = load_or_exit(config)
    journal = Journal(cfg.settings.database.url)
    try:
        hold = place_hold(journal, reason=reason, by=cli_operator()[0], message_id=message, participant=participant,
                          period_from=utc(start), period_to=utc(end))
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    audit_cli(journal, "legal_hold", {"hold": hold, "reason": reason, "participant": participant,
                                      "from": str(start) if start else None, "to": str(end) if end else None},
              target=message)
    out.print(f"legal hold {hold} placed")


@journal_app.command("release")
def journal_release(hold: int = typer.Argument(..., help="The hold's number (journal holds)"),
                    config: Path | None = ConfigOpt) -> None:
    """Release a legal hold; what it covered is pruned by the next run if retention lets it go."""
    from application.cli.console import audit_cli, cli_operator
    from gateway.evidence.retention import release_hold
    from gateway.journal import Journal

    cfg = load_or_exit(config)
    journal = Journal(cfg.settings.database.url)
    if not release_hold(journal, hold, cli_operator()[0]):
        err.print(f"no legal hold {hold} in force")
        raise typer.Exit(1)
    audit_cli(journal, "legal_hold_release", {"hold": hold})
    out.print(f"legal hold {hold} released")


@journal_app.command("holds")
def journal_holds(config: Path | None = ConfigOpt) -> None:
    """The legal holds in force."""
    from sqlalchemy import select

    from gateway.journal import Journal
    from gateway.journal.tables import legal_holds

    cfg = load_or_exit(config)
    with Journal(cfg.settings.database.url).engine.connect() as conn:
        rows = conn.execute(select(legal_holds).where(legal_holds.c.released_at.is_(None))
                            .order_by(legal_holds.c.id)).all()
    for r in rows:
        what = ", ".join(f"{k} {v}" for k, v in (("message", r.message_id), ("participant", r.participant),
                                                  ("from", r.period_from), ("to", r.period_to)) if v)
        out.print(f"{r.id}: {what} — {r.reason} (by {r.placed_by}, {r.placed_at:%Y-%m-%d %H:%M})", highlight=False)
    if not rows:
        out.print("no legal hold in force")
