"""A training run's configuration: the model's settings plus data, optimization, bookkeeping.

`Config` extends models.ModelConfig: one dataclass is train.py's flags (generated from its
fields), the run's flagfile (model_dir/flags.txt) and the validation (each field's limits are
written next to it). `python -m normlab.trainer.config` prints the README's flag table.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from normlab.models.config import ConfigError, ModelConfig, setting
from normlab.trainer.errors import UsageError

DATASETS = ("fashion_mnist", "cifar10")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
POPULATIONS = ("moving_average", "precise")
FLAGS_FILE = "flags.txt"


@dataclasses.dataclass(frozen=True)
class Config(ModelConfig):
    """Every setting of a training run. train.py's flags are generated from these fields."""

    # Data.
    dataset: str = setting("fashion_mnist", "Dataset to train on.", choices=DATASETS)
    data_dir: str = setting(
        "",
        "Directory with the dataset's IDX files (Fashion-MNIST, .gz or not) or TFDS data; "
        "empty: the Debian package's directory, else TFDS.",
        resumable=True,
    )
    validation_size: int = setting(5000, "Training examples held out for validation.", minimum=0)
    augment: bool = setting(False, "Random flips and shifts of up to 2 pixels in training.")
    # Optimization.
    batch_size: int = setting(128, "Training batch size.", minimum=1)
    optimizer: str = setting("sgd", "sgd (with momentum) or adam.", choices=OPTIMIZERS)
    learning_rate: float = setting(0.05, "Peak learning rate.", above=0.0)
    momentum: float = setting(0.9, "SGD momentum.", minimum=0.0, below=1.0)
    lr_schedule: str = setting(
        "cosine", "constant, or cosine decay to 0 at the last step.", choices=SCHEDULES
    )
    warmup_steps: int = setting(0, "Linear warm-up steps from 0 to the learning rate.", minimum=0)
    precision: str = setting(
        "float32",
        "float32, or mixed precision: activations in bfloat16/float16, weights, norm "
        "statistics and moving averages in float32 (float16 with dynamic loss scaling).",
        choices=PRECISIONS,
        resumable=True,  # the checkpoint holds float32 variables in every precision
    )
    train_steps: int = setting(
        0, "Total training steps; 0: use --epochs.", minimum=0, resumable=True
    )
    epochs: float = setting(
        3.0, "Training length in epochs when --train_steps is 0.", above=0.0, resumable=True
    )
    steps_per_loop: int = setting(
        16,
        "Training steps per compiled call (Keras' steps_per_execution): the host reads the "
        "loss once per loop, not once per step. Summaries, logs, validation and checkpoints "
        "still happen at exactly their steps (a loop ends there); the weights are the same "
        "for every value.",
        minimum=1,
        resumable=True,
    )
    # Batch norm's population statistics.
    bn_population: str = setting(
        "moving_average",
        "Batch norm's statistics for validation and test: moving_average (the moving "
        "statistics of --bn_moving_average), or precise (Wu & Johnson 2021: recomputed before "
        "each evaluation with the current weights, as the pooled mean and variance of "
        "--precise_bn_examples training examples run in training mode; the checkpointed "
        "moving statistics are left as they are).",
        choices=POPULATIONS,
        resumable=True,
    )
    precise_bn_examples: int = setting(
        1000,
        "--bn_population=precise: training examples (in whole training batches of "
        "--batch_size, the first of the seed's order, without augmentation) the statistics "
        "are computed over.",
        minimum=1,
        resumable=True,
    )
    # Bookkeeping.
    eval_every: int = setting(
        500, "Validate every N steps (and at the end).", minimum=1, resumable=True
    )
    checkpoint_every: int = setting(
        500, "Checkpoint every N steps (and at the end).", minimum=1, resumable=True
    )
    max_to_keep: int = setting(3, "Checkpoints kept.", minimum=1, resumable=True)
    log_every: int = setting(100, "Print a progress line every N steps.", minimum=1, resumable=True)
    summary_every: int = setting(
        50, "Write training summaries every N steps.", minimum=1, resumable=True
    )
    histogram_every: int = setting(
        500,
        "Write weight, gradient and activation histograms at the first and last step and "
        "every N steps.",
        minimum=1,
        resumable=True,
    )
    eval_batch_size: int = setting(1000, "Batch size of evaluation.", minimum=1, resumable=True)
    deterministic: bool = setting(
        True,
        "Deterministic ops: same seed and flags, same weights. Process-wide (TensorFlow's op "
        "determinism), so it also sets the global seed to --seed.",
        resumable=True,
    )
    check_numerics: bool = setting(
        False,
        "Debugging: TensorFlow's check_numerics on every op (slow), to find the op that "
        "first makes a NaN or Inf.",
        resumable=True,
    )
    # Distribution.
    strategy: str = setting(
        "default",
        "default: one device; mirrored: every visible device of this machine; "
        "multi_worker: several machines, configured by TF_CONFIG.",
        choices=STRATEGIES,
        resumable=True,
    )
    virtual_cpus: int = setting(
        0,
        "Split the CPU into this many logical devices (0: don't), to run "
        "--strategy=mirrored on a machine without GPUs.",
        minimum=0,
        resumable=True,
    )
    collective_timeout: float = setting(
        300.0,
        "multi_worker: seconds a cross-worker all-reduce may wait for a lost worker "
        "before the run stops with an error.",
        minimum=0.0,
        resumable=True,
    )
    startup_timeout: float = setting(
        600.0,
        "multi_worker: seconds to wait at start for the other workers in TF_CONFIG to "
        "answer before stopping with an error naming them (0: no limit).",
        minimum=0.0,
        resumable=True,
    )

    def total_steps(self, steps_per_epoch: int) -> int:
        """--train_steps, or --epochs worth of steps."""
        if self.train_steps > 0:
            return self.train_steps
        return max(1, round(self.epochs * steps_per_epoch))

    def validate(self) -> None:
        """Raises UsageError naming the first bad flag and what it accepts."""
        try:
            super().validate()
        except ConfigError as e:
            raise UsageError(str(e)) from None
        if self.norm == "batch" and self.batch_size < 2:
            raise UsageError(
                "--norm=batch needs --batch_size >= 2: with one example the batch "
                "variance of a dense layer is 0. Use --norm=layer or group for "
                "batch size 1."
            )
        if self.bn_population == "precise" and self.norm != "batch":
            raise UsageError("--bn_population=precise applies to --norm=batch only; drop it.")
        if self.bn_population == "precise" and self.strategy != "default":
            raise UsageError(
                "--bn_population=precise runs on one device: use --strategy=default, or "
                "--bn_population=moving_average with --strategy=" + self.strategy + "."
            )

    # -- flagfile --------------------------------------------------------------------------

    def to_flagfile(self) -> str:
        """The configuration in absl flagfile format: `--name=value` per line."""
        lines = ["# normlab run configuration (absl flagfile: train.py --flagfile=THIS)"]
        unused = self.unused_fields()
        for f in dataclasses.fields(self):
            line = f"--{f.name}={format_value(getattr(self, f.name))}"
            if f.name in unused:
                line = f"# {line}  (not used by --arch={self.arch})"
            lines.append(line)
        return "\n".join(lines) + "\n"

    @classmethod
    def from_flagfile(cls, path: str) -> "Config":
        """Reads a flagfile written by `to_flagfile` (unknown names are an error)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        with open(path) as fh:
            for number, line in enumerate(fh, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if not line.startswith("--") or "=" not in line:
                    raise UsageError(f"{path}:{number}: expected --name=value, got {line!r}")
                name, text = line[2:].split("=", 1)
                if name not in fields:
                    raise UsageError(f"{path}:{number}: unknown setting --{name}")
                values[name] = parse_value(fields[name], text, f"{path}:{number}")
        return cls(**values)

    def differences(self, other: "Config", resumable: bool = False) -> list[str]:
        """`--name: mine -> other's` for each differing field (resumable ones only if asked)."""
        out = []
        for f in dataclasses.fields(self):
            if f.metadata["resumable"] and not resumable:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"--{f.name}: {format_value(a)} -> {format_value(b)}")
        return out


def format_value(value: Any) -> str:
    """A field's value as a flag value: true/false, comma-separated lists, numbers as Python."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def parse_value(field: dataclasses.Field, text: str, where: str) -> Any:
    """A flag value read back for `field` (the inverse of format_value)."""
    kind = type(field.default)
    if kind is bool:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise UsageError(f"{where}: --{field.name} takes true or false, got {text!r}")
    try:
        if kind is tuple:
            return tuple(int(part) for part in text.split(",") if part.strip())
        return kind(text)
    except ValueError:
        what = "comma-separated integers" if kind is tuple else f"a {kind.__name__}"
        raise UsageError(f"{where}: --{field.name} takes {what}, got {text!r}") from None


