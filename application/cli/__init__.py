"""The ``zdravlink`` command: run the gateway, check configuration, look after messages, sign and verify.

Commands live in modules by concern (``running``, ``messages``, ``tools``, ``acts``);
plugins add groups through the ``zdravlink.cli`` entry point group (the demo adds
``zdravlink demo``), so the product never imports them. ``main`` turns a gateway,
journal or broker that cannot be reached, and an address the gateway cannot listen on,
into one line and a non-zero exit, not a traceback.
"""
from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

from application.cli import acts, evidence, messages, running, tools  # noqa: F401 - each registers its commands
from application.cli import console as console_commands
from application.cli.common import app, err
from application.reachability import CannotListen, unreachable
from zdravlink.errors import ConfigurationError

PLUGIN_GROUP = "zdravlink.cli"
app.add_typer(console_commands.app)  # zdravlink operator …, zdravlink messages … (the console's CLI face)


def _load_plugins() -> None:
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            app.add_typer(entry.load(), name=entry.name)
        except ImportError as exc:  # a plugin whose package is not installed: the rest still work
            err.print(f"plugin {entry.name!r} not loaded: {exc}", highlight=False)


def main() -> None:
    _load_plugins()
    command = typer.main.get_command(app)
    try:
        # Standalone: the CLI library turns a bad option or value into its usage line and exit code 2, and
        # exits with the command's code. (Catching click's exceptions here missed them: typer carries its
        # own copy of click, and a mistyped option printed a traceback.)
        command.main(standalone_mode=True)
    except CannotListen as exc:
        err.print(f"[red]cannot listen on[/red] {exc}", highlight=False)
        sys.exit(3)
    except ConfigurationError as exc:  # found only when a process starts (a directory it cannot use)
        err.print(f"[red]cannot start[/red]: {exc}", highlight=False)
        sys.exit(2)
    except Exception as exc:
        what = unreachable(exc)
        if what is None:
            raise
        err.print(f"[red]cannot reach {what}[/red]: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                  highlight=False)
        sys.exit(3)
