"""eval.py's library: find runs, evaluate each from its saved flags, compare them."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os

import numpy as np

from normlab import data
from normlab.trainer.config import Config, flags_path
from normlab.trainer.errors import RunError, UsageError


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


def find_runs(paths: list[str]) -> list[str]:
    """Expands each path: a run directory (has flags.txt) is itself; a root, its runs."""
    runs = []
    for path in paths:
        if not os.path.isdir(path):
            raise UsageError(f"{path} is not a directory.")
        if os.path.isfile(flags_path(path)):
            runs.append(path)
            continue
        children = sorted(os.path.join(path, name) for name in os.listdir(path))
        found = [c for c in children if os.path.isfile(flags_path(c))]
        if not found:
            raise UsageError(
                f"{path} is neither a normlab run (no flags.txt) nor a directory "
                "holding runs. Give the --model_dir of a train.py run."
            )
        runs += found
    return runs


def evaluate_runs(
    dirs: list[str], checkpoint: str | None = None, data_dir: str | None = None, log=print
) -> tuple[list[RunResult], dict[str, str]]:
    """Evaluates each run on its test split; returns (results, {dir: reason it failed})."""
    from normlab.trainer.trainer import Trainer  # TensorFlow-heavy; imported when needed

    results, failures, cache = [], {}, {}
    for model_dir in dirs:
        try:
            config = Config.from_flagfile(flags_path(model_dir))
            if data_dir is not None:
                config = dataclasses.replace(config, data_dir=data_dir)
            key = (config.dataset, config.data_dir, config.validation_size)
            if key not in cache:
                cache[key] = data.load(
                    config.dataset, config.data_dir or None, config.validation_size
                )
            trainer = Trainer(
                config, model_dir, splits=cache[key], log=lambda _: None, read_only=True
            )
            if checkpoint:
                trainer.restore(checkpoint)
                used = checkpoint
            elif trainer.manager.latest_checkpoint:
                used = os.path.basename(trainer.manager.latest_checkpoint)
            else:
                raise RunError("no checkpoint yet (has training saved one?)")
            result = trainer.evaluate("test")
        except (UsageError, RunError, data.DatasetError) as e:
            failures[model_dir] = str(e)
            log(f"{model_dir}: not evaluated: {e}")
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
            )
        )
    return results, failures


class Comparison:
    """The comparison table of evaluated runs, as text, Markdown, JSON and CSV."""

    COLUMNS = ("run", "norm", "impl", "steps", "test_acc", "test_loss", "params")

    def __init__(self, results: list[RunResult], failures: dict[str, str]):
        self.results = results
        self.failures = failures

    def rows(self) -> list[dict]:
        rows = []
        for r in self.results:
            row = {
                "run": r.model_dir,
                "norm": r.config.norm,
                "impl": r.config.norm_impl,
                "steps": r.step,
                "test_acc": round(r.test_accuracy, 4),
                "test_loss": round(r.test_loss, 4),
                "params": r.parameters,
            }
            row.update(
                {f"acc_{name}": round(a, 4) for name, a in zip(r.class_names, r.per_class_accuracy)}
            )
            rows.append(row)
        return rows

    def agreement(self) -> float | None:
        """The share of test examples two runs predict alike (only for exactly two runs)."""
        if len(self.results) != 2:
            return None
        a, b = (r.predictions for r in self.results)
        return float(np.mean(a == b)) if len(a) == len(b) else None

    def _table(self, rows: list[dict], columns, markdown: bool) -> str:
        cells = [[str(row.get(c, "")) for c in columns] for row in rows]
        if markdown:
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
        widths = [max(len(x) for x in col) for col in zip(columns, *cells)]
        return "\n".join(
            "  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [list(columns)] + cells
        )

    def _sections(self, markdown: bool) -> str:
        rows = self.rows()
        parts = [self._table(rows, self.COLUMNS, markdown)] if rows else ["no run evaluated"]
        if rows:
            per_class = ["run"] + [k for k in rows[0] if k.startswith("acc_")]
            parts += ["", "Per-class test accuracy:", self._table(rows, per_class, markdown)]
        agreement = self.agreement()
        if agreement is not None:
            parts += ["", f"Prediction agreement between the two runs: {agreement:.4f}"]
        for model_dir, reason in self.failures.items():
            parts += ["", f"Not evaluated: {model_dir}: {reason}"]
        return "\n".join(parts) + "\n"

    def text(self) -> str:
        return self._sections(markdown=False)

    def markdown(self) -> str:
        return self._sections(markdown=True)

    def json(self) -> str:
        return (
            json.dumps(
                {
                    "runs": self.rows(),
                    "prediction_agreement": self.agreement(),
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
