"""The `thumbview` command: thin shells over the library, one module per pipeline stage.

Each command parses arguments, calls one library function, and renders the result.
Anything a user could want from Python is in the library, not here.
"""

from __future__ import annotations

from typing import Annotated

import typer

from thumbview import __version__
from thumbview.cli import bot as _bot
from thumbview.cli import creator as _creator
from thumbview.cli import data as _data
from thumbview.cli import finetune as _finetune
from thumbview.cli import predict as _predict
from thumbview.cli import sae as _sae
from thumbview.cli._shared import console, plain_help, setup_logging
from thumbview.cli.collect import app as collect_app

__all__ = ["app", "main"]

plain_help()
app = typer.Typer(
    name="thumbview",
    help="Predict how many views a YouTube thumbnail (and title) will get, why, and which candidate is best.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        console.print(f"thumbview {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v: progress details, -vv: debug.")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    setup_logging(verbose)


_data.register(app)
_predict.register(app)
_creator.register(app)
_finetune.register(app)
app.add_typer(collect_app, name="collect")
app.add_typer(_sae.app, name="sae")
app.command("explain")(_sae.explain_command)
app.add_typer(_bot.app, name="bot")


def main() -> None:
    app()
