"""The model's settings: a dataclass whose fields carry their help, choices and limits.

trainer.config.Config extends ModelConfig with the data, optimization and bookkeeping fields,
so a training run's configuration *is* a model configuration (same field names, no renamed
copy), train.py's flags are generated from the fields, and every field is validated in one
place: `validate`, from the limits written next to the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from normlab.core import registry
from normlab.core.batch_norm import MOVING_AVERAGES

# The networks: two CNNs (models/cnn.py) and an LSTM over the image's rows (models/lstm.py).
ARCHS = ("default", "course", "lstm")
WN_INITS = ("norm", "data")
BACKWARDS = ("closed_form", "autodiff")


def setting(
    default: Any,
    help: str,  # noqa: A002 - the flag's help text
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    resumable: bool = False,
) -> Any:
    """A configuration field.

    Args:
        default: the default value; its type is the field's (bool, int, float, str, tuple of
            int for comma-separated lists).
        help: the flag's help text.
        choices: the allowed values.
        minimum: the smallest allowed value (inclusive).
        above, below: exclusive bounds.
        resumable: may change when a run is resumed (bookkeeping, not the experiment).
    """
    metadata = dict(
        help=help, choices=choices, minimum=minimum, above=above, below=below, resumable=resumable
    )
    return dataclasses.field(default=default, metadata=metadata)


class ConfigError(ValueError):
    """A setting out of its range; the message names the flag (--name) and what it accepts."""


def check_fields(config: Any) -> None:
    """Raises ConfigError for the first field outside its choices or limits."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        flag = f"--{f.name}"
        if not _has_type_of(value, f.default):
            kind = (
                "comma-separated integers (a tuple of int)"
                if isinstance(f.default, tuple)
                else f"a {type(f.default).__name__}"
            )
            raise ConfigError(f"{flag} takes {kind}, got {value!r}.")
        if meta.get("choices") and value not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ConfigError(f"{flag}={value} is not one of {allowed}.")
        if isinstance(value, tuple):
            if not value or any(not isinstance(v, int) or v < 1 for v in value):
                raise ConfigError(
                    f"{flag} must be positive integers, comma-separated, got {value}."
                )
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value}.")
        low, high = meta.get("minimum"), meta.get("below")
        if low is not None and high is not None and not low <= value < high:
            raise ConfigError(f"{flag} must be in [{low:g}, {high:g}), got {value}.")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise ConfigError(f"{flag} must be >= {meta['minimum']:g}, got {value}.")
        if meta.get("above") is not None and not value > meta["above"]:
            raise ConfigError(f"{flag} must be > {meta['above']:g}, got {value}.")
        if meta.get("below") is not None and not value < meta["below"]:
            raise ConfigError(f"{flag} must be < {meta['below']:g}, got {value}.")


