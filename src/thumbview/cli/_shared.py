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

from thumbview.progress import SILENT, Bars, Progress

console = Console()
err_console = Console(stderr=True)
_bars = Bars(err_console)


def safe(value: object) -> str:
    """A user-controlled string (file name, path, title, message) shown literally by rich.

    Without this, `images/[/].jpg` raises MarkupError, `[bold]` restyles a path and
    `[link=...]` becomes a terminal link. Every such value goes through here.
    """
    return escape(str(value))


# Errors a user can fix (bad input, missing model, ...) become one red line and exit code 2.
# Everything else is a bug: the traceback is kept, because hiding it would hide the bug.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError)


def setup_logging(verbosity: int) -> None:
    """Warnings by default (the commands print their own results); -v info, -vv debug."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = RichHandler(
        console=err_console, show_path=False, show_time=False, markup=False, highlighter=None
    )
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
            # one line even on a pipe (rich wraps at 80 columns off a terminal)
            err_console.print(f"[bold red]error:[/] {safe(e)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            # Long stages (embed, sae train, collect) save as they go: say so, don't dump a trace.
            err_console.print(
                "[yellow]interrupted[/]: finished work is saved; run the same command to resume"
            )
            raise typer.Exit(code=130) from None

    return wrapper


def print_json(payload: Any) -> None:
    """Machine-readable output on stdout, nothing else on it: strict JSON (never NaN)."""
    from thumbview.fileio import json_safe

    text = json.dumps(
        json_safe(payload), indent=2, ensure_ascii=False, default=_jsonable, allow_nan=False
    )
    typer.echo(text)


def progress_for(as_json: bool = False) -> Progress:
    """The bars every command passes to the library: on stderr for people, none for --json."""
    return SILENT if as_json else _bars


def warn(message: str) -> None:
    """A one-line warning on stderr (stdout stays clean for --json)."""
    err_console.print(f"[yellow]warning:[/] {safe(message)}", highlight=False, soft_wrap=True)


def say_notes(lines: list[str], no_skill: str = "") -> None:
    """What a result predicts and assumed (`ModelNotes`), and the no-skill line in yellow:
    on stdout, beside the table they qualify."""
    for line in lines:
        if line == no_skill or line.startswith("ignored:"):
            console.print(f"[yellow]{safe(line)}[/]", highlight=False, soft_wrap=True)
        else:
            console.print(safe(line), highlight=False, soft_wrap=True)


def say_model_notes(result) -> None:
    """A ranking's notes (compare, frames, the bot): what the numbers predict, what was
    assumed or ignored, and the no-skill line, unless its verdict already said it."""
    no_skill = result.no_skill_note
    said = no_skill and no_skill in (getattr(result, "verdict", "") or "")
    lines = [result.predicts, result.assumed, result.ignored, "" if said else no_skill]
    say_notes([line for line in lines if line], no_skill)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def split_names(text: str) -> list[str]:
    """'clip, title' -> ['clip', 'title']."""
    return [part.strip() for part in text.split(",") if part.strip()]


_TYPE_WORDS = {"path": "PATH", "int": "INTEGER", "float": "NUMBER", "str": "TEXT"}


def plain_help() -> None:
    """Help that reads like a command line: `PATH`, `TEXT...`, flags without a type.

    Typer 0.2x prints Python types (`<bool>`, `<list[Path]>`) and wraps required arguments
    in braces (`{data}`); people read neither. This adjusts those two renderers once, and
    leaves Typer alone if a future version no longer has them.
    """
    from typer import core

    base, argument = getattr(core, "_TyperParameter", None), getattr(core, "TyperArgument", None)
    if base is None or argument is None or getattr(base, "_thumbview_plain", False):
        return
    original = base.display_type

    def display_type(self, ctx):  # noqa: ANN001
        if getattr(self, "is_flag", False) or getattr(self, "count", False):
            return None
        label = original(self, ctx) or ""
        inner = label.strip("<>")
        many = inner.startswith("list[")
        inner = inner.removeprefix("list[").removesuffix("]").lower()
        word = _TYPE_WORDS.get(inner, inner.upper() if "|" not in inner else f"[{inner}]")
        return f"{word}..." if many else word

    def usage_name(self) -> str:
        name = self.display_name_raw.upper()
        name = name if self.required else f"[{name}]"
        return f"{name}..." if self.nargs != 1 and not name.endswith("...") else name

    base.display_type = display_type
    argument._usage_display_name = usage_name
    base._thumbview_plain = True
