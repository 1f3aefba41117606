"""eval.py's library: find runs, evaluate each from its saved flags, compare them.

A path that is not a run or holds none, a run without a checkpoint, a damaged checkpoint: each
is reported once, and the other runs are still evaluated. The comparison prints the settings
all runs share once, then one row per run with the settings that tell the runs apart, so it
stays narrow (at most 100 columns for a handful of runs).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import textwrap

import numpy as np

from normlab import data
from normlab.core.tables import markdown_table, text_table
from normlab.trainer.config import Config, flags_path, format_value, is_run_dir
from normlab.trainer.errors import RunError, UsageError

# Settings that may tell runs apart, in the order the table shows them (the run's checkpoint
# and replicas come from the run itself).
DISTINGUISHING = (
    "dataset",
    "arch",
    "norm",
    "norm_impl",
    "widths",
    "lstm_units",
    "precision",
    "batch_size",
    "optimizer",
    "learning_rate",
    "augment",
    "seed",
)
# Column names; lstm_units keeps its name (a column only when LSTM runs differ in it; a CNN row
# shows "-" there).
SHORT = {"norm_impl": "impl", "batch_size": "batch", "learning_rate": "lr"}
# Agreement columns per block: a matrix wider than this is printed in several blocks.
MATRIX_BLOCK = 12


@dataclasses.dataclass
class RunResult:
    model_dir: str
    config: Config
    checkpoint: str
    step: int
    test_accuracy: float
    test_loss: float
    parameters: int
    per_class_accuracy: list[float]
    class_names: tuple[str, ...]
    predictions: np.ndarray
    status: str = "finished"  # of the evaluated checkpoint: see checkpoint_status


def find_runs(paths: list[str]) -> tuple[list[str], dict[str, str]]:
    """Expands each path: a run directory (has flags.txt) is itself; any other directory, every
    run below it (at any depth). Returns (runs, {path: why it gives none})."""
    runs, failures = [], {}
    for path in paths:
        if not os.path.isdir(path):
            failures[path] = "no such directory" if not os.path.exists(path) else "not a directory"
            continue
        if is_run_dir(path):
            runs.append(path)
            continue
        found = []
        for dirpath, dirnames, _ in os.walk(path):
            dirnames.sort()
            if is_run_dir(dirpath):
                found.append(dirpath)
                dirnames[:] = []  # a run's subdirectories are its own (checkpoints, summaries)
        if not found:
            failures[path] = (
                "neither a normlab run (no flags.txt) nor a directory holding runs; give the "
                "--model_dir of a train.py run"
            )
        runs += found
    return runs, failures


def evaluate_runs(
    dirs: list[str],
    checkpoint: str | None = None,
    data_dir: str | None = None,
    precision: str | None = None,
    log=lambda _: None,
) -> tuple[list[RunResult], dict[str, str]]:
    """Evaluates each run on its test split; returns (results, {dir: reason it failed}).
    data_dir and precision, when given, replace the runs' own."""
    from normlab.trainer.trainer import Trainer  # TensorFlow-heavy; imported when needed

    results, failures, cache = [], {}, {}
    for model_dir in dirs:
        try:
            config = Config.from_flagfile(flags_path(model_dir))
            if data_dir is not None:
                config = dataclasses.replace(config, data_dir=data_dir)
            if precision is not None:
                config = dataclasses.replace(config, precision=precision)
            key = (config.dataset, config.data_dir, config.validation_size)
            if key not in cache:
                cache[key] = data.load(
                    config.dataset, config.data_dir or None, config.validation_size
                )
            trainer = Trainer(
                config,
                model_dir,
                splits=cache[key],
                log=lambda line, d=model_dir: log(f"{d}: {line}"),
                read_only=True,
                checkpoint=checkpoint,
            )
            saved = trainer.run_dir.read_metrics()
            status = checkpoint_status(
                trainer.current_step,
                trainer.total_steps,
                saved,
                training=lock_holder(model_dir) is not None,
                latest=checkpoint is None,
            )
            if trainer.restored:
                used = os.path.basename(trainer.restored)
            elif saved.get("diverged_at_step"):
                raise RunError(
                    f"diverged at step {saved['diverged_at_step']} (first non-finite layer: "
                    f"{saved.get('diverged_layer', '?')}) before its first checkpoint: nothing "
                    "to evaluate"
                )
            elif lock_holder(model_dir) is not None:
                raise RunError(
                    f"training, no checkpoint yet ({lock_holder(model_dir)}): evaluate it after "
                    f"its first checkpoint (every --checkpoint_every={config.checkpoint_every} "
                    "steps)"
                )
            else:
                raise RunError(
                    "stopped before its first checkpoint; run the same train.py command to "
                    "train it"
                )
            result = trainer.evaluate("test")
        except (UsageError, RunError, data.DatasetError) as e:
            failures[model_dir] = str(e)
            continue
        results.append(
            RunResult(
                model_dir=model_dir,
                config=config,
                checkpoint=used,
                step=trainer.current_step,
                test_accuracy=result["accuracy"],
                test_loss=result["loss"],
                parameters=trainer.model.num_parameters(),
                per_class_accuracy=result["per_class_accuracy"],
                class_names=trainer.splits.info.class_names,
                predictions=result["predictions"],
                status=status,
            )
        )
    return results, failures


