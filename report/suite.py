"""Runs a plan's training runs under one root: reuses complete runs, resumes partial ones.

Each run is a Trainer model_dir `<root>/<run name>`. Next to the trainer's files the suite
keeps `suite.json`: the run's outcome (complete or diverged), its measured wall time summed
over every session that trained it, the number of sessions and the commits of the code that
trained it. A run counts as done when its
flags match the plan and either metrics.json reports the planned step (complete) or suite.json
records a divergence (a non-finite loss: retrying would diverge again, identically).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable

from normlab import machine
from normlab.report.design import RunSpec
from normlab.trainer.config import Config, flags_path
from normlab.trainer.errors import NonFiniteError, UsageError
from normlab.trainer.loop import duration
from normlab.trainer.run_dir import METRICS_FILE, write_atomically

RECORD_FILE = "suite.json"
COMPLETE, DIVERGED, PARTIAL, MISSING = "complete", "diverged", "partial", "missing"


@dataclasses.dataclass
class Outcome:
    """What became of one run: complete (with its metrics) or diverged (at a step)."""

    spec: RunSpec
    status: str
    metrics: dict
    wall_seconds: float | None
    diverged_at_step: int | None = None
    commits: tuple[str, ...] = ()  # of the code that trained it; () if not recorded


def read_json(path: str) -> dict | None:
    """The JSON object in path, or None if the file is missing or unreadable (half-written)."""
    try:
        with open(path) as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str, value: dict) -> None:
    write_atomically(path, json.dumps(value, indent=2) + "\n")


def state(root: str, spec: RunSpec) -> str:
    """MISSING, PARTIAL, COMPLETE or DIVERGED; UsageError if the directory holds another run."""
    directory = os.path.join(root, spec.name)
    if not os.path.isfile(flags_path(directory)):
        return MISSING
    conflicts = Config.from_flagfile(flags_path(directory)).differences(spec.config, True)
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
    return DIVERGED if record.get("status") == DIVERGED else PARTIAL


def load_outcome(root: str, spec: RunSpec) -> Outcome:
    """The outcome of a done run (state COMPLETE or DIVERGED) from its files."""
    directory = os.path.join(root, spec.name)
    status = state(root, spec)
    if status not in (COMPLETE, DIVERGED):
        raise UsageError(f"{directory} is not a finished run ({status})")
    record = read_json(os.path.join(directory, RECORD_FILE)) or {}
    metrics = (read_json(os.path.join(directory, METRICS_FILE)) or {}) if status == COMPLETE else {}
    return Outcome(
        spec=spec,
        status=status,
        metrics=metrics,
        # A run trained outside the suite (train.py, same flags): the trainer's training time.
        wall_seconds=record.get("wall_seconds", metrics.get("train_seconds")),
        diverged_at_step=record.get("diverged_at_step"),
        commits=tuple(record.get("commits", ())),
    )


def train(root: str, spec: RunSpec, splits, log: Callable[[str], None]) -> Outcome:
    """Trains (or resumes) one run to its end; a non-finite loss is an outcome, not an error."""
    from normlab.trainer.trainer import Trainer

    directory = os.path.join(root, spec.name)
    start = time.perf_counter()
    status, diverged_at = PARTIAL, None
    try:
        trainer = Trainer(spec.config, directory, splits=splits, log=log)
        try:
            trainer.train_and_evaluate()
        finally:
            trainer.close()
        status = COMPLETE
    except NonFiniteError as e:
        status, diverged_at = DIVERGED, e.step
    finally:
        if os.path.isfile(flags_path(directory)):  # the Trainer got as far as a run directory
            path = os.path.join(directory, RECORD_FILE)
            record = read_json(path) or {}
            record.update(
                name=spec.name,
                status=status,
                wall_seconds=record.get("wall_seconds", 0.0) + time.perf_counter() - start,
                sessions=record.get("sessions", 0) + 1,
                commits=sorted(set(record.get("commits", [])) | {machine.commit()}),
            )
            if status == DIVERGED:
                record["diverged_at_step"] = diverged_at
            write_json(path, record)
    return load_outcome(root, spec)


class Estimator:
    """Predicts a run's wall time: the median seconds per training example of the finished
    runs of the same (arch, norm, impl, batch size), else of the same arch, else 0.3 ms (the
    CNN at batch 128 on 2 cores)."""

    def __init__(self):
        self._rates: dict[tuple, list[float]] = {}

    def add(self, outcome: Outcome) -> None:
        c = outcome.spec.config
        if outcome.status == COMPLETE and outcome.wall_seconds:
            for key in ((c.arch, c.norm, c.norm_impl, c.batch_size), (c.arch,)):
                self._rates.setdefault(key, []).append(outcome.wall_seconds / outcome.spec.examples)

    def seconds(self, spec: RunSpec) -> float:
        c = spec.config
        for key in ((c.arch, c.norm, c.norm_impl, c.batch_size), (c.arch,)):
            if key in self._rates:
                return statistics.median(self._rates[key]) * spec.examples
        return 3e-4 * spec.examples


def run_all(root: str, specs: list[RunSpec], splits, say, trainer_log) -> list[Outcome]:
    """Every run of the plan, reusing done ones; `say` gets one progress line per event."""
    states = {spec.name: state(root, spec) for spec in specs}  # conflicts fail before training
    done = {COMPLETE, DIVERGED}
    counts = {s: sum(v == s for v in states.values()) for s in (COMPLETE, DIVERGED, PARTIAL)}
    say(
        f"{len(specs)} runs under {root}: {counts[COMPLETE]} complete, {counts[DIVERGED]} "
        f"diverged (both reused), {counts[PARTIAL]} to resume, "
        f"{len(specs) - sum(counts.values())} to train"
    )
    estimator, outcomes = Estimator(), []
    for spec in specs:
        if states[spec.name] in done:
            estimator.add(load_outcome(root, spec))
    session_start = time.perf_counter()
    width = len(str(len(specs)))
    for index, spec in enumerate(specs, 1):
        tag = f"[{index:>{width}}/{len(specs)}]"
        if states[spec.name] in done:
            outcome = load_outcome(root, spec)
            say(f"{tag} reused   {spec.name}: {_summary(outcome)}")
        else:
            eta = sum(
                estimator.seconds(s) for s in specs[index - 1 :] if states[s.name] not in done
            )
            verb = "resuming" if states[spec.name] == PARTIAL else "training"
            say(
                f"{tag} {verb} {spec.name} ({', '.join(spec.sections)}; "
                f"{spec.config.train_steps} steps)  elapsed "
                f"{duration(time.perf_counter() - session_start)}  ETA {duration(eta)}"
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
