"""Service acts: build the registers of a period (or write them for an operator), take a ФЛК protocol from a file."""
from __future__ import annotations

from pathlib import Path

import typer

from application.cli.common import (
    ConfigOpt,
    acts_app,
    err,
    keyring_or_exit,
    load_or_exit,
    or_exit,
    out,
    tariffs_or_exit,
)


@acts_app.command("build")
def acts_build(period: str = typer.Option(..., "--period", help="The reporting month, YYYY-MM"),
               insurer: str | None = typer.Option(None, "--insurer", help="Only this insurer's acts"),
               correction: bool = typer.Option(False, "--correction", help="Send a new version of acts already "
                                               "sent, naming the version it replaces"),
               out_dir: Path | None = typer.Option(None, "--out", file_okay=False, help="Write each act's archive "
                                                      "and .sig into this directory and send nothing"),
               config: Path | None = ConfigOpt) -> None:
    """Build each organisation's register per insurer for the period and send it; a period already sent is not
    resent. With --out the archives are written for an operator to check or hand over, and nothing is sent."""
    import re as _re

    from rich.progress import Progress

    if not _re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", period):
        err.print(f"--period must be YYYY-MM (got {period!r})")
        raise typer.Exit(2)
    runner = _act_runner(config)
    groups = runner.groups(period, insurer)
    if not groups:
        out.print(f"no service records for {period}" + (f" and {insurer}" if insurer else ""))
        raise typer.Exit(0)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(f"acts for {period}", total=len(groups))
        outcomes = runner.build(period, insurer, correction, progress=lambda _: bar.advance(task), out=out_dir)
    colours = {"sent": "green", "unchanged": "cyan", "changed": "yellow", "written": "green", "failed": "red"}
    for o in outcomes:
        version = f" v{o.version}" if o.version else ""
        out.print(f"[{colours[o.state]}]{o.state:<9}[/{colours[o.state]}] {o.code_mo} → {o.insurer}{version}: "
                  f"{o.detail}" + (f" ({o.message_id})" if o.state == "sent" else ""), highlight=False)
    raise typer.Exit(1 if any(o.state == "failed" for o in outcomes) else 0)


@acts_app.command("protocol")
def acts_protocol(file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                              help="The insurer's ФЛК protocol: FLK_P XML, or a ZIP of them"),
                  signature: Path | None = typer.Option(None, "--signature", exists=True, dir_okay=False,
                                                           help="Its detached CMS signature (.sig), by the insurer"),
                  config: Path | None = ConfigOpt) -> None:
    """Take a ФЛК protocol an insurer left as a file: mark the act's records and deliver it to the MIS, as if the
    insurer had sent it (its .sig stands for the envelope signature the route may require)."""
    from adapters.acts.protocol_file import import_protocol
    from gateway.errors import Rejection

    runner = _act_runner(config)
    try:
        accepted = import_protocol(runner, file, signature)
    except Rejection as exc:
        err.print(f"[red]{exc.code}[/red] [{exc.field}] {exc.detail}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"[green]accepted[/green] {file.name} from {accepted.envelope.sender} about act "
              f"{accepted.envelope.reference_message_id}: MessageID {accepted.outcome.message_id}", highlight=False)


def _act_runner(config: Path | None):
    from adapters.acts.runner import ActRunner
    from adapters.intake import Intake
    from gateway.accept import AcceptPipeline
    from gateway.journal import Journal

    cfg = load_or_exit(config)
    tariffs_or_exit(cfg)
    journal = Journal(cfg.settings.database.url)
    return ActRunner(cfg, journal, Intake(or_exit(AcceptPipeline, cfg, journal, keyring_or_exit(cfg)), journal))
