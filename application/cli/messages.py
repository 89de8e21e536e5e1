"""Looking after messages: a message's trail, replaying dead letters and kept lab messages, checking the journal."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer
from rich.table import Table

from application.cli import console as console_commands
from application.cli.common import (
    ConfigOpt,
    app,
    err,
    journal_app,
    keyring_or_exit,
    load_or_exit,
    mappings_or_exit,
    out,
)


@app.command()
def trail(message_id: str, config: Path | None = ConfigOpt,
          as_json: bool = typer.Option(False, "--json", help="Print the record and trail as JSON")) -> None:
    """Show a message's status and its whole event trail, and check the trail's hash chain."""
    from gateway.journal import Journal

    cfg = load_or_exit(config)
    journal = Journal(cfg.settings.database.url)
    rec = journal.get(message_id)
    if rec is None:
        err.print(f"no message {message_id}")
        raise typer.Exit(1)
    events = journal.trail(message_id)
    intact = journal.verify_trail(message_id)
    if as_json:
        print(json.dumps({"messageId": rec.message_id, "status": rec.status, "sender": rec.sender,
                          "recipient": rec.recipient, "route": rec.route, "attempts": rec.attempts,
                          "replays": rec.replays, "trailIntact": intact,
                          "trail": [{"at": ev.at.isoformat(), "status": ev.status, "event": ev.kind,
                                     "actor": ev.actor, "detail": ev.detail} for ev in events]},
                         ensure_ascii=False, indent=2))
    else:
        out.print(f"[bold]{rec.message_id}[/bold] {rec.status}  {rec.sender} → {rec.recipient}  route {rec.route}  "
                  f"attempts {rec.attempts}  replays {rec.replays}", highlight=False)
        table = Table("at", "status", "event", "actor", "detail")
        for ev in events:
            detail = ", ".join(f"{k}={v}" for k, v in ev.detail.items())
            table.add_row(ev.at.isoformat(timespec="milliseconds"), ev.status, ev.kind, ev.actor, detail)
        out.print(table)
        out.print("trail hash chain: " + ("[green]intact[/green]" if intact else "[red]BROKEN[/red]"))
    if not intact:
        raise typer.Exit(3)


@app.command()
def replay(message_id: str | None = typer.Argument(None, help="MessageID of a DEAD, FAILED or kept message"),
           all_dead: bool = typer.Option(False, "--all-dead", help="Replay every DEAD message"),
           kept: str | None = typer.Option(None, "--kept", help="Map again every message LAB sent that was "
                                              "refused for a mapping gap", metavar="LAB"),
           route: str | None = typer.Option(None, "--route", help="With --all-dead: only this route's"),
           recipient: str | None = typer.Option(None, "--recipient", help="With --all-dead: only to this recipient"),
           since: datetime | None = typer.Option(None, "--since", formats=console_commands.TIME_FORMATS,
                                                 help="With --all-dead: only those dead since (UTC)"),
           reason: str | None = typer.Option(None, "--reason", help="With --all-dead: only those whose reason "
                                             "contains this text"),
           dry_run: bool = typer.Option(False, "--dry-run", help="With --all-dead: say how many would go to whom"),
           config: Path | None = ConfigOpt) -> None:
    """Send dead letters again, or map kept lab messages again after their mapping was fixed."""
    from adapters.hl7v2.lab_intake import KEPT_NS
    from gateway.journal import Journal, Status
    from routing import replay as replaying
    from routing.topology import Topology

    if sum(map(bool, (message_id, all_dead, kept))) != 1:
        err.print("give one of: a MESSAGE_ID, --all-dead, --kept LAB")
        raise typer.Exit(2)
    cfg = load_or_exit(config)
    journal = Journal(cfg.settings.database.url)
    first = journal.get(message_id) if message_id else None
    if kept or (first is not None and first.message_type == KEPT_NS):
        records = [first] if first is not None else [
            r for r in journal.get_many(journal.with_status(Status.REJECTED)).values()
            if r.sender == kept and r.message_type == KEPT_NS]
        raise typer.Exit(_replay_kept(cfg, journal, records))
    if not all_dead and (route or recipient or since or reason or dry_run):
        err.print("--route, --recipient, --since, --reason and --dry-run go with --all-dead")
        raise typer.Exit(2)
    selection = replaying.dead_selection(route, recipient, console_commands.utc(since), reason)
    if dry_run:
        console_commands.replay_preview(journal, selection)
        return
    ids = replaying.selected_ids(journal, selection) if all_dead else [message_id]
    counts = {True: 0, False: 0}
    for r in replaying.replay(journal, ids):
        counts[r.replayed] += 1
        out.print(f"{'[green]replayed[/green]' if r.replayed else '[red]skipped[/red]'} {r.message_id}: {r.reason}",
                  highlight=False)
    if counts[True]:
        replaying.prune_dead_queue(cfg.settings.broker.nodes, Topology.of(cfg.settings.broker), journal)
    console_commands.audit_cli(journal, "replay", {"all_dead": all_dead, "route": route, "recipient": recipient,
                                                   "since": since, "reason": reason, "replayed": counts[True],
                                                   "skipped": counts[False]}, target=message_id)
    if all_dead:
        out.print(f"{counts[True]} replayed, {counts[False]} skipped")
    if counts[False]:
        raise typer.Exit(1)


def _replay_kept(cfg, journal, records) -> int:
    from adapters.hl7v2.lab_intake import LabIntake, replay_kept
    from adapters.intake import Intake
    from gateway.accept import AcceptPipeline

    labs = LabIntake(Intake(AcceptPipeline(cfg, journal, keyring_or_exit(cfg)), journal), mappings_or_exit(cfg))
    results = replay_kept(labs, records)
    if not results:
        err.print("nothing kept to map again")
        return 1
    for mid, outcome in results:
        if outcome.code == "AA":
            out.print(f"[green]mapped[/green] {mid}: accepted as a lab result", highlight=False)
        else:
            lines = [seg for seg in outcome.ack.decode("utf-8", "replace").split("\r") if seg.startswith("ERR")]
            out.print(f"[red]still refused[/red] {mid} ({outcome.code}): " + " | ".join(lines), highlight=False)
    return 0 if all(o.code == "AA" for _, o in results) else 1


@journal_app.command("check")
def journal_check(config: Path | None = ConfigOpt,
                  older_than: float | None = typer.Option(None, "--older-than", metavar="SECONDS",
                                                             help="Stuck means unchanged this long "
                                                                  "(default: reconciler.stuck_after_seconds)"),
                  repair: bool = typer.Option(False, "--repair", help="Run the reconciler and the sweeper once, "
                                              "prune the dead letter queue, then check again")) -> None:
    """Stuck messages, trails that do not verify, broker dead letters the journal does not know; exit 1 if any."""
    from gateway.journal import Journal
    from routing.journal_check import JournalCheck

    cfg = load_or_exit(config)
    check = JournalCheck(cfg, Journal(cfg.settings.database.url),
                         older_than if older_than is not None else cfg.settings.reconciler.stuck_after_seconds)
    if repair:
        done = check.repair()
        out.print(f"repair: {done['reconciled']} reconciled from the poison queue, {done['swept']} swept, "
                  f"{done['pruned']} stale copies pruned from the dead letter queue")
    found = check.run()
    for mid, why in found.stuck:
        out.print(f"[yellow]stuck[/yellow] {mid}: {why}", highlight=False)
    for mid in found.broken_trails:
        out.print(f"[red]trail does not verify[/red] {mid}", highlight=False)
    if not found.broker_reachable:
        out.print("[red]the broker is out of reach[/red]: queues not checked")
    if found.unreconciled:
        out.print(f"[red]{found.unreconciled} message(s) in the poison queue[/red] not yet DEAD in the journal "
                  "(is `zdravlink worker reconciler` running? --repair takes them)")
    if found.stale_dead_copies:
        out.print(f"{found.stale_dead_copies} stale copies in the dead letter queue (harmless; --repair prunes them)")
    out.print(f"{'[green]clean[/green]' if found.clean else '[red]not clean[/red]'}: {len(found.stuck)} stuck, "
              f"{len(found.broken_trails)} broken trails, {found.unreconciled} unreconciled")
    if not found.clean:
        raise typer.Exit(1)
