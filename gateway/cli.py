"""The ``zdravlink`` command: run the gateway, check configuration, replay, inspect."""
from __future__ import annotations

import json
import sys
import uuid
import datetime as dt
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from adapters.console import commands as console_commands
from gateway.config import ConfigError, hash_token
from gateway.services import config_dir, load, setup_logging

app = typer.Typer(help="Zdravlink: a signing, validating, routing integration gateway.", no_args_is_help=True,
                  add_completion=False)
worker_app = typer.Typer(help="Run one kind of worker process.", no_args_is_help=True)
acts_app = typer.Typer(help="Service acts for insurers.", no_args_is_help=True)
demo_app = typer.Typer(help="Demo partners and sample traffic.", no_args_is_help=True)
db_app = typer.Typer(help="Journal database.", no_args_is_help=True)
journal_app = typer.Typer(help="The journal's consistency with itself and with the broker.", no_args_is_help=True)
keys_app = typer.Typer(help="Keys and certificates.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")
app.add_typer(acts_app, name="acts")
app.add_typer(keys_app, name="keys")
app.add_typer(demo_app, name="demo")
app.add_typer(db_app, name="db")
app.add_typer(journal_app, name="journal")
app.add_typer(console_commands.app)  # zdravlink operator …, zdravlink messages … (adapters/console/commands.py)
# Piped output (logs, CI, `| less`) gets a wide fixed width instead of rich's 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)

ConfigOpt = typer.Option(None, "--config", "-c", help="Configuration directory (default: $ZL_CONFIG_DIR or ./config)")
T = TypeVar("T")
DEMO_FRMR_TOKEN = "demo-frmr-token"  # the demo ФРМР emulator's bearer token; never a real one


def _exit_with(problems: list) -> NoReturn:  # type: ignore[type-arg] (ConfigProblem, imported lazily)
    """Every configuration problem on its own line, file, key and rule, then exit 2."""
    for p in problems:
        err.print(f"[red]{p.file}[/red]: [bold]{p.key}[/bold]: {p.rule}", highlight=False)
    raise typer.Exit(2)


def _or_exit(step: Callable[..., T], *args: Any) -> T:
    """Run a loading step; its ConfigError is printed problem by problem and ends the command with 2."""
    try:
        return step(*args)
    except ConfigError as exc:
        _exit_with(exc.problems)


def _load_or_exit(directory: Optional[Path]):  # noqa: ANN202
    return _or_exit(load, directory)


def _keyring_or_exit(cfg):  # noqa: ANN001, ANN202
    from gateway.keyring import load_keyring

    return _or_exit(load_keyring, cfg)


def _mappings_or_exit(cfg):  # noqa: ANN001, ANN202
    from gateway.services import load_lab_mappings

    return _or_exit(load_lab_mappings, cfg)


def _tariffs_or_exit(cfg):  # noqa: ANN001, ANN202
    """The tariff table; the OMS register profiles (oms/) are checked with it: service records need both."""
    from gateway.config import ConfigProblem
    from gateway.oms.profiles import load_oms_config
    from gateway.tariffs import load_tariffs

    problems: list[ConfigProblem] = []
    table = load_tariffs(cfg.directory, problems)
    load_oms_config(cfg, problems)
    if problems:
        _exit_with(problems)
    return table


@app.command("check-config")
def check_config(directory: Optional[Path] = typer.Argument(None, help="Configuration directory")) -> None:
    """Validate participants, routes, settings, lab mappings, keys and certificates without starting anything."""
    cfg = _load_or_exit(directory)
    ring = _keyring_or_exit(cfg)
    labs = _mappings_or_exit(cfg)
    tariffs = _tariffs_or_exit(cfg)
    from adapters.console.operators import load_operators

    _or_exit(load_operators, cfg.directory)
    out.print(f"[green]OK[/green] {config_dir(directory)}: {len(cfg.participants)} participants, "
              f"{len(cfg.routes)} routes, {len(labs)} lab mappings, {len(tariffs)} tariffs")
    for owner, cert in ring.owned_certificates():
        days = cert.days_left()
        colour = "red" if days < 0 else "yellow" if days < 30 else "green"
        out.print(f"  {owner:<14} [{colour}]{days:7.0f} days[/{colour}]  {cert.describe()}", highlight=False)


