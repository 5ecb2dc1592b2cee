"""What every command shares: the console, logging set-up, and turning errors into messages."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

# Errors a user can fix (bad input, missing model, ...) become one red line and exit code 2.
# Everything else is a bug: the traceback is kept, because hiding it would hide the bug.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError)


def setup_logging(verbosity: int) -> None:
    """Warnings by default (the commands print their own results); -v info, -vv debug."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = RichHandler(console=err_console, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True, format="%(message)s")
    logging.getLogger("thumbview").setLevel(level)
    # Offline by default: thumbview never needs the Hub for its built-in encoders.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for commands: a user error prints its message, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            # Long stages (embed, sae train, collect) save as they go: say so, don't dump a trace.
            err_console.print(
                "[yellow]interrupted[/]: finished work is saved; run the same command to resume"
            )
            raise typer.Exit(code=130) from None

    return wrapper


def print_json(payload: Any) -> None:
    """Machine-readable output on stdout, nothing else on it."""
    typer.echo(json.dumps(payload, indent=2, ensure_ascii=False, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def split_names(text: str) -> list[str]:
    """'clip, title' -> ['clip', 'title']."""
    return [part.strip() for part in text.split(",") if part.strip()]
