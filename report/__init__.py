"""The report of findings: `python report.py` trains the suite and writes REPORT.md from records.

Modules, in the order the command uses them:
    cli.py          report.py's flags and main
    design.py       presets, the cells and jobs (names, configs, hashes), the ordered plan,
                    shards, budgets
    cost.py         the cost model: each job's predicted time, the suite's with K at once
    power.py        seeds by power from the pilot's records
    suite.py        does the jobs that have no record (in K processes with --jobs), writes each
                    record as it finishes
    analyses.py     what the trainer does not record, on the run's weights: per-layer parity,
                    twins, batch-statistics eval; the cost benchmark and the parity table
    records.py      the records: one JSON file per job under report/results/<preset>/
    tables.py       the report's numbers from the records (means with 95% intervals)
    stats.py        intervals, p-values, verdicts, Holm
    claims.py       the claims table as data, and its evaluation
    figures.py      the PNG figures (matplotlib, Agg)
    writer.py       REPORT.md: a pure function of the records
"""