@app.command()
def run(config: Optional[Path] = ConfigOpt,
        demo: bool = typer.Option(True, "--demo/--no-demo", help="Start the demo partner servers too")) -> None:
    """Run the whole gateway: API with outbox relay, router, delivery workers (and demo partners)."""
    import os

    from gateway.services import Supervisor

    setup_logging("supervisor")
    if demo:
        os.environ.setdefault("ZL_FRMR_TOKEN", DEMO_FRMR_TOKEN)  # the demo ФРМР's token, for every child process
    cfg = _load_or_exit(config)
    _keyring_or_exit(cfg)
    s = cfg.settings
    base = f"http://{s.api.host}:{s.api.port}"
    out.print(f"[bold green]Zdravlink[/bold green] on {config_dir(config)} — journal {s.database.url.split('@')[-1]}")
    out.print(f"  API      {base}/api/v1/messages")
    out.print(f"  docs     {base}/docs")
    out.print(f"  SMEV 3   {base}/smev/1.1?wsdl   pull inbox {base}/api/v1/inbox")
    labs = _mappings_or_exit(cfg)
    if s.hl7.enabled and labs:
        out.print(f"  HL7 v2   mllp://{s.hl7.host}:{s.hl7.port}   labs: {', '.join(sorted(labs))}")
    out.print(f"  metrics  {base}/metrics   health {base}/healthz   ready {base}/readyz")
    out.print(f"  console  {base}/console   (operators: zdravlink operator add NAME --role admin)")
    if demo:
        for p in cfg.participants.values():
            if p.delivery.mode == "soap":
                out.print(f"  partner  {p.mnemonic:<14} receives by SOAP, WSDL {p.delivery.wsdl}")
            elif p.delivery.mode == "registry":
                out.print(f"  registry {p.mnemonic:<14} emulator answers at {p.delivery.url}")
            elif p.delivery.url:
                out.print(f"  partner  {p.mnemonic:<14} receives at {p.delivery.url}")
        out.print("  try      zdravlink demo send [--soap]   (a notice from lab-demo to clinic-mis, REST or SMEV)")
        out.print("           zdravlink demo send --verify   (clinic-mis asks ФРМР and ФРМО; answers come back to it)")
    raise typer.Exit(Supervisor(cfg, config_dir(config), demo).run())


