"""Test helpers: the synthetic data sets of data/synthetic.py, and running a program."""

import os
import subprocess
import sys

from normlab.data.synthetic import tiny_splits, write_idx_dataset

__all__ = ["ROOT", "run_program", "tiny_splits", "write_idx_dataset"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_program(program: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs train.py / eval.py as a user would; a Python stack trace is a test failure."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, program), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in result.stderr, result.stderr  # no stack trace by default
    return result
