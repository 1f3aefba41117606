"""Runs the experiment suite and writes the report of findings (REPORT.md and its figures).

Usage:
    .venv/bin/python report.py --root=runs/report --preset=quick      # ~40 minutes
    .venv/bin/python report.py --root=runs/report --preset=full --out=report  # the report
    .venv/bin/python report.py --root=runs/report --preset=full --out=report --report_only
    .venv/bin/python report.py --preset=full --plan                   # the runs, no training

Runs already complete under --root are reused; an interrupted run resumes from its checkpoint.
The design of the presets: report/design.py.
"""

import sys

import normlab  # noqa: F401 - first: it imports TensorFlow quietly (normlab/quiet.py)

# isort: split
from normlab.report import cli
from normlab.trainer import cli as trainer_cli

if __name__ == "__main__":
    trainer_cli.parse_flags_or_exit(sys.argv, "report.py", __doc__, cli.FLAG_NAMES)
    sys.exit(trainer_cli.run_main(cli.main, "report.py"))