@app.command("map")
def map_cmd(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="An HL7 v2 message (CR or LF segments)"),
            lab: str = typer.Option(..., "--lab", help="The lab whose mapping file to use"),
            config: Optional[Path] = ConfigOpt) -> None:
    """Print the lab result a message becomes under its lab's mapping, or its gaps; sends nothing."""
    from lxml import etree

    from adapters.hl7v2.lab_intake import parse_for_cli
    from adapters.hl7v2.oru import MappingGaps, map_message
    from gateway import schemas

    cfg = _load_or_exit(config)
    labs = _mappings_or_exit(cfg)
    if lab not in labs:
        err.print(f"no mapping file for {lab!r} in {cfg.directory / 'mappings'} (have: {', '.join(sorted(labs))})")
        raise typer.Exit(2)
    try:
        mapped = map_message(parse_for_cli(file.read_bytes()), labs[lab])
    except MappingGaps as exc:
        for g in exc.gaps:
            err.print(f"{g.where}: {g.code}: {g.reason}", highlight=False)
        raise typer.Exit(1) from None
    except Exception as exc:
        err.print(f"{file}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    try:
        schemas.validate_payload("urn://zdravlink/types/lab-result/1.0", mapped.payload)
    except Exception as exc:
        err.print(f"the result does not pass its schema: {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"<!-- {lab} → {mapped.recipient}, MessageID {mapped.message_id} (from MSH-10 {mapped.control_id}) -->",
              highlight=False)
    sys.stdout.write(etree.tostring(mapped.payload, pretty_print=True, encoding="unicode"))


@app.command()
def serve(config: Optional[Path] = ConfigOpt,
          migrate: bool = typer.Option(True, "--migrate/--no-migrate", help="Upgrade the journal schema first")) -> None:
    """Run the HTTP API with the outbox relay (one process)."""
    from gateway.services import serve_api

    setup_logging("api")
    cfg = _load_or_exit(config)
    _tariffs_or_exit(cfg)
    serve_api(cfg, _keyring_or_exit(cfg), migrate=migrate)


@worker_app.command("router")
def worker_router(config: Optional[Path] = ConfigOpt) -> None:
    """Consume published messages and route them to their recipient's delivery queue."""
    from gateway.services import run_worker

    setup_logging("router")
    cfg = _load_or_exit(config)
    run_worker(cfg, _keyring_or_exit(cfg), "router")


@worker_app.command("delivery")
def worker_delivery(config: Optional[Path] = ConfigOpt) -> None:
    """Deliver routed messages with retries, failover and dead letters."""
    from gateway.services import run_worker

    setup_logging("delivery")
    cfg = _load_or_exit(config)
    run_worker(cfg, _keyring_or_exit(cfg), "delivery")


@worker_app.command("reconciler")
def worker_reconciler(config: Optional[Path] = ConfigOpt) -> None:
    """Record in the journal what RabbitMQ dead-lettered by itself, and send stuck messages round again."""
    from gateway.services import run_worker

    setup_logging("reconciler")
    cfg = _load_or_exit(config)
    run_worker(cfg, _keyring_or_exit(cfg), "reconciler")


@worker_app.command("mllp")
def worker_mllp(config: Optional[Path] = ConfigOpt) -> None:
    """Listen for HL7 v2 over MLLP and turn lab messages into lab results by their mapping files."""
    from gateway.services import run_mllp

    setup_logging("mllp")
    cfg = _load_or_exit(config)
    run_mllp(cfg, _keyring_or_exit(cfg), _mappings_or_exit(cfg))


@worker_app.command("deadlines")
def worker_deadlines(config: Optional[Path] = ConfigOpt) -> None:
    """Answer TIMEOUT to registry requests past their deadline (registries in gateway.yaml)."""
    from gateway.services import run_deadlines

    setup_logging("deadlines")
    cfg = _load_or_exit(config)
    run_deadlines(cfg, _keyring_or_exit(cfg))


@worker_app.command("acts")
def worker_acts(config: Optional[Path] = ConfigOpt) -> None:
    """Build and send the previous month's service acts on the schedule in gateway.yaml (acts)."""
    from gateway.services import run_acts

    setup_logging("acts")
    cfg = _load_or_exit(config)
    _tariffs_or_exit(cfg)
    run_acts(cfg, _keyring_or_exit(cfg))


@app.command()
def replay(message_id: Optional[str] = typer.Argument(None, help="MessageID of a DEAD, FAILED or kept message"),
           all_dead: bool = typer.Option(False, "--all-dead", help="Replay every DEAD message"),
           kept: Optional[str] = typer.Option(None, "--kept", help="Map again every message LAB sent that was "
                                              "refused for a mapping gap", metavar="LAB"),
           route: Optional[str] = typer.Option(None, "--route", help="With --all-dead: only this route's"),
           recipient: Optional[str] = typer.Option(None, "--recipient", help="With --all-dead: only to this recipient"),
           since: Optional[datetime] = typer.Option(None, "--since", formats=console_commands.TIME_FORMATS,
                                                    help="With --all-dead: only those dead since (UTC)"),
           reason: Optional[str] = typer.Option(None, "--reason", help="With --all-dead: only those whose reason "
                                                "contains this text"),
           dry_run: bool = typer.Option(False, "--dry-run", help="With --all-dead: say how many would go to whom"),
           config: Optional[Path] = ConfigOpt) -> None:
    """Send dead letters again, or map kept lab messages again after their mapping was fixed."""
    from adapters.hl7v2.lab_intake import KEPT_NS
    from gateway.journal import Journal, Status
    from routing import replay as replaying
    from routing.topology import Topology

    if sum(map(bool, (message_id, all_dead, kept))) != 1:
        err.print("give one of: a MESSAGE_ID, --all-dead, --kept LAB")
        raise typer.Exit(2)
    cfg = _load_or_exit(config)
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
        replaying.prune_dead_queue(cfg.settings.broker.url, Topology.of(cfg.settings.broker), journal)
    console_commands.audit_cli(journal, "replay", {"all_dead": all_dead, "route": route, "recipient": recipient,
                                                   "since": since, "reason": reason, "replayed": counts[True],
                                                   "skipped": counts[False]}, target=message_id)
    if all_dead:
        out.print(f"{counts[True]} replayed, {counts[False]} skipped")
    if counts[False]:
        raise typer.Exit(1)


def _replay_kept(cfg, journal, records) -> int:  # noqa: ANN001
    from adapters.hl7v2.lab_intake import LabIntake, replay_kept
    from adapters.intake import Intake
    from gateway.accept import AcceptPipeline

    labs = LabIntake(Intake(AcceptPipeline(cfg, journal, _keyring_or_exit(cfg)), journal), _mappings_or_exit(cfg))
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


@acts_app.command("build")
def acts_build(period: str = typer.Option(..., "--period", help="The reporting month, YYYY-MM"),
               insurer: Optional[str] = typer.Option(None, "--insurer", help="Only this insurer's acts"),
               correction: bool = typer.Option(False, "--correction", help="Send a new version of acts already "
                                               "sent, naming the version it replaces"),
               out_dir: Optional[Path] = typer.Option(None, "--out", file_okay=False, help="Write each act's archive "
                                                      "and .sig into this directory and send nothing"),
               config: Optional[Path] = ConfigOpt) -> None:
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
                  signature: Optional[Path] = typer.Option(None, "--signature", exists=True, dir_okay=False,
                                                           help="Its detached CMS signature (.sig), by the insurer"),
                  config: Optional[Path] = ConfigOpt) -> None:
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


