"""``flask llmrouter …``: the ``llmrouter`` command line inside a host app, on its Router.

Not a copy: the words after ``flask llmrouter`` go to the same parser as ``llmrouter``'s,
which runs them on the app's own Router (its database, its providers).
"""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import with_appcontext

from llmrouter import cli


def register_commands(app: Flask) -> None:
    if "llmrouter" in app.cli.commands:
        return

    @app.cli.command(
        "llmrouter",
        context_settings={"ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @with_appcontext
    def llmrouter_command(args: tuple[str, ...]) -> None:
        """The llmrouter commands (keys, usage, sweep, db) on this app's Router."""
        from .extension import _state

        state = _state()
        embedded = cli.Embedded(state.router, state.problem, state.schema_store)
        raise SystemExit(cli.main(list(args), embedded=embedded, prog="flask llmrouter"))
