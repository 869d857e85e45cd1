"""The command group, its console and error type, and the warning capture every command shares."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)

# The path types the commands' options take.
FILE = click.Path(dir_okay=False, path_type=Path)
DIR = click.Path(file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


class PtxfastError(click.ClickException):
    """A user-facing error: one line that says what is wrong and what to do."""

    def show(self, file=None) -> None:  # noqa: D102 - rich rendering of click's error
        console.print(f"[bold red]error:[/] {escape(self.format_message())}", highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
            console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)

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