def checkpoint_status(
    step: int, total: int, saved: dict, training: bool, latest: bool = True
) -> str:
    """The status column: what the evaluated checkpoint (at `step` of the run's `total`) is.

    "finished" for a finished run's last step; "diverged at step k" for the newest checkpoint of
    a run that diverged; otherwise "step s of n (...)" with what the run is: run finished, run
    diverged at step k, training (a live process holds its lock) or stopped. `saved` is the
    run's metrics.json."""
    diverged = saved.get("diverged_at_step")
    if diverged:
        if latest:
            return f"diverged at step {diverged}"
        run = f"run diverged at step {diverged}"
    elif saved.get("step", 0) >= total:
        if step >= total:
            return "finished"
        run = "run finished"
    else:
        run = "training" if training else "stopped"
    return f"step {step} of {total} ({run})"


def lock_holder(model_dir: str) -> str | None:
    """"pid P on HOST since T" when a live process of this machine holds the run's lock
    (trainer/lock.py records its holder there and empties the file on a clean exit), None when
    nobody does: an empty or missing lock, or one left by a killed process. The lock file is only
    read (taking the flock, even for an instant, could refuse a train.py starting then). A
    holder on another host cannot be checked from here and counts as live."""
    import socket

    from normlab.trainer import lock

    try:
        with open(os.path.join(model_dir, lock.LOCK_FILE)) as fh:
            owner = json.loads(fh.read() or "{}")
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not owner.get("pid"):
        return None
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner["pid"]), 0)
        except (ProcessLookupError, ValueError):
            return None
        except PermissionError:  # alive, another user's
            pass
    return f"pid {owner['pid']} on {owner.get('host', '?')} since {owner.get('since', '?')}"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _loss(x: float) -> str:
    """4 decimals, or 4 significant digits for a diverged run's huge (or non-finite) loss."""
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.4g}"


def _setting(config: Config, name: str) -> str:
    """A setting as the table shows it; "-" for one the run's architecture does not use."""
    return "-" if name in config.unused_fields() else format_value(getattr(config, name))


