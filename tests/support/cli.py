"""The ``zdravlink`` command run in this process, built as ``main()`` builds it: no interpreter start per call.

A ``python -m application.cli`` costs about 0.7 s of CPU for its imports alone. The real process entry point
(standalone exit codes, the one-line "cannot reach" of ``main()``) keeps its own tests: tests/unit/test_cli_errors.py,
tests/integration/test_run_command.py and test_wheel.py.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from unittest import mock

import typer
from typer.testing import CliRunner, Result

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def zdravlink_app() -> typer.Typer:
    """The root app with the ``zdravlink.cli`` plugins (``demo``) added by ``main()``'s own loader.

    Loaded once per process: each load appends the groups again (harmless, the last one wins, but it grows).
    """
    from application.cli import _load_plugins, app

    _load_plugins()
    return app


def zdravlink(*args: str, input: str | bytes | None = None, env: Mapping[str, str | None] | None = None,
              cwd: Path = REPO) -> Result:
    """``zdravlink ARGS`` from ``cwd``, stdout and stderr kept apart (``result.stdout``, ``result.stderr``).

    An exception the command does not turn into an exit code is raised here, where a process would have printed
    a traceback and exited 1: a test asserting exit code 1 then never passes on a crash.
    """
    with contextlib.chdir(cwd), consoles_as_in_a_piped_process():
        return CliRunner().invoke(zdravlink_app(), list(args), input=input, env=env, catch_exceptions=False,
                                  prog_name="zdravlink")


@contextlib.contextmanager
def consoles_as_in_a_piped_process() -> Iterator[None]:
    """The rich consoles of application.cli.common as a process with piped stdout and stderr has them: no colour,
    200 columns. They are made at import, from whatever sys.stdout was then; under ``pytest -s`` on a terminal that
    was the terminal, and colour codes would land in the captured text. (Private attributes: rich is pinned.)"""
    from application.cli.common import err, out

    with contextlib.ExitStack() as stack:
        for console in (out, err):
            stack.enter_context(mock.patch.object(console, "_color_system", None))
            stack.enter_context(mock.patch.object(console, "_width", 200))
        yield
