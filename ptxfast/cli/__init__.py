"""The `ptxfast` command line: thin click commands over the library functions.

Each command parses its options, calls one library function and renders the result (the render
functions live beside the results they draw). Heavy imports (torch, pydicom) happen inside the
commands so `ptxfast --help` is instant. app: the group, console, error type, the options
several commands share (--device, --runs, --data, ...) and warning capture; data: synth, split;
train: train, evaluate; export; score: score, report; bench.
"""

from __future__ import annotations

from ptxfast.cli import bench, data, export, score, train  # noqa: F401 - registers the commands
from ptxfast.cli.app import CliError, cli, console, main

__all__ = ["CliError", "cli", "console", "main"]