def _act_runner(config: Optional[Path]):  # noqa: ANN202 (ActRunner, imported lazily)
    from adapters.acts.runner import ActRunner
    from adapters.intake import Intake
    from gateway.accept import AcceptPipeline
    from gateway.journal import Journal

    cfg = _load_or_exit(config)
    _tariffs_or_exit(cfg)
    journal = Journal(cfg.settings.database.url)
    return ActRunner(cfg, journal, Intake(_or_exit(AcceptPipeline, cfg, journal, _keyring_or_exit(cfg)), journal))


@app.command()
def trail(message_id: str, config: Optional[Path] = ConfigOpt,
          as_json: bool = typer.Option(False, "--json", help="Print the record and trail as JSON")) -> None:
    """Show a message's status and its whole event trail, and check the trail's hash chain."""
    from gateway.journal import Journal

    cfg = _load_or_exit(config)
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


@db_app.command("upgrade")
def db_upgrade(config: Optional[Path] = ConfigOpt) -> None:
    """Apply journal schema migrations (Alembic)."""
    from gateway.journal import Journal

    Journal(_load_or_exit(config).settings.database.url).migrate()
    out.print("journal schema is current")


@journal_app.command("check")
def journal_check(config: Optional[Path] = ConfigOpt,
                  older_than: Optional[float] = typer.Option(None, "--older-than", metavar="SECONDS",
                                                             help="Stuck means unchanged this long "
                                                                  "(default: reconciler.stuck_after_seconds)"),
                  repair: bool = typer.Option(False, "--repair", help="Run the reconciler and the sweeper once, "
                                              "prune the dead letter queue, then check again")) -> None:
    """Stuck messages, trails that do not verify, broker dead letters the journal does not know; exit 1 if any."""
    from gateway.journal import Journal
    from routing.journal_check import JournalCheck

    cfg = _load_or_exit(config)
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


@app.command("declare-topology")
def declare_topology_cmd(config: Optional[Path] = ConfigOpt) -> None:
    """Declare the durable RabbitMQ exchanges and quorum queues."""
    from gateway.services import declare_topology

    declare_topology(_load_or_exit(config))
    out.print("topology declared")


@app.command()
def transform(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="XML file")) -> None:
    """Write the SMEV transform (urn://smev-gov-ru/xmldsig/transform) of FILE's root element to stdout."""
    from gateway.errors import Rejection
    from gateway.xmlsafe import parse_xml
    from signing.smev_transform import TransformError, transform as smev_transform

    try:
        sys.stdout.buffer.write(smev_transform(parse_xml(file.read_bytes())))
    except (Rejection, TransformError) as exc:
        err.print(f"{file}: {exc}", highlight=False)
        raise typer.Exit(1) from None


