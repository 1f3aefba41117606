"""The report of findings: `python report.py` runs the experiment suite and writes REPORT.md.

Modules, in the order the command uses them:
    cli.py          report.py's flags; pipeline.py: the whole command as `generate(options)`
    design.py       the presets and the runs each section needs (names, configs, budgets)
    suite.py        runs them under one root: reuse complete runs, resume partial ones, ETA
    analyses.py     what the trainer does not record: per-layer parity on trained weights, twin
                    trainings by the trainer's step, batch-statistics eval, an interleaved
                    throughput benchmark; cached under <root>/analysis/
    tables.py       reads runs and analyses into the report's tables (means with 95% CIs)
    stats.py        means, confidence intervals, the verdict rule
    claims.py       the claims table: each paper's claim, its evidence and verdict
    figures.py      the PNG figures (matplotlib, Agg)
    writer.py       REPORT.md
    machine.py      versions and hardware

This file imports nothing: `normlab.quiet` must import TensorFlow first.
"""
