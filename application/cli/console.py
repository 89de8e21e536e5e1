"""``zdravlink operator …`` and ``zdravlink messages …``: what the console does, from a shell.

Registered in ``application.cli`` beside the other command groups; every import past
typer is made inside the command, so ``zdravlink --help`` stays quick.
An action taken here is written to the operator audit like the console's, with the
operator ``cli:<OS user>`` and the host as where it came from.
"""
from __future__ import annotations

import csv
import getpass
import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from gateway.journal import Journal
    from gateway.journal.search import MessageFilter

app = typer.Typer(add_completion=False)
operator_app = typer.Typer(help="Operators of the console (operators.yaml).", no_args_is_help=True)
messages_app = typer.Typer(help="Find messages in the journal, as the console's search does.", no_args_is_help=True)
app.add_typer(operator_app, name="operator")
app.add_typer(messages_app, name="messages")

ConfigOpt = typer.Option(None, "--config", "-c", help="Configuration directory (default: $ZL_CONFIG_DIR or ./config)")
TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]


def _config_dir(config: Path | None) -> Path:
    return Path(config or os.environ.get("ZL_CONFIG_DIR") or "config")


def utc(value: datetime | None) -> datetime | None:
    """A time given on the command line is UTC, as the journal's are."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def cli_operator() -> tuple[str, str]:
    """Who acts from the shell (the OS user) and from where (the host), for the operator audit."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}", socket.gethostname()


def audit_cli(journal: Journal, action: str, detail: dict[str, Any], target: str | None = None) -> None:
    from gateway.journal.search import audit

    name, host = cli_operator()
    audit(journal, name, "cli", action, target=target, detail=detail, remote=host)


def replay_preview(journal: Journal, selection: MessageFilter) -> None:
    """What ``replay --all-dead`` with these filters would send: how many, to whom. Sends nothing."""
    from gateway.journal.search import preview

    per_recipient = preview(journal, selection)
    for recipient, n in per_recipient.items():
        typer.echo(f"  {recipient:<20} {n}")
    typer.echo(f"{sum(per_recipient.values())} would be replayed (dry run: nothing sent)")


