"""Trains the report's suite and writes REPORT.md from its records (report/results/).

Usage:
    .venv/bin/python report.py --preset=full --plan        # the jobs, predicted and measured time
    .venv/bin/python report.py --preset=full               # train what has no record, write
    .venv/bin/python report.py --preset=full --write       # REPORT.md from the records alone
    .venv/bin/python report.py --preset=tiny               # every section in minutes, a fixture
    .venv/bin/python report.py --preset=full --shard=1/4   # machine 2 of 4 (see BUILD_NOTES)

A job whose record exists (same configuration hash) is done on any machine; an interrupted run
resumes from its checkpoint under --root. The design: report/design.py; the claims:
report/claims.py.
"""

import sys

import normlab  # noqa: F401 - first: it imports TensorFlow quietly (normlab/quiet.py)

# isort: split
from normlab.report import cli

if __name__ == "__main__":
    sys.exit(cli.program(sys.argv, __doc__))