@keys_app.command("demo")
def keys_demo(config: Optional[Path] = ConfigOpt,
              out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write (default: <config>/keys)")) -> None:
    """Create a demo CA and GOST 2012 (256, 512) and RSA keys for the gateway and every participant.

    Existing files are kept; never use these keys outside a demo.
    """
    from signing.demo_ca import KEY_TYPES, DemoCAError, create_demo_keys

    cfg = _load_or_exit(config)
    target = out_dir or cfg.directory / "keys"
    names = ["gateway", *sorted(cfg.participants)]
    try:
        create_demo_keys(target, names, KEY_TYPES)
    except DemoCAError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from None
    out.print(f"demo CA, trust store and keys for {', '.join(names)} in {target}", highlight=False)


def _signer(key: Optional[Path], cert: Optional[Path], password_env: Optional[str], alg: Optional[str],
            config: Optional[Path]):  # noqa: ANN202
    import os

    from signing import Certificate, KeyFileError, PrivateKey, Signer

    if key is None:
        ring = _keyring_or_exit(_load_or_exit(config))
        if ring.signer is None:
            err.print("no --key given and the configuration has no signing key")
            raise typer.Exit(2)
        if alg is None or alg == ring.signer.algorithm.name:
            return ring.signer
        return Signer.create(ring.signer.key, ring.signer.certificate, alg)
    password = os.environ.get(password_env) if password_env else None
    try:
        return Signer.create(PrivateKey.load(key, password), Certificate.load(cert or key, password), alg)
    except (KeyFileError, ValueError) as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(2) from None


@app.command("sign")
def sign_cmd(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="XML file"),
             ref_id: str = typer.Option(..., "--id", help="Id of the element to sign"),
             alg: Optional[str] = typer.Option(None, "--alg", help="gost2012-256 | gost2012-512 | rsa-sha256 "
                                                                   "(default: from the key)"),
             key: Optional[Path] = typer.Option(None, help="Private key (PEM, DER or .p12); default: the gateway's"),
             cert: Optional[Path] = typer.Option(None, help="Certificate (PEM or DER; not needed with a .p12 key)"),
             password_env: Optional[str] = typer.Option(None, help="Environment variable holding the key's password"),
             smev: bool = typer.Option(True, "--smev/--no-smev", help="Apply the SMEV transform to the reference"),
             output: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of stdout"),
             config: Optional[Path] = ConfigOpt) -> None:
    """Add a detached XML-DSig over the element with Id ID and write the signed document.

    In a zl:Envelope the signature goes into SenderSignature; elsewhere it is placed right
    after the signed element, as SMEV places CallerInformationSystemSignature.
    """
    from lxml import etree

    from gateway.errors import Rejection
    from gateway.keyring import place_signature
    from gateway.xmlsafe import parse_xml
    from signing import ALGORITHMS, sign

    if alg is not None and alg not in ALGORITHMS:
        err.print(f"--alg must be one of {', '.join(ALGORITHMS)}")
        raise typer.Exit(2)
    try:
        root = parse_xml(file.read_bytes())
    except Rejection as exc:
        err.print(f"{file}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    targets = root.xpath("//*[@Id=$v or @ID=$v or @id=$v]", v=ref_id)
    if len(targets) != 1:
        err.print(f"{file}: {len(targets)} elements carry Id {ref_id!r}; exactly one is needed")
        raise typer.Exit(1)
    signer = _signer(key, cert, password_env, alg, config)
    try:
        place_signature(targets[0], sign(targets[0], signer, smev=smev))
    except ValueError as exc:
        err.print(f"{file}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    data = etree.tostring(root, encoding="UTF-8", xml_declaration=True)
    if output:
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


@app.command("verify")
def verify_cmd(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="XML file"),
               trust: Optional[Path] = typer.Option(None, help="Trust store directory (default: the configuration's)"),
               cert: Optional[list[Path]] = typer.Option(None, help="Accept only these signer certificates"),
               config: Optional[Path] = ConfigOpt) -> None:
    """Verify every ds:Signature in FILE; exit 1 if any is refused, printing its code.

    With the configuration, a zl:Envelope's SenderSignature must be by the Sender's
    certificate and its GatewaySignature by the gateway's.
    """
    from gateway.errors import Rejection
    from gateway.keyring import expected_signers
    from gateway.xmlsafe import parse_xml
    from signing import Certificate, KeyFileError, SignatureError, TrustStore, verify
    from signing.xmldsig import DS_NS

    ring = None
    try:
        root = parse_xml(file.read_bytes())
        if trust is None:
            ring = _keyring_or_exit(_load_or_exit(config))
            if ring.trust is None:
                err.print("the configuration has no signing.trust_store; give --trust DIR")
                raise typer.Exit(2)
            store = ring.trust
        else:
            store = TrustStore.from_directory(trust)
        pinned = [Certificate.load(c) for c in cert or []]
    except (Rejection, KeyFileError) as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(2) from None
    signatures = root.iter(f"{{{DS_NS}}}Signature")
    failed = found = 0
    for sig in signatures:
        found += 1
        expected, signers = expected_signers(sig, ring)
        try:
            v = verify(sig, document=root, trust=store, expected=expected, signers=pinned or signers)
            out.print(f"[green]OK[/green] {', '.join(v.references)} {v.algorithm.name} by {v.certificate.describe()}",
                      highlight=False)
        except SignatureError as exc:
            failed += 1
            out.print(f"[red]{exc.code}[/red] {exc.detail}", highlight=False)
    if not found:
        out.print("[red]no ds:Signature found[/red]")
    if failed or not found:
        raise typer.Exit(1)


@app.command("hash-token")
def hash_token_cmd(token: str) -> None:
    """Print the sha256 of an API token, for credentials.api_token_sha256 in participants.yaml."""
    out.print(hash_token(token))


@demo_app.command("partners")
def demo_partners(config: Optional[Path] = ConfigOpt) -> None:
    """Run a demo server for every participant that receives by REST or SOAP push on 127.0.0.1 (insurers as
    insurer emulators) and for every registry channel there (ФРМР and ФРМО emulators)."""
    import signal
    import threading
    from urllib.parse import urlsplit

    from adapters.emulators.rest_recipient import RecipientServer
    from adapters.emulators.soap_partner import SoapPartner

    setup_logging("demo-partners")
    cfg = _load_or_exit(config)
    ring = _keyring_or_exit(cfg)
    gateway_cert = ring.signer.certificate if ring.signer else None
    ports: dict[int, tuple[str, str]] = {}
    channels = [(f"{r.recipient}/{ch.name}", ch) for r in cfg.routes for ch in r.channels]
    channels += [(p.mnemonic, p.delivery) for p in cfg.participants.values()]
    for name, ch in channels:
        where = urlsplit(ch.wsdl if ch.mode == "soap" else ch.url or "")
        if ch.mode in ("rest", "soap") and where.hostname == "127.0.0.1":
            ports.setdefault(where.port or 80, (name, ch.mode))
        elif ch.mode == "registry" and where.hostname == "127.0.0.1":
            ports.setdefault(where.port or 80, (name, ch.registry or ""))

    def server(port: int, name: str, mode: str):  # noqa: ANN202 - one of the emulators
        owner = cfg.participants.get(name.split("/")[0])
        if mode in ("frmr", "frmo"):
            return _demo_registry(cfg, owner.mnemonic if owner else mode, mode, port)
        if mode == "soap" and owner is not None and owner.kind == "insurer":
            return _demo_insurer(cfg, owner.mnemonic, port)
        if mode == "soap":
            return SoapPartner(port=port, name=name)
        return RecipientServer(port=port, name=name, trust=ring.trust, gateway=gateway_cert)

    servers = [server(port, name, mode).start() for port, (name, mode) in sorted(ports.items())]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    for s in servers:
        s.stop()


def _demo_registry(cfg, mnemonic: str, registry: str, port: int):  # noqa: ANN001, ANN202
    """ФРМР or ФРМО on the bundled fictitious dataset, signing its answers with the registry's demo key."""
    import os

    from adapters.emulators.registries import DEMO_DATASET, FrmoEmulator, FrmrEmulator, load_dataset
    from signing.demo_ca import demo_signer

    signer = demo_signer(cfg.directory / "keys", mnemonic)
    dataset = load_dataset(DEMO_DATASET)
    if registry == "frmr":
        return FrmrEmulator(dataset, token=os.environ.get("ZL_FRMR_TOKEN", DEMO_FRMR_TOKEN), port=port,
                            signer=signer, name=f"{mnemonic}:{port}")
    return FrmoEmulator(dataset, port=port, signer=signer, name=f"{mnemonic}:{port}")


def _demo_insurer(cfg, mnemonic: str, port: int):  # noqa: ANN001, ANN202
    """An insurer that runs the ФЛК of its region profile (oms/insurers.yaml) on each register and answers
    with a signed ФЛК protocol through the API; without a profile it answers act-protocols on the tariffs."""
    import os

    from adapters.emulators.insurer import InsurerEmulator
    from gateway.oms.profiles import load_oms_config
    from signing.demo_ca import demo_signer

    from adapters.acts.schedule import previous_period

    last_month = dt.date.fromisoformat(previous_period(dt.date.today()) + "-01")
    prices = _tariffs_or_exit(cfg).prices_on(last_month)  # exits on any problem of oms/ too
    oms = load_oms_config(cfg, [])
    binding = oms.insurers.get(mnemonic)
    region = dict(answer="flk", profile=oms.profiles[binding.profile], editions=binding.editions) if binding else {}
    signer = demo_signer(cfg.directory / "keys", mnemonic)
    s = cfg.settings.api
    return InsurerEmulator(prices, mnemonic=mnemonic, port=port, signer=signer, gateway_url=f"http://{s.host}:{s.port}",
                           token=os.environ.get("ZL_DEMO_INSURER_TOKEN", "demo-insurer-token"), **region)


@demo_app.command("send")
def demo_send(config: Optional[Path] = ConfigOpt, count: int = typer.Option(1, help="How many notices"),
              token: str = typer.Option("demo-lab-token", help="Sender's API token"),
              signed: bool = typer.Option(True, "--sign/--no-sign", help="Sign as lab-demo with its demo key"),
              soap: bool = typer.Option(False, "--soap", help="Send as SMEV 3 SendRequest to /smev/1.1"),
              hl7v2: bool = typer.Option(False, "--hl7", help="Send lab results as HL7 v2 ORU^R01 over MLLP"),
              records: bool = typer.Option(False, "--records", help="Send clinic-mis's service records for last "
                                           "month to insurer-demo"),
              verify: bool = typer.Option(False, "--verify", help="Ask ФРМР about a doctor and ФРМО about an "
                                          "organisation, as clinic-mis")) -> None:
    """Send demo messages: notices from lab-demo to clinic-mis (REST, or SMEV with --soap), lab results (--hl7),
    service records (--records) or registry verification requests (--verify)."""
    if verify:
        _demo_verify(_load_or_exit(config))
        return
    if hl7v2:
        _demo_hl7(_load_or_exit(config), count)
        return
    if records:
        _demo_records(_load_or_exit(config), count)
        return
    import httpx

    from adapters.soap import smev_client
    from gateway.envelope import Envelope
    from gateway.xmlsafe import parse_xml
    from signing import sign
    from signing.demo_ca import demo_signer

    cfg = _load_or_exit(config)
    base = f"http://{cfg.settings.api.host}:{cfg.settings.api.port}"
    keys = cfg.directory / "keys"
    signer = demo_signer(keys, "lab-demo") if signed else None
    for _ in range(count):
        payload = ('<n:Notice xmlns:n="urn://zdravlink/types/notice/1.0"><n:Code>SAMPLE_RECEIVED</n:Code>'
                   f'<n:IssuedAt>{datetime.now(timezone.utc).isoformat(timespec="seconds")}</n:IssuedAt>'
                   '<n:Text>Образец получен лабораторией</n:Text></n:Notice>')
        if soap:
            status, answer = smev_client.call(f"{base}/smev/1.1", smev_client.send_request(payload, by=signer),
                                              token=None if signed else token)
            out.print(f"{status} {smev_client.describe(answer)}", highlight=False)
            continue
        env = Envelope(message_id=str(uuid.uuid1()), sender="lab-demo", recipient="clinic-mis",
                       message_type="urn://zdravlink/types/notice/1.0", payload=parse_xml(payload.encode()))
        if signer is not None:
            env.sender_signature = sign(env.sender_data_element(), signer)
        r = httpx.post(f"{base}/api/v1/messages", json=env.to_json(), headers={"Authorization": f"Bearer {token}"})
        out.print(f"{r.status_code} {r.text}", highlight=False)


def _demo_verify(cfg) -> None:  # noqa: ANN001
    """A doctor (valid) and an organisation (licence revoked) from the demo dataset; answers go to clinic-mis."""
    import httpx

    base = f"http://{cfg.settings.api.host}:{cfg.settings.api.port}"
    worker = "urn://zdravlink/types/worker-verification/1.0"
    org = "urn://zdravlink/types/organisation-verification/1.0"
    asks = [("frmr", worker, f'<wv:WorkerVerificationRequest xmlns:wv="{worker}"><wv:SNILS>11223344595</wv:SNILS>'
                             '<wv:Specialty>Терапия</wv:Specialty></wv:WorkerVerificationRequest>'),
            ("frmo", org, f'<ov:OrganisationVerificationRequest xmlns:ov="{org}">'
                          '<ov:Oid>1.2.643.5.1.13.13.12.2.77.1003</ov:Oid></ov:OrganisationVerificationRequest>')]
    for registry, message_type, payload in asks:
        r = httpx.post(f"{base}/api/v1/messages", headers={"Authorization": "Bearer demo-mis-token"},
                       json={"messageId": str(uuid.uuid1()), "sender": "clinic-mis", "recipient": registry,
                             "messageType": message_type, "payload": payload})
        out.print(f"{registry}: {r.status_code} {r.text}", highlight=False)
    out.print("  the answers reach clinic-mis with ReferenceMessageID = each MessageID above "
              "(zdravlink trail MESSAGE_ID shows the exchange)", highlight=False)


def _demo_records(cfg, count: int) -> None:  # noqa: ANN001
    """Post clinic-mis's service records for last month; then `zdravlink acts build` sends the act."""
    import httpx

    from adapters.acts.schedule import previous_period

    period = previous_period(dt.date.today())
    base = f"http://{cfg.settings.api.host}:{cfg.settings.api.port}"
    prices = _tariffs_or_exit(cfg).prices_on(dt.date.fromisoformat(period + "-01"))
    codes = sorted(prices)
    for i in range(count):
        code, day = codes[i % len(codes)], f"{period}-{1 + i % 28:02d}"
        record_id = f"DEMO-{uuid.uuid4().hex[:10]}"
        payload = ('<sr:ServiceRecord xmlns:sr="urn://zdravlink/types/service-record/1.0">'
                   f"<sr:RecordId>{record_id}</sr:RecordId><sr:Period>{period}</sr:Period>"
                   "<sr:Organisation><sr:Oid>1.2.643.5.1.13.13.12.2.77.7701</sr:Oid><sr:CodeMO>770001</sr:CodeMO>"
                   "</sr:Organisation><sr:Patient><sr:ENP>1234567890123452</sr:ENP><sr:PolicyType>3</sr:PolicyType>"
                   "<sr:Insurer>insurer-demo</sr:Insurer><sr:Person><sr:FamilyName>Демо</sr:FamilyName>"
                   "<sr:GivenName>Пациент</sr:GivenName><sr:Sex>1</sr:Sex><sr:BirthDate>1980-01-01</sr:BirthDate>"
                   "</sr:Person></sr:Patient><sr:Service>"
                   f"<sr:Code>{code}</sr:Code><sr:DateIn>{day}</sr:DateIn><sr:DateOut>{day}</sr:DateOut>"
                   f"<sr:Quantity>1</sr:Quantity><sr:Tariff>{prices[code]}</sr:Tariff><sr:Diagnosis>J06.9</sr:Diagnosis>"
                   "<sr:Department>1</sr:Department></sr:Service><sr:Doctor><sr:SNILS>11223344595</sr:SNILS>"
                   "<sr:Specialty>76</sr:Specialty></sr:Doctor></sr:ServiceRecord>")
        r = httpx.post(f"{base}/api/v1/messages", headers={"Authorization": "Bearer demo-mis-token"},
                       json={"messageId": str(uuid.uuid1()), "sender": "clinic-mis", "recipient": "insurer-demo",
                             "messageType": "urn://zdravlink/types/service-record/1.0", "payload": payload})
        out.print(f"{r.status_code} record {record_id}: {r.json().get('status') or r.json().get('code')}",
                  highlight=False)
    out.print(f"  then: zdravlink acts build --period {period}", highlight=False)


def _demo_hl7(cfg, count: int) -> None:  # noqa: ANN001
    """Send lab-demo's ORU^R01 results to the MLLP listener and print each ACK's MSA (and ERR) segments."""
    import socket

    from adapters.hl7v2.mllp import FrameReader, frame
    from adapters.hl7v2.oru import message_id_for

    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    for i in range(count):
        control = f"DEMO-{uuid.uuid4().hex[:12]}"
        text = (f"MSH|^~\\&|LIS|LAB-DEMO|MIS|CLINIC|{now}||ORU^R01^ORU_R01|{control}|P|2.5.1||||||UNICODE UTF-8\r"
                "PID|1||11223344595^^^ПФР^SNILS~A-77^^^LAB^MR||Демо^Пациент||19800101|F\r"
                f"ORC|RE|ORD-{i + 1}\r"
                f"OBR|1|ORD-{i + 1}|LAB-{control}|CBC^Общий анализ крови|||{now}|||||||||||||||{now}||HM|F\r"
                "OBX|1|NM|HGB^Гемоглобин||13,5|g/dL|12,0-16,0|N|||F\r"
                "OBX|2|NM|GLU^Глюкоза||99|mg/dL|70-100|N|||F\r"
                "OBX|3|SN|CRP^СРБ||<^5|mg/L|0-5|N|||F\r").encode("utf-8")
        with socket.create_connection((cfg.settings.hl7.host, cfg.settings.hl7.port), timeout=15) as sock:
            sock.sendall(frame(text))
            reader, acks = FrameReader(), []
            while not acks:
                data = sock.recv(4096)
                if not data:
                    break
                acks = reader.feed(data)
        for segment in (acks[0].decode("utf-8", "replace").split("\r") if acks else ["(no ACK)"]):
            if segment.startswith(("MSA", "ERR")) or segment == "(no ACK)":
                out.print(segment, highlight=False)
        out.print(f"  MessageID {message_id_for('lab-demo', control)}: zdravlink trail it", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(app())
