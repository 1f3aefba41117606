"""The run's configuration: one dataclass that is the flags, the flagfile and the validation."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from normlab.models.cnn import ARCHS, NORMS, WN_INITS, ModelConfig
from normlab.models.norms import IMPLS
from normlab.trainer.errors import UsageError

DATASETS = ("fashion_mnist", "cifar10")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
FLAGS_FILE = "flags.txt"


def _field(default, help: str, choices: tuple | None = None, resumable: bool = False):
    """A config field; `resumable` fields may change when a run is resumed."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "resumable": resumable}
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a training run. train.py's flags are generated from these fields."""

    # Data.
    dataset: str = _field("fashion_mnist", "Dataset to train on.", DATASETS)
    data_dir: str = _field(
        "",
        "Directory with the dataset's IDX files (Fashion-MNIST, .gz or "
        "not) or TFDS data; empty: the Debian package's directory, else TFDS.",
        resumable=True,
    )
    validation_size: int = _field(5000, "Training examples held out for validation.")
    augment: bool = _field(False, "Random flips and shifts of up to 2 pixels in training.")
    # Model.
    arch: str = _field("default", "Network: 'default' CNN or the exercise's 'course' net.", ARCHS)
    widths: str = _field("32,64", "Channels of each conv block (default arch), comma-separated.")
    dense_units: int = _field(128, "Units of the hidden dense layer (default arch).")
    norm: str = _field("batch", "Normalization after each conv and the hidden dense layer.", NORMS)
    norm_impl: str = _field(
        "custom", "custom: normlab's core functions; builtin: TensorFlow's.", IMPLS
    )
    groups: int = _field(
        8, "Group norm: groups per layer (largest divisor of its channels not above this)."
    )
    bn_momentum: float = _field(0.99, "Batch norm moving-average momentum (Keras convention).")
    norm_eps: float = _field(1e-3, "eps of every norm, added to the variance inside the root.")
    wn_init: str = _field(
        "norm",
        "Weight norm init: 'norm' (g = ||v||) or 'data' (the paper's "
        "data-dependent init on the first batch).",
        WN_INITS,
    )
    norm_backward: str = _field(
        "closed_form",
        "Gradient of the custom norms: closed_form (hand-derived, fast) or "
        "autodiff (TensorFlow differentiates the forward; the readable reference).",
        ("closed_form", "autodiff"),
    )
    # Optimization.
    seed: int = _field(0, "Seed of the initial weights, data order and augmentation.")
    batch_size: int = _field(128, "Training batch size.")
    optimizer: str = _field("sgd", "sgd (with momentum) or adam.", OPTIMIZERS)
    learning_rate: float = _field(0.05, "Peak learning rate.")
    momentum: float = _field(0.9, "SGD momentum.")
    lr_schedule: str = _field(
        "cosine", "constant, or cosine decay to 0 at the last step.", SCHEDULES
    )
    warmup_steps: int = _field(0, "Linear warm-up steps from 0 to the learning rate.")
    train_steps: int = _field(0, "Total training steps; 0: use --epochs.", resumable=True)
    epochs: float = _field(
        3.0, "Training length in epochs when --train_steps is 0.", resumable=True
    )
    # Bookkeeping.
    eval_every: int = _field(500, "Validate every N steps (and at the end).", resumable=True)
    checkpoint_every: int = _field(
        500, "Checkpoint every N steps (and at the end).", resumable=True
    )
    max_to_keep: int = _field(3, "Checkpoints kept.", resumable=True)
    log_every: int = _field(100, "Print a progress line every N steps.", resumable=True)
    summary_every: int = _field(50, "Write training summaries every N steps.", resumable=True)
    histogram_every: int = _field(
        500, "Write weight/gradient histograms every N steps.", resumable=True
    )
    eval_batch_size: int = _field(1000, "Batch size of evaluation.", resumable=True)
    deterministic: bool = _field(
        True, "Deterministic ops: same seed and flags, same weights.", resumable=True
    )
    check_numerics: bool = _field(
        False,
        "Debugging: TensorFlow's check_numerics on every op (slow), to find the op that "
        "first makes a NaN or Inf.",
        resumable=True,
    )
    # Distribution.
    strategy: str = _field(
        "default",
        "default: one device; mirrored: every visible device of this machine; "
        "multi_worker: several machines, configured by TF_CONFIG.",
        ("default", "mirrored", "multi_worker"),
        resumable=True,
    )
    sync_batch_norm: bool = _field(
        True,
        "With several replicas, batch norm uses the statistics of the global batch "
        "(false: each replica's own).",
    )
    virtual_cpus: int = _field(
        0,
        "Split the CPU into this many logical devices (0: don't), to run "
        "--strategy=mirrored on a machine without GPUs.",
        resumable=True,
    )
    collective_timeout: float = _field(
        300.0,
        "multi_worker: seconds a cross-worker all-reduce may wait for a lost worker "
        "before the run stops with an error.",
        resumable=True,
    )
    startup_timeout: float = _field(
        600.0,
        "multi_worker: seconds to wait at start for the other workers in TF_CONFIG to "
        "answer before stopping with an error naming them (0: no limit).",
        resumable=True,
    )

    # -- derived values --------------------------------------------------------------------

    def width_list(self) -> tuple[int, ...]:
        try:
            widths = tuple(int(w) for w in self.widths.split(",") if w.strip())
        except ValueError:
            raise UsageError(
                f"--widths must be comma-separated integers, got {self.widths!r}"
            ) from None
        return widths

    def model_config(self, image_shape, num_classes) -> ModelConfig:
        return ModelConfig(
            arch=self.arch,
            norm=self.norm,
            impl=self.norm_impl,
            widths=self.width_list(),
            dense_units=self.dense_units,
            groups=self.groups,
            momentum=self.bn_momentum,
            eps=self.norm_eps,
            image_shape=tuple(image_shape),
            num_classes=num_classes,
            seed=self.seed,
            sync=self.sync_batch_norm,
            backward=self.norm_backward,
        )

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.train_steps > 0:
            return self.train_steps
        return max(1, round(self.epochs * steps_per_epoch))

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> None:
        """Raises UsageError naming the first bad flag and what it accepts."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata["choices"]
            if choices and value not in choices:
                raise UsageError(f"--{f.name}={value} is not one of {', '.join(choices)}.")
        positive = (
            "batch_size",
            "eval_every",
            "checkpoint_every",
            "max_to_keep",
            "log_every",
            "summary_every",
            "histogram_every",
            "eval_batch_size",
            "dense_units",
            "groups",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        for name in (
            "validation_size",
            "warmup_steps",
            "train_steps",
            "seed",
            "virtual_cpus",
            "collective_timeout",
        ):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} must be >= 0, got {getattr(self, name)}.")
        if self.train_steps == 0 and not self.epochs > 0:
            raise UsageError(f"--epochs must be > 0 (or give --train_steps), got {self.epochs}.")
        if not self.learning_rate > 0:
            raise UsageError(f"--learning_rate must be > 0, got {self.learning_rate}.")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"--momentum must be in [0, 1), got {self.momentum}.")
        if self.norm == "batch" and self.batch_size < 2:
            raise UsageError(
                "--norm=batch needs --batch_size >= 2: with one example the batch "
                "variance of a dense layer is 0. Use --norm=layer or group for "
                "batch size 1."
            )
        if self.wn_init == "data" and self.norm != "weight":
            raise UsageError("--wn_init=data applies to --norm=weight only.")
        try:
            self.model_config((28, 28, 1), 10).validate()
        except ValueError as e:
            raise UsageError(f"bad model flags: {e}.") from None

    # -- flagfile --------------------------------------------------------------------------

    def to_flagfile(self) -> str:
        """The configuration in absl flagfile format: `--name=value` per line."""
        lines = ["# normlab run configuration (absl flagfile: train.py --flagfile=THIS)"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                value = "true" if value else "false"
            lines.append(f"--{f.name}={value}")
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
                values[name] = _parse(fields[name], text, f"{path}:{number}")
        return cls(**values)

    def differences(self, other: "Config", resumable: bool = False) -> list[str]:
        """`--name: mine -> other's` for each differing field (resumable ones only if asked)."""
        out = []
        for f in dataclasses.fields(self):
            if f.metadata["resumable"] and not resumable:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"--{f.name}: {a} -> {b}")
        return out


def _parse(field: dataclasses.Field, text: str, where: str):
    kind = type(field.default)
    if kind is bool:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise UsageError(f"{where}: --{field.name} takes true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"{where}: --{field.name} takes a {kind.__name__}, got {text!r}") from None


def flags_path(model_dir: str) -> str:
    return os.path.join(model_dir, FLAGS_FILE)


def flags_markdown() -> str:
    """train.py's flags as a Markdown table (the README's), generated from the fields."""
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    lines.append(
        "| `--model_dir` | (required) | Run directory: flags, checkpoints, summaries, "
        "metrics. An existing one is resumed with its saved flags. |"
    )
    for f in dataclasses.fields(Config):
        default = f.default
        if isinstance(default, bool):
            default = str(default).lower()
        help_text = f.metadata["help"]
        if f.metadata["choices"]:
            help_text += f" One of: {', '.join(f.metadata['choices'])}."
        if f.metadata["resumable"]:
            help_text += " May change on resume."
        lines.append(f"| `--{f.name}` | `{default}` | {help_text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(flags_markdown())