class Comparison:
    """The comparison of evaluated runs, as text, Markdown, JSON and CSV."""

    def __init__(self, results: list[RunResult], failures: dict[str, str]):
        self.results = results
        self.failures = failures

    def settings(self) -> tuple[dict, list[str]]:
        """({setting: value} shared by every run that uses it, [settings that differ]).

        A setting only some runs' architecture uses (lstm_units, widths) differs only when
        those runs differ in it: one value among them is shared, and says which runs ("8 (#4)"),
        so a CNN row never holds "-" in an LSTM's column for nothing."""
        shared, differing = {}, []
        for name in DISTINGUISHING:
            users = [
                i for i, r in enumerate(self.results, 1) if name not in r.config.unused_fields()
            ]
            values = {_setting(self.results[i - 1].config, name) for i in users}
            if len(values) > 1:
                differing.append(name)
            elif values:
                value = values.pop()
                if len(users) < len(self.results):
                    value += f" ({', '.join(f'#{i}' for i in users)})"
                shared[SHORT.get(name, name)] = value
        return shared, differing

    def rows(self) -> list[dict]:
        """One dict per run: every distinguishing setting, the evaluation, per-class accuracy."""
        out = []
        for i, r in enumerate(self.results, 1):
            row = {"#": i, "run": r.model_dir}
            row.update({SHORT.get(n, n): _setting(r.config, n) for n in DISTINGUISHING})
            row.update(
                status=r.status,
                checkpoint=r.checkpoint,
                steps=r.step,
                test_accuracy=round(r.test_accuracy, 6),
                test_loss=round(r.test_loss, 6),
                params=r.parameters,
            )
            row.update(
                {f"acc_{n}": round(a, 6) for n, a in zip(r.class_names, r.per_class_accuracy)}
            )
            out.append(row)
        return out

    def short_names(self) -> tuple[str, list[str]]:
        """(the runs' common directory, each run's path below it): long absolute paths would
        push the table past 100 columns."""
        dirs = [os.path.abspath(r.model_dir) for r in self.results]
        base = os.path.commonpath(dirs) if len(dirs) > 1 else os.path.dirname(dirs[0])
        if base in dirs:  # one run inside another's directory: keep the parent
            base = os.path.dirname(base)
        return base, [os.path.relpath(d, base) for d in dirs]

    def agreement(self) -> np.ndarray | None:
        """[i, j]: the share of test examples runs i and j predict alike (same test set)."""
        predictions = [r.predictions for r in self.results]
        if len(predictions) < 2 or len({len(p) for p in predictions}) != 1:
            return None
        stacked = np.stack(predictions)
        return (stacked[:, None, :] == stacked[None, :, :]).mean(-1)

    def _sections(self, markdown: bool) -> str:
        table = markdown_table if markdown else text_table
        if not self.results:
            parts = ["No run evaluated."]
        else:
            shared, differing = self.settings()
            base, names = self.short_names()
            columns = ["#", "run"] + [SHORT.get(n, n) for n in differing]
            rows = [
                [i, names[i - 1]]
                + [_setting(r.config, n) for n in differing]
                + [r.status, r.checkpoint, _pct(r.test_accuracy), _loss(r.test_loss)]
                for i, r in enumerate(self.results, 1)
            ]
            shared_text = ", ".join(f"{k} {v}" for k, v in shared.items())
            intro = (
                f"Runs in {base}; test split, inference mode. Shared by every run: {shared_text}."
            )
            parts = [
                *textwrap.wrap(intro, 100),
                "",
                table(columns + ["status", "checkpoint", "test acc", "test loss"], rows),
                *self._per_class(table),
            ]
            matrix = self.agreement()
            if matrix is not None:
                parts += ["", "Share of test predictions two runs agree on (%):"]
                for start in range(0, len(matrix), MATRIX_BLOCK):
                    cols = range(start, min(start + MATRIX_BLOCK, len(matrix)))
                    parts.append(
                        table(
                            ["#"] + [str(j + 1) for j in cols],
                            [
                                [i + 1] + [f"{100 * matrix[i, j]:.1f}" for j in cols]
                                for i in range(len(matrix))
                            ],
                        )
                    )
        for model_dir, reason in self.failures.items():
            parts += ["", f"Not evaluated: {model_dir}: {reason}"]
        return "\n".join(parts) + "\n"

    def _per_class(self, table) -> list[str]:
        """Per-class test accuracy: a class per row with its full name, a run per column (in
        blocks), one table per data set when the runs were trained on different ones."""
        parts = []
        by_classes: dict[tuple, list[int]] = {}
        for i, r in enumerate(self.results, 1):
            by_classes.setdefault(tuple(r.class_names), []).append(i)
        for names, runs in by_classes.items():
            dataset = self.results[runs[0] - 1].config.dataset
            title = "Per-class test accuracy (%)"
            parts += ["", f"{title}, {dataset}:" if len(by_classes) > 1 else f"{title}:"]
            for start in range(0, len(runs), MATRIX_BLOCK):
                block = runs[start : start + MATRIX_BLOCK]
                parts.append(
                    table(
                        ["class"] + [f"#{i}" for i in block],
                        [
                            [name]
                            + [
                                f"{100 * self.results[i - 1].per_class_accuracy[k]:.1f}"
                                for i in block
                            ]
                            for k, name in enumerate(names)
                        ],
                    )
                )
        return parts

    def text(self) -> str:
        return self._sections(markdown=False)

    def markdown(self) -> str:
        return self._sections(markdown=True)

    def json(self) -> str:
        matrix = self.agreement()
        return (
            json.dumps(
                {
                    "runs": self.rows(),
                    "prediction_agreement": matrix.round(6).tolist()
                    if matrix is not None
                    else None,
                    "not_evaluated": self.failures,
                },
                indent=2,
            )
            + "\n"
        )

    def csv(self) -> str:
        rows = self.rows()
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue()
