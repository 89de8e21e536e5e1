"""The ``zdravlink`` command: run the gateway, check configuration, look after messages, sign and verify.

Commands live in modules by concern (``running``, ``messages``, ``tools``, ``acts``);
plugins add groups through the ``zdravlink.cli`` entry point group (the demo adds
``zdravlink demo``), so the product never imports them. ``main`` turns a gateway,
journal or broker that cannot be reached into one line and a non-zero exit, not a
traceback.
"""
from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click
import typer

from application.cli import acts, evidence, messages, running, tools  # noqa: F401 - each registers its commands
from application.cli import console as console_commands
from application.cli.common import app, err
from application.reachability import unreachable

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
        code = command.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        err.print("aborted")
        code = 1
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except Exception as exc:
        what = unreachable(exc)
        if what is None:
            raise
        err.print(f"[red]cannot reach {what}[/red]: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                  highlight=False)
        code = 3
    sys.exit(code if isinstance(code, int) else 0)
