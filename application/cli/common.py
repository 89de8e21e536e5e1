"""What every command shares: the root ``zdravlink`` app and its groups, the consoles, and the steps that
load the configuration or exit with its problems, one per line."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from application.runtime import load, load_lab_mappings
from gateway.config import ConfigError, ConfigProblem, GatewayConfig
from gateway.keyring import KeyRing
from gateway.oms.profiles import load_oms_config
from gateway.tariffs import TariffTable, load_tariffs

app = typer.Typer(help="Zdravlink: a signing, validating, routing integration gateway.", no_args_is_help=True,
                  add_completion=False)
worker_app = typer.Typer(help="Run one kind of worker process.", no_args_is_help=True)
acts_app = typer.Typer(help="Service acts for insurers.", no_args_is_help=True)
db_app = typer.Typer(help="Journal database.", no_args_is_help=True)
journal_app = typer.Typer(help="The journal's consistency with itself and with the broker.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")
app.add_typer(acts_app, name="acts")
app.add_typer(db_app, name="db")
app.add_typer(journal_app, name="journal")
# Piped output (logs, CI, `| less`) gets a wide fixed width instead of rich's 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)

ConfigOpt = typer.Option(None, "--config", "-c", help="Configuration directory (default: $ZL_CONFIG_DIR or ./config)")
T = TypeVar("T")


def exit_with(problems: list[ConfigProblem]) -> NoReturn:
    """Every configuration problem on its own line, file, key and rule, then exit 2."""
    for p in problems:
        err.print(f"[red]{p.file}[/red]: [bold]{p.key}[/bold]: {p.rule}", highlight=False)
    raise typer.Exit(2)


def or_exit(step: Callable[..., T], *args: Any) -> T:
    """Run a loading step; its ConfigError is printed problem by problem and ends the command with 2."""
    try:
        return step(*args)
    except ConfigError as exc:
        exit_with(exc.problems)


def load_or_exit(directory: Path | None) -> GatewayConfig:
    return or_exit(load, directory)


def keyring_or_exit(cfg: GatewayConfig) -> KeyRing:
    from gateway.keyring import load_keyring

    return or_exit(load_keyring, cfg)


def mappings_or_exit(cfg: GatewayConfig) -> dict[str, Any]:
    return or_exit(load_lab_mappings, cfg)


def tariffs_or_exit(cfg: GatewayConfig) -> TariffTable:
    """The tariff table; the OMS register profiles (oms/) are checked with it: service records need both."""
    problems: list[ConfigProblem] = []
    table = load_tariffs(cfg.directory, problems)
    load_oms_config(cfg, problems)
    if problems:
        exit_with(problems)
    return table
