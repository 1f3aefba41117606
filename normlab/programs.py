"""The programs as console scripts (pyproject.toml's [project.scripts]): `normlab-train`,
`normlab-eval`, `normlab-report` and `normlab-parity` run train.py, eval.py, report.py and
parity.py exactly as `python train.py ...` does, with the same flags, help and exit codes.

The programs stay the repository's top-level files; a wheel ships them in `normlab/_programs/`
(pyproject.toml maps that package to the repository root), a checkout or an editable install
runs them where they are.
"""

from __future__ import annotations

import os
import runpy
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _path(program: str) -> str:
    """The program's file: the installed copy, else the checkout's (beside this package)."""
    for directory in (os.path.join(_HERE, "_programs"), os.path.dirname(_HERE)):
        path = os.path.join(directory, program)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"normlab's {program} is neither installed nor in a checkout")


def _run(program: str) -> None:
    """Runs the program as its __main__ (it exits with its own status)."""
    runpy.run_path(_path(program), run_name="__main__")


def train() -> None:
    _run("train.py")


def evaluate() -> None:
    _run("eval.py")


def report() -> None:
    _run("report.py")


def parity() -> None:
    _run("parity.py")


if __name__ == "__main__":
    print(
        "normlab's programs: normlab-train, normlab-eval, normlab-report, normlab-parity "
        "(each with --help); in a checkout also python train.py, eval.py, report.py, parity.py.",
        file=sys.stderr,
    )
    sys.exit(2)
