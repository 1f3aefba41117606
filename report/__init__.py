"""The report of findings: `python report.py` runs the experiment suite and writes REPORT.md.

Modules, in the order the command uses them:
    cli.py          report.py's flags; pipeline.py: the whole command as `generate(options)`
    experiments.py  the presets and the runs each section needs (names, configs)
    suite.py        runs them under one root: reuse complete runs, resume partial ones, ETA
    analyses.py     what the trainer does not record: per-layer parity on one batch, twin
                    trainings (when do custom and built-in diverge), batch-statistics eval,
                    an interleaved throughput benchmark; cached under <root>/analysis/
    results.py      reads runs and analyses into the report's tables
    findings.py     the findings text, derived from the tables
    figures.py      the PNG figures (matplotlib, Agg)
    writer.py       REPORT.md
    machine.py      versions and hardware

This file imports nothing: `trainer.quiet` must import TensorFlow first.
"""