def _has_type_of(value: Any, default: Any) -> bool:
    """Whether `value` has the type of the field's default (an int is a valid float)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes a network's architecture and initial weights."""

    arch: str = setting(
        "default",
        "Network: 'default' CNN, the exercise's 'course' net (one 5x5 conv of 30 channels, "
        "100 hidden units; --widths and --dense_units do not apply), or 'lstm' (reads the "
        "image's rows as a sequence; --lstm_units).",
        choices=ARCHS,
    )
    widths: tuple[int, ...] = setting(
        (32, 64), "Channels of each conv block (default arch), comma-separated."
    )
    dense_units: int = setting(128, "Units of the hidden dense layer (default arch).", minimum=1)
    lstm_units: int = setting(128, "Hidden units of the LSTM (arch lstm).", minimum=1)
    norm: str = setting(
        "batch",
        "Normalization after each conv and the hidden dense layer (weight: of every kernel).",
        choices=registry.NORM_CHOICES,
    )
    norm_impl: str = setting(
        "custom", "custom: normlab's core functions; builtin: TensorFlow's.", choices=registry.IMPLS
    )
    groups: int = setting(
        8,
        "Group norm: groups per layer (largest divisor of its channels not above this).",
        minimum=1,
    )
    bn_momentum: float = setting(
        0.99, "Batch norm moving-average momentum (Keras convention).", minimum=0.0, below=1.0
    )
    bn_moving_average: str = setting(
        "plain",
        "Batch norm's moving averages: plain (Keras': they start at mean 0, variance 1) or "
        "bias_corrected (Adam's correction, divided by 1 - momentum^t after t updates: the "
        "first update takes the batch's statistics).",
        choices=MOVING_AVERAGES,
    )
    norm_eps: float = setting(
        1e-3, "eps of every norm, added to the variance inside the root.", above=0.0
    )
    wn_init: str = setting(
        "norm",
        "Weight norm init: 'norm' (g = ||v||) or 'data' (the paper's data-dependent init on "
        "the first batch).",
        choices=WN_INITS,
    )
    recurrent_gain: float = setting(
        0.1,
        "LSTM with batch norm: initial gain (gamma) of the recurrent batch norms; 0.1 as "
        "Cooijmans et al. 2016 recommend (gain 1 saturates the gates).",
        above=0.0,
    )
    norm_backward: str = setting(
        "closed_form",
        "Gradient of the custom norms: closed_form (hand-derived, fast) or autodiff "
        "(TensorFlow differentiates the forward; the readable reference).",
        choices=BACKWARDS,
    )
    sync_batch_norm: bool = setting(
        True,
        "With several replicas, batch norm uses the statistics of the global batch "
        "(false: each replica's own).",
    )
    seed: int = setting(0, "Seed of the initial weights, data order and augmentation.", minimum=0)

    def validate(self) -> None:
        """Raises ConfigError naming the first bad setting."""
        check_fields(self)
        if len(self.widths) > 4:
            raise ConfigError(
                f"--widths: at most 4 conv blocks (28 pixels halve to 1), got {self.widths}."
            )
        if self.arch == "course":
            fixed = ModelConfig(arch="course").resolved()
            for name in ("widths", "dense_units"):
                if getattr(self, name) not in (getattr(ModelConfig, name), getattr(fixed, name)):
                    raise ConfigError(
                        f"--{name} does not apply to --arch=course (the exercise's net has fixed "
                        f"sizes: widths {fixed.widths}, dense_units {fixed.dense_units}); drop it "
                        "or use --arch=default."
                    )
        if self.recurrent_gain != ModelConfig.recurrent_gain and (
            self.arch != "lstm" or self.norm != "batch"
        ):
            raise ConfigError(
                "--recurrent_gain applies to --arch=lstm with --norm=batch only; drop it."
            )
        if self.bn_moving_average != ModelConfig.bn_moving_average and self.norm != "batch":
            raise ConfigError("--bn_moving_average applies to --norm=batch only; drop it.")
        if self.wn_init == "data" and self.norm != "weight":
            raise ConfigError("--wn_init=data applies to --norm=weight only.")
        if self.arch == "lstm":
            for name in ("widths", "dense_units"):
                if getattr(self, name) != getattr(ModelConfig, name):
                    raise ConfigError(
                        f"--{name} does not apply to --arch=lstm (its size is --lstm_units); "
                        "drop it or use --arch=default."
                    )
            if self.wn_init == "data":
                raise ConfigError(
                    "--wn_init=data does not apply to --arch=lstm: the data-dependent init is "
                    "defined layer by layer for feed-forward nets; use --wn_init=norm (g = ||v||)."
                )
        elif self.lstm_units != ModelConfig.lstm_units:
            raise ConfigError(
                f"--lstm_units applies to --arch=lstm only, got it with --arch={self.arch}; "
                "drop it or use --arch=lstm."
            )

    def resolved(self) -> "ModelConfig":
        """The config with the course architecture's fixed sizes filled in."""
        if self.arch == "course":
            return dataclasses.replace(self, widths=(30,), dense_units=100)
        return self

    def unused_fields(self) -> tuple[str, ...]:
        """The size settings this architecture does not read (flags.txt keeps them as comments,
        so a run directory never claims a setting the network ignored)."""
        return ("widths", "dense_units") if self.arch == "lstm" else ("lstm_units",)
