"""Run a snippet in a fresh interpreter that sees none of the test run's imports or paths, the
way a user's own process would load an exported artifact."""

from __future__ import annotations

import os
import subprocess
import sys
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
