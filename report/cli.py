"""report.py's flags and main: plan, train what has no record, write REPORT.md from records."""

from __future__ import annotations

import os
import time

from absl import flags

from normlab.report import design
from normlab.trainer.errors import UsageError


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
    """report.py's flags, defined on `fv` (tests use their own FlagValues)."""
    flags.DEFINE_enum(
        "preset",
        "full",
        list(design.PRESETS),
        "full: the committed report (records in report/results/full; --plan prints the jobs, "
        "the cost model's predicted time and the measured one); quick: the same design at a "
        "tenth of the budget on the real data; tiny: every section in minutes on a small "
        "fixture it writes itself (numbers meaningless).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "root",
        "",
        "Scratch run directories (checkpoints, event files); empty: runs/report/<preset>.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "results",
        "",
        "Where the records go, one JSON file per job under <results>/<preset>/; empty: "
        "report/results for --preset=full (committed), <root>/results otherwise.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "out",
        "",
        "Where REPORT.md and figures/ go; empty: report/ for full, else --root.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "data_dir",
        "",
        "Fashion-MNIST IDX directory, as train.py's; empty: the Debian package's.",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "write",
        False,
        "Only write REPORT.md and its figures from the records: no training.",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "plan",
        False,
        "Only print the jobs, the cost model's predicted time of each and of the suite (one job at "
        "a time and with --jobs), and the suite's measured time from its sessions.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "jobs",
        1,
        "Jobs trained at once, each in its own process with its share of the threads.",
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_string(
        "shard",
        "0/1",
        "I/N: train only every N-th job of the plan from the I-th (0-based), for N machines.",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "commit_records",
        False,
        "git commit each record as it is written (a long suite on a machine that may go away).",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "verbose", False, "Also print the trainer's progress lines.", flag_values=fv
    )
    return fv


FLAG_NAMES = [
    "preset",
    "root",
    "results",
    "out",
    "data_dir",
    "write",
    "plan",
    "jobs",
    "shard",
    "commit_records",
    "verbose",
]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise UsageError(f"--shard={text}: expected I/N with 0 <= I < N, e.g. --shard=0/4.")
    return index, count


def paths(preset: str, root: str, results: str, out: str) -> tuple[str, str, str]:
    """(root, results, out) with the defaults --help states."""
    root = root or os.path.join("runs", "report", preset)
    full = preset == "full"
    results = results or (
        os.path.join(REPO, "report", "results") if full else os.path.join(root, "results")
    )
    out = out or (os.path.join(REPO, "report") if full else root)
    return root, results, out


def fixture_dir(root: str) -> str:
    """The tiny preset's data: a small learnable IDX data set written under root once."""
    from normlab.data.synthetic import tiny_splits, write_idx_dataset

    path = os.path.join(root, "fixture")
    if not os.path.isfile(os.path.join(path, "t10k-labels-idx1-ubyte.gz")):
        write_idx_dataset(path, tiny_splits(n_train=256, n_val=0, n_test=64))
    return path


def program(argv: list[str], doc: str) -> int:
    """report.py: its flags defined and parsed (help, clean flag errors), then main."""
    from normlab.trainer import cli as trainer_cli

    fv = define_flags()
    trainer_cli.parse_flags_or_exit(argv, "report.py", doc, FLAG_NAMES, fv)
    return trainer_cli.run_main(lambda: main(fv), "report.py")


def main(fv: flags.FlagValues = flags.FLAGS) -> int:
    """What the parsed flags `fv` ask for: --write, --plan, or train what has no record."""
    from normlab.report import records, suite, tables, writer

    preset = design.PRESETS[fv.preset]
    root, results, out = paths(preset.name, fv.root, fv.results, fv.out)
    index, count = parse_shard(fv.shard)
    if fv.write:
        path = writer.write(preset, results, out)
        print(f"report: wrote {path} from {len(records.load_all(results, preset.name))} records")
        return 0
    data_dir = fv.data_dir or (fixture_dir(root) if preset.name == "tiny" else "")
    from normlab import machine

    setup = suite.Setup(preset, root, results, data_dir, out, commit=machine.commit())
    examples = len(suite._splits(setup).train_x)

    def jobs_now() -> list:
        """The shard of the plan with the learning rates the tuning records choose so far."""
        chosen = tables.chosen_rates(
            tables.tuning(tables.Context(preset, records.load_all(results, preset.name)))
        )
        return design.shard(design.plan(preset, data_dir, examples, chosen), index, count)

    if fv.plan:
        print_plan(preset, jobs_now(), results, fv.jobs)
        return 0

    def say(line: str) -> None:
        print(f"report: {line}", flush=True)

    start, failures, ready = time.perf_counter(), 0, None
    while True:  # again while the tuning runs just trained choose more cells' rates
        jobs = jobs_now()
        now = [j for j in jobs if not j.pending]
        if ready is not None and {j.name for j in now} <= ready:
            break
        ready = {j.name for j in now}
        failures += suite.run_all(
            now,
            setup,
            fv.jobs,
            say,
            (lambda line: say(f"    {line}")) if fv.verbose else (lambda _: None),
            fv.commit_records,
        )
    if any(j.pending for j in jobs):
        say(f"{sum(j.pending for j in jobs)} jobs wait for tuning runs this shard does not have")
    path = writer.write(preset, results, out)
    say(f"wrote {path} ({time.perf_counter() - start:.0f} s this session)")
    return 1 if failures else 0


def print_plan(preset: design.Preset, jobs: list, results: str, at_once: int) -> None:
    """The jobs, one a line in columns as wide as their longest entry, each with its predicted
    time and whether its record exists; then the suite's time: predicted by the cost model
    (one job at a time, and with `at_once` and the measured sessions' jobs at once), and
    measured end to end by the sessions of the preset's records (REPORT.md states the same)."""
    from normlab.report import records
    from normlab.trainer.loop import duration

    print(f"preset {preset.name}: {preset.description}")
    head = ("#", "job", "sections", "steps", "predicted", "done")
    rows, total, done = [], 0.0, 0
    for i, job in enumerate(jobs, 1):
        seconds = design.seconds(preset, job)
        total += seconds
        finished = records.is_done(results, preset.name, job)
        done += finished
        steps = job.config.train_steps if job.config else "-"
        rows.append((i, job.name, ",".join(job.sections), steps, duration(seconds)))
        rows[-1] += ("yes" if finished else "after tuning" if job.pending else "",)
    width = [max(len(str(r[c])) for r in [head, *rows]) for c in range(len(head))]
    right = (True, False, False, True, True, False)
    for r in [head, *rows]:
        cells = [f"{str(v):>{w}}" if a else f"{str(v):<{w}}" for v, w, a in zip(r, width, right)]
        print("  ".join(cells).rstrip())
    measured, measured_at_once = records.measured(records.sessions(results, preset.name))
    print(
        f"\n{len(jobs)} jobs, {done} with a record (done), {sum(j.pending for j in jobs)} "
        "waiting for their learning rate (the tuning runs' records choose it).\n"
        "Predicted by the cost model (fixed + steps x per step + evaluated examples x per "
        "example; coefficients measured on 2 cores, BUILD_NOTES.md): "
        f"{design.predicted(total, [at_once, *measured_at_once])}.\n"
        f"Measured (preset {preset.name}'s sessions, {records.sessions_path(results, preset.name)}"
        f"; REPORT.md states it): {measured}."
    )
