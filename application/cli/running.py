"""Running the gateway: the whole of it under the supervisor, or one process role at a time."""
from __future__ import annotations

from pathlib import Path

import typer

from application.cli.common import (
    ConfigOpt,
    app,
    db_app,
    keyring_or_exit,
    load_or_exit,
    mappings_or_exit,
    out,
    tariffs_or_exit,
    worker_app,
)
from application.runtime import config_dir, setup_logging
from gateway.config import GatewayConfig

#: ``application.supervisor.ROLES``, named here so printing does not import the supervisor.
ROLE_NAMES = ("api", "router", "delivery", "mllp", "scheduler")


@app.command()
def run(config: Path | None = ConfigOpt,
        role: str | None = typer.Option(
            None, "--role", help="The roles this host runs, comma-separated: api, router, delivery, mllp, "
                                 "scheduler (reconciler, deadline watcher, acts schedule). Default: all of them")
        ) -> None:
    """Run the gateway's processes under a supervisor: API with outbox relay, router, reconciler, delivery
    workers, and the MLLP listener, deadline watcher and acts schedule where the configuration needs them;
    with --role, only those roles' processes (several hosts on one journal and broker: docs/scaling.md)."""
    from application.supervisor import Supervisor, parse_roles

    setup_logging("supervisor")
    try:
        roles = parse_roles(role)
    except ValueError as exc:
        out.print(f"[red]--role: {exc}[/red]")
        raise typer.Exit(2) from None
    cfg = load_or_exit(config)
    keyring_or_exit(cfg)
    print_endpoints(cfg, config_dir(config), roles)
    raise typer.Exit(Supervisor(cfg, config_dir(config), roles=roles,
                                on_ready=lambda: out.print("[bold green]ready[/bold green]")).run())


def print_endpoints(cfg: GatewayConfig, directory: Path, roles: tuple[str, ...] | None = None) -> None:
    """Where everything is, before it starts (``ready`` follows once the API answers /readyz)."""
    from rich.markup import escape

    from gateway.tls import transport_label

    s = cfg.settings
    base = f"{'https' if s.api.tls else 'http'}://{s.api.host}:{s.api.port}"
    out.print(f"[bold green]Zdravlink[/bold green] on {directory} — journal {s.database.url.split('@')[-1]}")
    if roles is not None and "api" not in roles:
        out.print(f"  roles    {', '.join(roles)} (no API on this host)")
        return
    if roles is not None and len(roles) < len(ROLE_NAMES):
        out.print(f"  roles    {', '.join(roles)}")
    out.print(f"  API      {base}/api/v1/messages   {escape(f'[{transport_label(s.api.tls, s.api.plain)}]')}")
    out.print(f"  docs     {base}/docs")
    out.print(f"  SMEV 3   {base}/smev/1.1?wsdl   pull inbox {base}/api/v1/inbox")
    labs = mappings_or_exit(cfg)
    if s.hl7.enabled and labs:
        out.print(f"  HL7 v2   mllp://{s.hl7.host}:{s.hl7.port}   labs: {', '.join(sorted(labs))}   "
                  f"{escape(f'[{transport_label(s.hl7.tls, s.hl7.plain)}]')}")
    scheme = base.split(":", 1)[0]
    metrics = f"{scheme}://{s.metrics.host}:{s.metrics.port}/metrics" if s.metrics.port else f"{base}/metrics"
    out.print(f"  metrics  {metrics}   health {base}/healthz   ready {base}/readyz")
    out.print(f"  console  {base}/console   (operators: zdravlink operator add NAME --role admin)")


@app.command()
def serve(config: Path | None = ConfigOpt,
          migrate: bool = typer.Option(True, "--migrate/--no-migrate",
                                       help="Upgrade the journal schema first"),
          relay: bool = typer.Option(True, "--relay/--no-relay",
                                     help="Run the outbox relay in this process (on SQLite: in one process only)")
          ) -> None:
    """Run the HTTP API with the outbox relay (one process)."""
    from application.roles import serve_api

    setup_logging("api")
    cfg = load_or_exit(config)
    tariffs_or_exit(cfg)
    serve_api(cfg, keyring_or_exit(cfg), migrate=migrate, relay_outbox=relay)


@worker_app.command("router")
def worker_router(config: Path | None = ConfigOpt) -> None:
    """Consume published messages and route them to their recipient's delivery queue."""
    from application.roles import run_worker

    setup_logging("router")
    cfg = load_or_exit(config)
    run_worker(cfg, keyring_or_exit(cfg), "router")


@worker_app.command("delivery")
def worker_delivery(config: Path | None = ConfigOpt) -> None:
    """Deliver routed messages with retries, failover and dead letters."""
    from application.roles import run_worker

    setup_logging("delivery")
    cfg = load_or_exit(config)
    run_worker(cfg, keyring_or_exit(cfg), "delivery")


@worker_app.command("reconciler")
def worker_reconciler(config: Path | None = ConfigOpt) -> None:
    """Record in the journal what RabbitMQ dead-lettered by itself, and send stuck messages round again."""
    from application.roles import run_worker

    setup_logging("reconciler")
    cfg = load_or_exit(config)
    run_worker(cfg, keyring_or_exit(cfg), "reconciler")


@worker_app.command("mllp")
def worker_mllp(config: Path | None = ConfigOpt) -> None:
    """Listen for HL7 v2 over MLLP and turn lab messages into lab results by their mapping files."""
    from application.roles import run_mllp

    setup_logging("mllp")
    cfg = load_or_exit(config)
    run_mllp(cfg, keyring_or_exit(cfg), mappings_or_exit(cfg))


@worker_app.command("deadlines")
def worker_deadlines(config: Path | None = ConfigOpt) -> None:
    """Answer TIMEOUT to registry requests past their deadline (registries in gateway.yaml)."""
    from application.roles import run_deadlines

    setup_logging("deadlines")
    cfg = load_or_exit(config)
    run_deadlines(cfg, keyring_or_exit(cfg))


@worker_app.command("acts")
def worker_acts(config: Path | None = ConfigOpt) -> None:
    """Build and send the previous month's service acts on the schedule in gateway.yaml (acts)."""
    from application.roles import run_acts

    setup_logging("acts")
    cfg = load_or_exit(config)
    tariffs_or_exit(cfg)
    run_acts(cfg, keyring_or_exit(cfg))


@app.command("declare-topology")
def declare_topology_cmd(config: Path | None = ConfigOpt) -> None:
    """Declare the durable RabbitMQ exchanges and quorum queues."""
    from application.wiring import declare_topology

    declare_topology(load_or_exit(config))
    out.print("topology declared")


@db_app.command("upgrade")
def db_upgrade(config: Path | None = ConfigOpt) -> None:
    """Apply journal schema migrations (Alembic)."""
    from gateway.journal import Journal

    Journal(load_or_exit(config).settings.database.url).migrate()
    out.print("journal schema is current")
