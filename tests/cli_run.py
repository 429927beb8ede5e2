"""`python -m tempo_jax.cli ...` in a subprocess from the repository root, for the CLI tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Runs the CLI with `args` (the subcommand first) on this checkout; never raises on a
    non-zero exit (the caller asserts on `returncode`, `stdout` and `stderr`)."""
    return subprocess.run(
        [sys.executable, "-m", "tempo_jax.cli", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
