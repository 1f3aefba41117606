"""Runs a plan's training runs under one root: reuses complete runs, resumes partial ones.

Each run is a Trainer model_dir `<root>/<run name>`. Next to the trainer's files the suite
keeps `suite.json`: the run's outcome (complete or diverged), its measured wall time summed
over every session that trained it, and the number of sessions. A run counts as done when its
flags match the plan and either metrics.json reports the planned step (complete) or suite.json
records a divergence (a non-finite loss: retrying would diverge again, identically).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import time
from collections.abc import Callable

from normlab.report.experiments import RunSpec
from normlab.trainer.config import Config, flags_path
from normlab.trainer.errors import RunError, UsageError

RECORD_FILE = "suite.json"
METRICS_FILE = "metrics.json"  # the trainer's (trainer.trainer.METRICS_FILE)

COMPLETE, DIVERGED, PARTIAL, MISSING = "complete", "diverged", "partial", "missing"

# The trainer reports a non-finite loss as a RunError with this wording (trainer/trainer.py,
# _stop_on_non_finite); any other RunError (a lock held elsewhere, a corrupt checkpoint, an
# interruption) stops the suite.
_NON_FINITE = re.compile(r"non-finite loss or gradient at step (\d+)")


@dataclasses.dataclass
class Outcome:
    """What became of one run: complete (with its metrics) or diverged (at a step)."""

    spec: RunSpec
    status: str
    metrics: dict
    wall_seconds: float | None
    diverged_at_step: int | None = None
    error: str | None = None
    reused: bool = False


def run_dir(root: str, spec: RunSpec) -> str:
    return os.path.join(root, spec.name)


def read_json(path: str) -> dict | None:
    """The JSON object in path, or None if the file is missing or unreadable (half-written)."""
    try:
        with open(path) as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str, value: dict) -> None:
    """Writes through a temporary file and a rename: a kill never leaves half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(value, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def state(root: str, spec: RunSpec) -> str:
    """MISSING, PARTIAL, COMPLETE or DIVERGED; UsageError if the directory holds another run."""
    directory = run_dir(root, spec)
    if not os.path.isfile(flags_path(directory)):
        return MISSING
    saved = Config.from_flagfile(flags_path(directory))
    conflicts = saved.differences(spec.config, resumable=True)
    if conflicts:
        raise UsageError(
            f"{directory} holds a run with other settings than this preset plans "
            f"({'; '.join(conflicts[:4])}{'; ...' if len(conflicts) > 4 else ''}). It was made "
            "by another preset or --data_dir: use another --root, the same --data_dir, or "
            "remove that directory."
        )
    metrics = read_json(os.path.join(directory, METRICS_FILE))
    if metrics and metrics.get("step", 0) >= spec.config.train_steps:
        return COMPLETE
    record = read_json(os.path.join(directory, RECORD_FILE)) or {}
    if record.get("status") == DIVERGED:
        return DIVERGED
    return PARTIAL


def load_outcome(root: str, spec: RunSpec) -> Outcome:
    """The outcome of a done run (state COMPLETE or DIVERGED) from its files."""
    directory = run_dir(root, spec)
    status = state(root, spec)
    if status not in (COMPLETE, DIVERGED):
        raise UsageError(f"{directory} is not a finished run ({status})")
    record = read_json(os.path.join(directory, RECORD_FILE)) or {}
    metrics = (read_json(os.path.join(directory, METRICS_FILE)) or {}) if status == COMPLETE else {}
    wall = record.get("wall_seconds")
    if wall is None and metrics:
        # A run trained outside the suite (train.py with the same flags): the trainer's own
        # training time, which leaves out start-up and the final evaluation.
        wall = metrics.get("train_seconds")
    return Outcome(
        spec=spec,
        status=status,
        metrics=metrics,
        wall_seconds=wall,
        diverged_at_step=record.get("diverged_at_step"),
        error=record.get("error"),
        reused=True,
    )


def train(root: str, spec: RunSpec, splits, log: Callable[[str], None]) -> Outcome:
    """Trains (or resumes) one run to its end; a non-finite loss is an outcome, not an error.

    The wall time of this session is added to suite.json however the session ends, so an
    interrupted and resumed run is charged for all its sessions.
    """
    from normlab.trainer.trainer import Trainer  # TensorFlow-heavy

    directory = run_dir(root, spec)
    start = time.perf_counter()
    status, metrics, step, error = PARTIAL, {}, None, None
    try:
        trainer = Trainer(spec.config, directory, splits=splits, log=log)
        try:
            metrics = trainer.train_and_evaluate()
        finally:
            trainer.close()
        status = COMPLETE
    except RunError as e:
        match = _NON_FINITE.search(str(e))
        if not match:
            raise
        status, step, error = DIVERGED, int(match.group(1)), str(e)
    finally:
        if os.path.isfile(flags_path(directory)):  # the Trainer got as far as a run directory
            path = os.path.join(directory, RECORD_FILE)
            record = read_json(path) or {}
            record.update(
                name=spec.name,
                status=status,
                wall_seconds=record.get("wall_seconds", 0.0) + time.perf_counter() - start,
                sessions=record.get("sessions", 0) + 1,
            )
            if status == DIVERGED:
                record.update(diverged_at_step=step, error=error)
            write_json(path, record)
    record = read_json(os.path.join(directory, RECORD_FILE)) or {}
    return Outcome(
        spec=spec,
        status=status,
        metrics=metrics,
        wall_seconds=record.get("wall_seconds"),
        diverged_at_step=step,
        error=error,
    )


def prior_seconds(spec: RunSpec) -> float:
    """A rough cost model, measured once with the default CNN on 2 shared cores (TF 2.21): about
    4.5 ms + 0.3 ms per example per step (x1.4 for group norm, x1.25 for the built-in batch and
    layer norm), 0.14 ms per evaluated example, 3 s to build and compile. For --plan and the
    ETA until the first run of the session is measured."""
    c = spec.config
    ms = 4.5 + 0.3 * c.batch_size
    ms *= 1.4 if c.norm == "group" else 1.0
    ms *= 1.25 if c.norm_impl == "builtin" and c.norm in ("batch", "layer") else 1.0
    evaluated = (c.train_steps // c.eval_every + 2) * c.validation_size + 10000
    return c.train_steps * ms / 1000 + evaluated * 1.4e-4 + 3.0


class Estimator:
    """Predicts a run's wall time from the runs measured so far.

    Cost per step depends on the norm, the implementation and the batch size; the closest
    measured match is used: the same (norm, impl, batch size) per step, else the same batch
    size per example scaled by the prior's ratio, else the prior scaled by how far the measured
    runs were from it. Diverged runs stopped early: not used.
    """

    def __init__(self):
        self._per_step: dict[tuple, list[float]] = {}
        self._per_example: dict[int, list[float]] = {}
        self._vs_prior: list[float] = []

    @property
    def measured(self) -> bool:
        return bool(self._vs_prior)

    def add(self, outcome: Outcome) -> None:
        c = outcome.spec.config
        if outcome.status != COMPLETE or not outcome.wall_seconds:
            return
        self._per_step.setdefault((c.norm, c.norm_impl, c.batch_size), []).append(
            outcome.wall_seconds / c.train_steps
        )
        self._per_example.setdefault(c.batch_size, []).append(
            outcome.wall_seconds / outcome.spec.examples
        )
        self._vs_prior.append(outcome.wall_seconds / prior_seconds(outcome.spec))

    def seconds(self, spec: RunSpec) -> float:
        c = spec.config
        per_step = self._per_step.get((c.norm, c.norm_impl, c.batch_size))
        if per_step:
            return statistics.median(per_step) * c.train_steps
        per_example = self._per_example.get(c.batch_size)
        if per_example:
            return statistics.median(per_example) * spec.examples
        scale = statistics.median(self._vs_prior) if self._vs_prior else 1.0
        return prior_seconds(spec) * scale


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_all(
    root: str,
    specs: list[RunSpec],
    splits,
    say: Callable[[str], None],
    trainer_log: Callable[[str], None],
) -> list[Outcome]:
    """Every run of the plan, reusing done ones; `say` gets one progress line per event."""
    states = {spec.name: state(root, spec) for spec in specs}  # conflicts fail before training
    counts = {s: sum(v == s for v in states.values()) for s in (COMPLETE, DIVERGED, PARTIAL)}
    say(
        f"{len(specs)} runs under {root}: {counts[COMPLETE]} complete, {counts[DIVERGED]} "
        f"diverged (both reused), {counts[PARTIAL]} to resume, "
        f"{len(specs) - sum(counts.values())} to train"
    )
    estimator, outcomes = Estimator(), []
    for spec in specs:
        if states[spec.name] in (COMPLETE, DIVERGED):
            estimator.add(load_outcome(root, spec))
    session_start = time.perf_counter()
    width = len(str(len(specs)))
    for index, spec in enumerate(specs, 1):
        tag = f"[{index:>{width}}/{len(specs)}]"
        if states[spec.name] in (COMPLETE, DIVERGED):
            outcome = load_outcome(root, spec)
            say(f"{tag} reused   {spec.name}: {_summary(outcome)}")
            outcomes.append(outcome)
            continue
        todo = [s for s in specs[index - 1 :] if states[s.name] not in (COMPLETE, DIVERGED)]
        eta = sum(estimator.seconds(s) for s in todo)
        verb = "resuming" if states[spec.name] == PARTIAL else "training"
        elapsed = duration(time.perf_counter() - session_start)
        say(
            f"{tag} {verb} {spec.name} ({', '.join(spec.sections)}; "
            f"{spec.config.train_steps} steps)  elapsed {elapsed}  ETA {duration(eta)}"
            + ("" if estimator.measured else " (prior estimate: nothing measured yet)")
        )
        outcome = train(root, spec, splits, trainer_log)
        estimator.add(outcome)
        say(f"{tag} {outcome.status:<8} {spec.name}: {_summary(outcome)}")
        outcomes.append(outcome)
    return outcomes


def _summary(outcome: Outcome) -> str:
    took = f"{duration(outcome.wall_seconds)} of training" if outcome.wall_seconds else "time ?"
    if outcome.status == DIVERGED:
        return f"diverged at step {outcome.diverged_at_step} ({took})"
    return f"test accuracy {outcome.metrics.get('test_accuracy', float('nan')):.4f} ({took})"


def missing(root: str, specs: list[RunSpec]) -> list[str]:
    """The planned runs that are not done (for --report_only)."""
    return [s.name for s in specs if state(root, s) not in (COMPLETE, DIVERGED)]
