"""The whole command as a function: plan -> runs -> analyses -> tables -> claims -> REPORT.md."""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Callable

from normlab.report import design
from normlab.trainer.errors import UsageError

LOG_FILE = "suite.log"


class Log:
    """Progress lines to `echo` (stdout) and, with the trainer's lines, to <root>/suite.log
    (once the root exists: --report_only on a missing root must not create it)."""

    def __init__(self, root: str, verbose: bool = False, echo: Callable[[str], None] = print):
        self.root, self.verbose, self.echo = root, verbose, echo

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

    def command(self, report_only: bool = False) -> str:
        """The command line; with report_only=True, the one that regenerates the report."""
        args = list(self.argv) or [f"--root={self.root}", f"--preset={self.preset}"] + (
            [f"--data_dir={self.data_dir}"] if self.data_dir else []
        ) + ([f"--out={self.out}"] if self.out else [])
        if report_only:
            args = [a for a in args if not a.startswith(("--report_only", "--noreport_only"))]
            args.append("--report_only")
        return " ".join([".venv/bin/python report.py"] + [shlex.quote(a) for a in args])


@dataclasses.dataclass
class Results:
    """Everything the claims, the figures and REPORT.md are computed from."""

    preset: design.Preset
    chance: float  # the accuracy of a guess: a diverged run counts at it
    cnn: object
    converged: object
    long: object  # the batch-norm CNN trained longer (None: the preset skips it)
    lstm: object
    batch: list
    lr: list
    lstm_batch: list
    impl: dict  # (arch, norm) -> (custom, built-in) test accuracy of seed 0
    parity_layers: dict
    parity_table: list
    twins: dict
    inside: list
    inside_curves: dict
    cost_ms: dict  # "arch/norm/impl" -> Estimate of ms per step
    cost_rounds: dict  # ... -> the per-round ms per step it is computed from


def load_data(options: Options):
    from normlab import data

    preset = design.PRESETS[options.preset]
    return data.load(
        preset.base["dataset"], options.data_dir or None, preset.base["validation_size"]
    )


def build_results(root, preset, specs, outcomes, done, num_classes) -> Results:
    from normlab.report import tables
    from normlab.report.stats import mean_ci

    runs = [tables.Run(outcomes[s.name], root) for s in specs]
    first = preset.seeds[0]
    by_config = {r.config: r for r in runs if r.complete}
    impl = {
        (r.config.arch, r.config.norm): tuple(
            mean_ci([x.metric("test_accuracy")]) if x else None
            for x in (by_config.get(dataclasses.replace(r.config, norm_impl="custom")), r)
        )
        for r in by_config.values()
        if r.config.norm_impl == "builtin"
    }
    inside_rows, inside_curves = tables.inside(runs, first, preset.cnn_norms)
    throughput = done["throughput"].get("all", {})
    return Results(
        preset=preset,
        chance=1.0 / num_classes,
        cnn=tables.comparison("cnn", runs, preset.cnn_norms),
        converged=tables.comparison("converged", runs, preset.cnn_norms)
        if preset.converged_epochs
        else None,
        long=tables.comparison("long", runs, ("batch",)) if preset.long_epochs else None,
        lstm=tables.comparison("lstm", runs, preset.lstm_norms),
        batch=tables.sweep("batch", runs, "batch_size", done["bn_eval"]),
        lr=tables.sweep("lr", runs, "learning_rate", done["bn_eval"]),
        lstm_batch=tables.sweep("lstm_batch", runs, "batch_size", done["bn_eval"]),
        impl=impl,
        parity_layers=done["parity"],
        parity_table=done["parity_table"].get("rows", []),
        twins=done["twins"],
        inside=inside_rows,
        inside_curves=inside_curves,
        cost_ms=tables.cost(throughput),
        cost_rounds={k: v["ms_per_step"] for k, v in throughput.items()},
    )


def generate(options: Options, log: Log | None = None) -> str:
    """Runs (or reuses) every run and analysis of the preset, then writes REPORT.md.

    Returns the report's path. Raises UsageError for bad options, a root holding runs of other
    settings, or (report_only) anything missing.
    """
    from normlab import machine
    from normlab.report import analyses, claims, figures, suite, writer

    start = time.perf_counter()
    preset = design.PRESETS[options.preset]
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
    specs = design.plan(preset, options.data_dir, len(splits.train_x))
    log.say(f"{options.command()}  (preset {preset.name}: {len(specs)} runs)")
    training_started = time.perf_counter()
    if options.report_only:
        absent = suite.missing(root, specs)
        if absent:
            raise UsageError(
                f"--report_only: {len(absent)} of the {len(specs)} runs of preset {preset.name} "
                f"are missing or unfinished under {root} (first: {absent[0]}). Run without "
                "--report_only to train them (complete runs are reused)."
            )
    else:
        suite.run_all(root, specs, splits, log.say, log.trainer)
    training_seconds = time.perf_counter() - training_started
    outcomes = {spec.name: suite.load_outcome(root, spec) for spec in specs}

    done = analyses.run_all(root, preset, specs, outcomes, splits, not options.report_only, log.say)
    results = build_results(root, preset, specs, outcomes, done, splits.info.num_classes)
    found = claims.evaluate(results)
    directory = os.path.join(out_dir, writer.FIGURES_DIR)
    figure_files = {
        "cnn": figures.validation_curves([("short budget", results.cnn)], directory, "cnn.png"),
        "converged": figures.validation_curves(
            [("converged", results.converged)], directory, "converged.png"
        ),
        "long": figures.validation_curves([("longer", results.long)], directory, "long.png"),
        "lstm": figures.validation_curves([("LSTM", results.lstm)], directory, "lstm.png"),
        "batch": figures.sweeps(
            [("CNN", results.batch, "batch size"), ("LSTM", results.lstm_batch, "batch size")],
            directory,
            "batch.png",
        ),
        "lr": figures.sweeps([("CNN", results.lr, "peak learning rate")], directory, "lr.png"),
        "twins": figures.twins(results.twins, directory),
        "inside": figures.inside(results.inside_curves, directory),
        "cost": figures.cost(results.cost_ms, directory),
    }
    invocation = time.perf_counter() - start
    runs_seconds = sum(o.wall_seconds or 0.0 for o in outcomes.values())
    overhead = max(0.0, invocation - training_seconds - done["seconds_now"])
    ctx = {
        "command": options.command(),
        "regenerate": options.command(report_only=True),
        "machine": machine.describe(),
        "outcomes": [outcomes[s.name] for s in specs],
        "timing": {
            "runs": runs_seconds,
            "analyses": done["seconds"],
            "overhead": overhead,
            "total": runs_seconds + done["seconds"] + overhead,
        },
        "figures": {k: v for k, v in figure_files.items() if v},
        "root": root,
        "out_dir": out_dir,
    }
    path = writer.write(ctx, results, found)
    log.say(
        f"wrote {path} with {len(ctx['figures'])} figures (suite wall time "
        f"{suite.duration(ctx['timing']['total'])}; this invocation {suite.duration(invocation)})"
    )
    return path
