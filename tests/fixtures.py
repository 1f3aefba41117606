"""Test helpers: the synthetic data sets of data/synthetic.py, and running a program."""

import os
import socket
import subprocess
import sys

from normlab.data.synthetic import tiny_splits, write_idx_dataset

__all__ = ["ROOT", "free_ports", "run_program", "tiny_splits", "write_idx_dataset"]

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


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1: all n sockets are bound at once before any is
    closed, so the kernel cannot hand out the same port twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
