"""The evidence chain from the shell: seal and checkpoint now, and verify the chain with its checkpoints."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import typer

from application.cli.common import ConfigOpt, journal_app, keyring_or_exit, load_or_exit, out
from application.cli.console import utc


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
    from gateway.evidence.duty import tsa_trust
    from gateway.evidence.verify import verify_journal
    from gateway.journal import Journal

    cfg = load_or_exit(config)
    ring = keyring_or_exit(cfg)
    began = time.perf_counter()
    report = verify_journal(Journal(cfg.settings.database.url), trust=ring.trust, tsa_trust=tsa_trust(cfg),
                            start=utc(start), end=utc(end))
    took = time.perf_counter() - began
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
