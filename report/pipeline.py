"""The whole command as a function: plan -> runs -> analyses -> tables -> figures -> REPORT.md."""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Callable

from normlab.report import experiments
from normlab.trainer.errors import UsageError

LOG_FILE = "suite.log"


class Log:
    """Progress lines to `echo` (stdout) and, with the trainer's lines, to <root>/suite.log
    (once the root exists: --report_only on a missing root must not create it)."""

    def __init__(self, root: str, verbose: bool = False, echo: Callable[[str], None] = print):
        self.root = root
        self.verbose = verbose
        self.echo = echo

    def _write(self, line: str) -> None:
        if os.path.isdir(self.root) and os.access(self.root, os.W_OK):
            with open(os.path.join(self.root, LOG_FILE), "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def say(self, line: str) -> None:
        self.echo(f"report: {line}")
        self._write(line)

    def trainer(self, line: str) -> None:
        if self.verbose:
            self.echo(f"    {line}")
        self._write(f"    {line}")


@dataclasses.dataclass(frozen=True)
class Options:
    """What report.py's flags say (see report/cli.py for their help)."""

    root: str
    preset: str
    out: str = ""
    data_dir: str = ""
    report_only: bool = False
    argv: tuple[str, ...] = ()  # the command line, for the report

    def command(self, report_only: bool | None = None) -> str:
        """The command line; with report_only=True, the one that regenerates the report."""
        args = list(self.argv) or [f"--root={self.root}", f"--preset={self.preset}"] + (
            [f"--data_dir={self.data_dir}"] if self.data_dir else []
        ) + ([f"--out={self.out}"] if self.out else [])
        if report_only:
            args = [a for a in args if not a.startswith(("--report_only", "--noreport_only"))]
            args.append("--report_only")
        return " ".join(["python report.py"] + [shlex.quote(a) for a in args])


def load_data(options: Options):
    from normlab import data

    preset = experiments.PRESETS[options.preset]
    return data.load(
        preset.base["dataset"], options.data_dir or None, preset.base["validation_size"]
    )


def generate(options: Options, log: Log | None = None) -> str:
    """Runs (or reuses) every run and analysis of the preset, then writes REPORT.md.

    Returns the report's path. Raises UsageError for bad options, a root holding runs of other
    settings, or (report_only) anything missing; RunError if a run fails for another reason
    than a non-finite loss (which is recorded as diverged).
    """
    from normlab.report import analyses, figures, machine, results, suite, writer

    start = time.perf_counter()
    if options.preset not in experiments.PRESETS:
        raise UsageError(
            f"--preset={options.preset} is not one of {', '.join(experiments.PRESETS)}."
        )
    preset = experiments.PRESETS[options.preset]
    root, out_dir = options.root, options.out or options.root
    if os.path.exists(root) and not os.path.isdir(root):
        raise UsageError(f"--root={root} is a file, not a directory.")
    if options.report_only and not os.path.isdir(root):
        raise UsageError(f"--report_only: {root} does not exist; there are no runs to report.")
    if not options.report_only:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --root={root}: {e.strerror}.") from None
    log = log or Log(root)

    splits = load_data(options)
    n_train = len(splits.train_x)
    specs = experiments.plan(preset, options.data_dir, n_train)
    log.say(f"{options.command()}  (preset {preset.name}: {len(specs)} runs)")

    training_started = time.perf_counter()
    if options.report_only:
        absent = suite.missing(root, specs)
        if absent:
            raise UsageError(
                f"--report_only: {len(absent)} of the {len(specs)} runs of preset "
                f"{preset.name} are missing or unfinished under {root} (first: {absent[0]}). "
                "Run without --report_only to train them (complete runs are reused)."
            )
    else:
        suite.run_all(root, specs, splits, log.say, log.trainer)
    training_seconds = time.perf_counter() - training_started
    outcomes = {spec.name: suite.load_outcome(root, spec) for spec in specs}

    done = analyses.run_all(root, preset, specs, outcomes, splits, not options.report_only, log.say)
    tables, curves = results.build(root, preset, specs, outcomes, done)
    figure_files = figures.draw_all(tables, curves, os.path.join(out_dir, writer.FIGURES_DIR))

    invocation = time.perf_counter() - start
    runs_seconds = sum(o.wall_seconds or 0.0 for o in outcomes.values())
    overhead = max(0.0, invocation - training_seconds - done["seconds_now"])
    timing = {
        "runs": runs_seconds,
        "analyses": done["seconds"],
        "overhead": overhead,
        "invocation": invocation,
        "total": runs_seconds + done["seconds"] + overhead,
    }
    context = writer.Context(
        command=options.command(),
        regenerate=options.command(report_only=True),
        preset=preset,
        settings=experiments.describe(preset, n_train),
        machine=machine.describe(),
        outcomes=[outcomes[s.name] for s in specs],
        timing=timing,
        figures=figure_files,
        root=root,
        out_dir=out_dir,
    )
    path = writer.write(context, tables)
    log.say(
        f"wrote {path} with {len(figure_files)} figures in "
        f"{os.path.join(out_dir, writer.FIGURES_DIR)} (suite wall time "
        f"{suite.duration(timing['total'])}; this invocation {suite.duration(invocation)})"
    )
    return path