@operator_app.command("add")
def operator_add(name: str = typer.Argument(..., help="Sign-in name: lower case letters, digits, . _ @ -"),
                 role: str = typer.Option(..., "--role", help="viewer | operator | admin"),
                 full_name: str | None = typer.Option(None, "--full-name", help="Shown in the audit's listing"),
                 password_stdin: bool = typer.Option(False, "--password-stdin",
                                                     help="Read the password from standard input (for scripts)"),
                 sso_only: bool = typer.Option(False, "--sso-only", help="No password: signs in through the "
                                               "trusted SSO header only"),
                 config: Path | None = ConfigOpt) -> None:
    """Add an operator (or replace one of that name) in operators.yaml, with an argon2id hash of the password."""
    from pydantic import ValidationError

    from adapters.console.operators import FILE, add_operator
    from gateway.config import ConfigError

    if role not in ("viewer", "operator", "admin"):
        typer.echo("--role must be viewer, operator or admin", err=True)
        raise typer.Exit(2)
    password: str | None = None
    if not sso_only:
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        if len(password) < 10:
            typer.echo("the password must have at least 10 characters", err=True)
            raise typer.Exit(2)
    directory = _config_dir(config)
    try:
        replaced = add_operator(directory, name, role, password, full_name)
    except ConfigError as exc:
        for p in exc.problems:
            typer.echo(f"{p.file}: {p.key}: {p.rule}", err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        typer.echo(f"{name!r}: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{'replaced' if replaced else 'added'} {name} ({role}) in {directory / FILE}")


@operator_app.command("list")
def operator_list(config: Path | None = ConfigOpt) -> None:
    """The operators in operators.yaml with their roles (never their hashes)."""
    from adapters.console.operators import load_operators

    for o in load_operators(_config_dir(config)).operators:
        how = "password" if o.password_hash else "sso"
        typer.echo(f"{o.name:<24} {o.role:<9} {how:<8} {o.full_name or ''}".rstrip())


@operator_app.command("audit")
def operator_audit(operator: str | None = typer.Option(None, "--operator", help="Only this operator's actions"),
                   action: str | None = typer.Option(None, "--action", help="login, view_payload, replay, remap …"),
                   limit: int = typer.Option(50, "--limit", min=1, max=10_000),
                   config: Path | None = ConfigOpt) -> None:
    """The operator audit, newest first: who did what, on what, from where, when."""
    from gateway.config import load_config
    from gateway.journal import Journal
    from gateway.journal.search import audit_rows

    journal = Journal(load_config(_config_dir(config)).settings.database.url)
    rows, _ = audit_rows(journal, operator=operator, action=action, limit=limit)
    for _id, a in rows:
        detail = ", ".join(f"{k}={v}" for k, v in a.detail.items())
        typer.echo(f"{a.at.isoformat(timespec='seconds')}  {a.operator:<16} {a.role:<8} {a.action:<14} "
                   f"{a.outcome:<9} {a.target or '-':<36} {a.remote or '-':<15} {detail}")


@messages_app.command("search")
def messages_search(message_id: str | None = typer.Option(None, "--id", help="A MessageID"),
                    sender: str | None = typer.Option(None, "--sender"),
                    recipient: str | None = typer.Option(None, "--recipient"),
                    message_type: str | None = typer.Option(None, "--type", help="The message type (namespace)"),
                    route: str | None = typer.Option(None, "--route"),
                    status: list[str] | None = typer.Option(None, "--status", help="Repeat for several"),
                    since: datetime | None = typer.Option(None, "--since", formats=TIME_FORMATS,
                                                             help="Accepted at or after (UTC)"),
                    until: datetime | None = typer.Option(None, "--until", formats=TIME_FORMATS,
                                                             help="Accepted before (UTC)"),
                    result_id: str | None = typer.Option(None, "--result-id", help="A lab result's ResultId"),
                    msh10: str | None = typer.Option(None, "--msh10", help="A lab message's MSH-10"),
                    oldest_first: bool = typer.Option(False, "--oldest-first"),
                    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="Rows per page"),
                    after: str | None = typer.Option(None, "--after", help="The cursor printed under a page"),
                    csv_out: Path | None = typer.Option(None, "--csv", help="Write every match to this CSV "
                                                           "file (- for standard output) instead of one page"),
                    config: Path | None = ConfigOpt) -> None:
    """Search the journal by MessageID, sender, recipient, type, route, status, time, lab ResultId or MSH-10."""
    from adapters.hl7v2.oru import message_id_for
    from gateway.config import ConfigError, load_config
    from gateway.journal import Journal, Status, search

    directory = _config_dir(config)
    try:
        cfg = load_config(directory)
    except ConfigError as exc:
        for p in exc.problems:
            typer.echo(f"{p.file}: {p.key}: {p.rule}", err=True)
        raise typer.Exit(2) from None
    bad = [s for s in status or [] if s not in {st.value for st in Status}]
    if bad:
        typer.echo(f"--status {bad[0]!r} is not one of {', '.join(st.value for st in Status)}", err=True)
        raise typer.Exit(2)
    labs = [p.stem for p in sorted((directory / "mappings").glob("*.yaml"))] if msh10 else []
    f = search.MessageFilter(message_id=message_id, sender=sender, recipient=recipient, message_type=message_type,
                             route=route, statuses=tuple(status or ()), since=utc(since), until=utc(until),
                             result_id=result_id,
                             message_ids=tuple(message_id_for(lab, msh10) for lab in labs) if msh10 else None)
    journal = Journal(cfg.settings.database.url)
    if csv_out is not None:
        audit_cli(journal, "export_csv", {"to": str(csv_out)})
        with (sys.stdout if str(csv_out) == "-" else csv_out.open("w", newline="", encoding="utf-8")) as fh:
            writer = csv.writer(fh)
            writer.writerow(["message_id", "created_at", "status", "sender", "recipient", "message_type", "route",
                             "attempts", "replays", "last_error"])
            for row in search.iterate(journal, f, newest_first=not oldest_first):
                writer.writerow([row.message_id, row.created_at.isoformat(), row.status, row.sender, row.recipient,
                                 row.message_type, row.route or "", row.attempts, row.replays, row.last_error or ""])
        return
    try:
        page = search.search(journal, f, newest_first=not oldest_first, cursor=after, limit=limit)
    except ValueError:
        typer.echo("--after: not a cursor printed under a page of this search", err=True)
        raise typer.Exit(2) from None
    count, more = search.count_upto(journal, f)
    for row in page.rows:
        typer.echo(f"{row.created_at.isoformat(timespec='seconds')}  {row.message_id}  {row.status:<15} "
                   f"{row.sender} → {row.recipient}  {row.route or '-'}  {(row.last_error or '')[:80]}")
    typer.echo(f"{'more than ' if more else ''}{count} found" +
               (f"; next page: --after '{page.next_cursor}'" if page.next_cursor else ""))
