"""A Ray worker setup hook for the Ray scoring tests (`worker_process_setup_hook`): decoding a
file whose name starts with "crash" kills the process, as a segfaulting codec would, and one
starting with "slow" takes 0.2 s longer, so a test can act while a run is under way."""

from __future__ import annotations

import os
import time
from pathlib import Path


def install() -> None:
    from ptxfast.score import decode

    real = decode.load_image

    def load_image(path, size=None, **kw):
        name = Path(path).name
        if name.startswith("crash"):
            os._exit(11)
        if name.startswith("slow"):
            time.sleep(0.2)
        return real(path, size, **kw)

    decode.load_image = load_image