def flags_path(model_dir: str) -> str:
    return os.path.join(model_dir, FLAGS_FILE)


def is_run_dir(path: str) -> bool:
    """Whether `path` is a normlab run directory (it has a flags file)."""
    return os.path.isfile(flags_path(path))


def flags_markdown() -> str:
    """train.py's flags as a Markdown table (the README's), generated from the fields."""
    from normlab.trainer.cli import START_OVER_HELP  # train.py's own flag (cli imports this)

    lines = ["| flag | default | meaning |", "|---|---|---|"]
    lines.append(
        "| `--model_dir` | (required) | Run directory: flags, checkpoints, summaries, "
        "metrics. An existing one is resumed with its saved flags. |"
    )
    lines.append(f"| `--start_over` | `false` | {START_OVER_HELP} |")
    for f in dataclasses.fields(Config):
        help_text = f.metadata["help"]
        if f.metadata["choices"]:
            help_text += f" One of: {', '.join(f.metadata['choices'])}."
        if f.metadata["resumable"]:
            help_text += " May change on resume."
        lines.append(f"| `--{f.name}` | `{format_value(f.default)}` | {help_text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        prog="python -m normlab.trainer.config",
        description="Prints train.py's flags as the README's Markdown table.",
    ).parse_args()
    print(flags_markdown())
