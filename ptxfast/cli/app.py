"""The command group, its console and error type, the options several commands take, and the
warning capture every command shares."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from ptxfast.errors import PtxfastError
from ptxfast.safe_text import visible

console = Console(stderr=True)

# The path types the commands' options take.
FILE = click.Path(dir_okay=False, path_type=Path)
DIR = click.Path(file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def option(*decls: str, min: int | None = None, **attrs: Any) -> Decorator:
    """`click.option` with the commands' conventions: `min=N` takes an integer of at least N
    (click.IntRange), and a default other than None is shown in --help."""
    if min is not None:
        attrs["type"] = click.IntRange(min=min)
    if attrs.get("default") is not None:
        attrs.setdefault("show_default", True)
    return click.option(*decls, **attrs)


# The options several commands take: one flag, type and default each; the help says what the
# option means to that command.
def device_option(
    help: str = "auto, cuda, cuda:N or cpu.", default: str | None = "auto"
) -> Decorator:
    """--device: where the model runs."""
    return option("--device", default=default, help=help)


def batch_size_option(default: int | None = None, help: str | None = None) -> Decorator:
    """--batch-size: images per forward pass."""
    return option("--batch-size", min=1, default=default, help=help)


def workers_option(help: str, default: int | None = None, min: int = 0) -> Decorator:
    """--workers: worker processes (decoding, or drawing phantoms); 0, where `min` allows it,
    works in-process."""
    return option("--workers", min=min, default=default, help=help)


def threads_option(help: str) -> Decorator:
    """--threads: torch threads on a CPU."""
    return option("--threads", min=1, help=help)


def size_option(help: str, default: int | None = None) -> Decorator:
    """--size: the image side in pixels, 32 at the least."""
    return option("--size", min=32, default=default, help=help)


def seed_option(help: str, default: int | None = 0, required: bool = False) -> Decorator:
    """--seed: same seed, same phantoms, inputs or split."""
    return option("--seed", type=int, default=default, required=required, help=help)


def runs_option(help: str, default: str | None = "runs") -> Decorator:
    """--runs: the folder of trained models, RUNS/<name>/best.pt."""
    return option("--runs", type=DIR, default=default, help=help)


def exports_option(help: str) -> Decorator:
    """--exports: the folder of exported artifacts."""
    return option("--exports", type=DIR, default="exports", help=help)


def data_option(help: str, required: bool = False) -> Decorator:
    """--data: a labelled dataset folder (CANDID-PTX or SIIM-ACR layout)."""
    return option("--data", type=EXISTING_DIR, required=required, help=help)


def json_option(dest: str, help: str) -> Decorator:
    """--json: a JSON file, passed to the command as `dest`."""
    return option("--json", dest, type=FILE, help=help)


class CliError(click.ClickException):
    """A user-facing error as the command line shows it: one line, exit status 1."""

    def show(self, file=None) -> None:  # noqa: D102 - rich rendering of click's error
        # soft_wrap: one line whatever the width, so a log of a batch job greps whole; a file
        # name in the message is shown, control characters and all, but cannot act.
        console.print(
            f"[bold red]error:[/] {escape(visible(self.format_message()))}",
            highlight=False,
            soft_wrap=True,
        )


class _Group(click.Group):
    """The command group; every `ptxfast.errors.PtxfastError` a command raises is caught here,
    once, and shown as one line (exit status 1) instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PtxfastError as err:
            raise CliError(str(err)) from None


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="ptxfast")
def cli() -> None:
    """ptxfast: pneumothorax detection on chest X-rays, trained, fused, compiled and benchmarked.

    \b
    Start with synthetic phantoms in the CANDID-PTX layout:
      ptxfast synth phantoms/ --n 400 --seed 0
      ptxfast train --arch all --recipe quick --data phantoms/
    """


def main(args: list[str] | None = None) -> None:
    """Entry point of the `ptxfast` script; `args` makes it callable from tests."""
    cli.main(args=args, prog_name="ptxfast", standalone_mode=True)


@contextlib.contextmanager
def warnings_shown(
    *categories: type[Warning], live: bool = False, speak: bool = True, models_log: bool = False
) -> Iterator[None]:
    """Collect the warnings of `categories` raised in the block and print each as one line
    once the block has finished (not when it raised: the error is what the user needs).

    `live`: print each as it happens instead (a run that lasts, such as training); `speak=False`
    prints none (torchrun ranks other than 0); `models_log`: the model builder's log warnings
    (no ImageNet weights on disk) are printed the same way instead of going to the log.
    """
    import logging

    def show(message, *args, **kwargs) -> None:
        if speak:
            console.print(
                f"[yellow]warning:[/] {escape(visible(message))}", highlight=False, soft_wrap=True
            )

    class _Warn(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            show(record.getMessage())

    log, handler = logging.getLogger("ptxfast.models"), _Warn(logging.WARNING)
    if models_log:
        log.addHandler(handler)
        log.propagate = False
    try:
        with warnings.catch_warnings(record=not live) as caught:
            if live:
                warnings.showwarning = show
            for category in categories:
                warnings.simplefilter("always", category)
            yield
    finally:
        if models_log:
            log.removeHandler(handler)
            log.propagate = True
    for w in caught or ():
        show(w.message)
