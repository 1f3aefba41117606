"""Test helpers: the synthetic data sets of data/synthetic.py, and running a program."""

import os
import socket
import subprocess
import sys

from normlab.data.synthetic import tiny_splits, write_idx_dataset

__all__ = [
    "ROOT",
    "free_ports",
    "run_program",
    "tiny_splits",
    "train_flags_in_process",
    "write_idx_dataset",
]

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


def train_flags_in_process(*args: str) -> tuple[int, str]:
    """train.py's flag handling up to where training would start, in this process: its flags
    (defined in their own FlagValues, not absl's global ones), parsed as train.py parses them
    and turned into a validated Config through cli.run_main. Returns (exit code, stderr): 0
    when the flags are good, 2 with train.py's one-line message when they are not. The real
    program is driven by test_cli's test_train_flag_errors_exit_2_without_creating_the_run."""
    import contextlib
    import io

    from absl import flags

    from normlab.trainer import cli

    values = flags.FlagValues()
    flags.DEFINE_string("model_dir", None, "Run directory.", flag_values=values)
    flags.DEFINE_boolean("start_over", False, cli.START_OVER_HELP, flag_values=values)
    names = ["model_dir", "start_over"] + cli.define_config_flags(values)

    def main() -> int:
        cli.config_from_flags(flag_values=values).validate()
        return 0

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.parse_flags_or_exit(["train.py", *args], "train.py", "Doc.", names, values)
            code = cli.run_main(main, "train.py")
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()
