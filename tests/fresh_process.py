"""Run a snippet in a fresh interpreter that sees none of the test run's imports or paths, the
way a user's own process would load an exported artifact; wait for a running command's file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def run_fresh(code: str, cwd: Path) -> str:
    """Run `code` with `python -c` in `cwd` (no PYTHONPATH, one OpenMP thread); assert it exits
    0 and return its stripped stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def wait_for_lines(
    path: Path, lines: int, proc: subprocess.Popen | None = None, timeout: float = 120.0
) -> bool:
    """Poll until `path` holds at least `lines` newline-ended lines (a CSV's header counts):
    True then; False once `proc` has ended or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            return True
        time.sleep(0.02)
    return False
