"""The experiment design: presets, and the training runs each section of the report needs.

Every run is a plain trainer run (one model_dir) whose name spells the settings that vary
across the suite, e.g. `cnn_batch_custom_s0_b128_lr0.05_steps2145`. Two sections that need
the same run share it (the batch-size sweep's batch 128 is the learning-rate sweep's 0.05).

Sections (each states its budget in the report):
    cnn        the CNN with every norm and without, several seeds, a short budget
    converged  the same, trained to convergence (longer, with augmentation)
    long       the converged batch-norm CNN trained 3x longer: where the best BN CNN lands
    impl       TensorFlow's built-ins in the same CNN (seed 0), beside the custom runs of cnn
    batch      CNN batch-size sweep (batch, layer, group norm), several seeds
    lr         CNN learning-rate sweep, several seeds
    lstm       the LSTM with every recurrent norm and without, several seeds; built-ins (seed 0)
    lstm_batch LSTM batch-size sweep (batch vs layer norm), several seeds
"""

from __future__ import annotations

import dataclasses
import math

from normlab.trainer.config import Config

SECTIONS = ("cnn", "converged", "long", "impl", "batch", "lr", "lstm", "lstm_batch")


# What every preset shares: SGD with momentum 0.9 and cosine decay to 0 for the CNN, no
# warm-up (warm-up would hide exactly the instability the learning-rate sweep looks for).
_COMMON = {
    "dataset": "fashion_mnist",
    "optimizer": "sgd",
    "momentum": 0.9,
    "lr_schedule": "cosine",
    "warmup_steps": 0,
    "norm_eps": 1e-3,
    "groups": 8,
    "max_to_keep": 1,  # one checkpoint per run is enough to resume and evaluate
    "deterministic": True,
}
ALL_NORMS = ("none", "batch", "layer", "group", "rms", "weight")
LSTM_NORMS = ("none", "batch", "layer", "weight")


@dataclasses.dataclass(frozen=True)
class Preset:
    """One design of the suite; the defaults are the full report's. Lengths are in epochs of
    the training split, so a preset works on the full data set and on a test fixture; the
    bookkeeping intervals are in training examples, so every batch size validates (logs,
    checkpoints) equally often per example seen."""

    name: str
    description: str
    base: dict = dataclasses.field(
        default_factory=lambda: dict(_COMMON, validation_size=5000, eval_batch_size=1000)
    )
    cnn_model: dict = dataclasses.field(default_factory=dict)  # sizes (defaults when empty)
    lstm_model: dict = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)  # of every cell of every section (built-ins: seeds[0])
    # The CNN's batch size, learning rate and batch-norm momentum. The batch sweep scales the
    # rate linearly with the batch size and the momentum as momentum ** (B / reference), so the
    # moving averages forget at the same rate per example.
    reference_batch: int = 128
    base_lr: float = 0.05
    bn_momentum: float = 0.99
    cnn_norms: tuple[str, ...] = ALL_NORMS
    cnn_epochs: float = 5.0
    converged_epochs: float = 10.0  # with augmentation; 0 skips the section
    long_epochs: float = 30.0  # batch norm only, with augmentation; 0 skips the section
    builtin_norms: tuple[str, ...] = ALL_NORMS[1:]
    batch_norms: tuple[str, ...] = ("batch", "layer", "group")
    batch_sizes: tuple[int, ...] = (2, 4, 16, 128)
    batch_epochs: float = 1.0
    lr_norms: tuple[str, ...] = ("none", "batch", "layer", "weight")
    learning_rates: tuple[float, ...] = (0.015, 0.05, 0.15, 0.5, 1.5)
    lr_epochs: float = 2.0
    # The LSTM trains with Adam at a constant rate, scaled by sqrt(B / reference) in its sweep.
    lstm_norms: tuple[str, ...] = LSTM_NORMS
    lstm_builtin_norms: tuple[str, ...] = LSTM_NORMS[1:]
    lstm_epochs: float = 5.0
    lstm_lr: float = 1e-3
    lstm_batch_norms: tuple[str, ...] = ("batch", "layer")
    lstm_batch_sizes: tuple[int, ...] = (4, 16, 128)
    lstm_batch_epochs: float = 1.0
    twin_steps: int = 300  # section impl's lock-step twin trainings
    cost_rounds: int = 7  # the interleaved throughput benchmark
    cost_steps: int = 20
    eval_examples: int = 25600  # every 200 steps at batch 128
    log_examples: int = 6400
    summary_examples: int = 6400
    checkpoint_examples: int = 64000


FULL = Preset(
    "full", "the report's numbers: 3 seeds everywhere; hours on 2 cores (REPORT.md states them)"
)
PRESETS = {
    "full": FULL,
    "quick": dataclasses.replace(
        FULL,
        name="quick",
        description="a first look and a smoke test: 3 seeds, fractions of an epoch; ~40 min",
        bn_momentum=0.95,  # short runs: the moving averages must forget their initial values
        cnn_epochs=0.25,
        converged_epochs=0.5,
        long_epochs=1.0,
        batch_sizes=(4, 32, 128),
        batch_epochs=0.1,
        learning_rates=(0.05, 0.5, 5.0),
        lr_epochs=0.1,
        lstm_epochs=0.1,
        lstm_batch_sizes=(16, 128),
        lstm_batch_epochs=0.05,
        twin_steps=30,
        cost_rounds=3,
        cost_steps=5,
        eval_examples=2560,
        log_examples=1280,
        summary_examples=1280,
    ),
    # Equal epochs across sections, so the sweeps' reference cells are sections cnn's and lstm's
    # runs: every section is exercised with few runs.
    "tiny": dataclasses.replace(
        FULL,
        name="tiny",
        description="for the tests only: seconds on a fixture; the numbers mean nothing",
        base=dict(_COMMON, validation_size=64, eval_batch_size=64),
        cnn_model=dict(widths=(8,), dense_units=16),
        lstm_model=dict(lstm_units=8),
        seeds=(0, 1),
        reference_batch=16,
        bn_momentum=0.9,
        cnn_norms=("none", "batch", "layer"),
        cnn_epochs=0.25,
        converged_epochs=0.25,
        long_epochs=0.5,
        builtin_norms=("batch",),
        batch_norms=("batch", "layer"),
        batch_sizes=(4, 16),
        batch_epochs=0.25,
        lr_norms=("none", "batch"),
        learning_rates=(0.05, 1e6),
        lr_epochs=0.25,
        lstm_norms=("batch", "layer"),
        lstm_builtin_norms=("layer",),
        lstm_epochs=0.25,
        lstm_batch_sizes=(16,),  # section lstm's runs: the LSTM's tracing is the slow part
        lstm_batch_epochs=0.25,
        twin_steps=3,
        cost_rounds=2,
        cost_steps=2,
        eval_examples=32,
        log_examples=32,
        summary_examples=10**6,  # the first and last steps' summaries only: one trace fewer
        checkpoint_examples=32,
    ),
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of the suite: its directory name, its config, the sections using it."""

    name: str
    config: Config
    sections: tuple[str, ...]

    @property
    def examples(self) -> int:
        return self.config.train_steps * self.config.batch_size


def run_name(c: Config) -> str:
    """The run's directory name: the settings that vary across a suite."""
    return (
        f"{c.arch}_{c.norm}_{c.norm_impl}_s{c.seed}_b{c.batch_size}_lr{c.learning_rate:g}"
        f"_steps{c.train_steps}" + ("_aug" if c.augment else "")
    )


def steps_for(epochs: float, train_examples: int, batch_size: int) -> int:
    return max(1, round(epochs * (train_examples // batch_size)))


def make_config(
    preset: Preset,
    data_dir: str,
    train_examples: int,
    *,
    norm: str,
    epochs: float,
    arch: str = "default",
    impl: str = "custom",
    seed: int = 0,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    augment: bool = False,
) -> Config:
    """A run's whole Config: the preset's base, the varying settings, and bookkeeping by
    examples. The LSTM trains with Adam at a constant rate; the CNN with SGD and cosine."""
    batch_size = batch_size or preset.reference_batch
    ratio = batch_size / preset.reference_batch
    lstm = arch == "lstm"
    if learning_rate is None:
        learning_rate = preset.lstm_lr * math.sqrt(ratio) if lstm else preset.base_lr * ratio

    def every(examples: int) -> int:
        return max(1, examples // batch_size)

    optimizer = dict(optimizer="adam", lr_schedule="constant") if lstm else {}
    model = preset.lstm_model if lstm else preset.cnn_model
    return Config(
        **{**preset.base, **model, **optimizer},
        arch=arch,
        data_dir=data_dir,
        norm=norm,
        norm_impl=impl,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate,
        bn_momentum=preset.bn_momentum**ratio,
        augment=augment,
        train_steps=steps_for(epochs, train_examples, batch_size),
        eval_every=every(preset.eval_examples),
        log_every=every(preset.log_examples),
        summary_every=every(preset.summary_examples),
        checkpoint_every=every(preset.checkpoint_examples),
        histogram_every=every(preset.checkpoint_examples),
    )


def plan(preset: Preset, data_dir: str, train_examples: int) -> list[RunSpec]:
    """Every run of the preset, each once, in the order they are trained: seed 0 of every
    section first, the other seeds after, so an interrupted suite has a first look at
    everything rather than all of one section."""
    wanted: list[tuple[int, str, Config]] = []

    def add(section: str, seed: int, **kwargs) -> None:
        config = make_config(preset, data_dir, train_examples, seed=seed, **kwargs)
        wanted.append((preset.seeds.index(seed), section, config))

    p = preset
    for seed in p.seeds:
        for norm in p.cnn_norms:
            add("cnn", seed, norm=norm, epochs=p.cnn_epochs)
        if p.converged_epochs:
            for norm in p.cnn_norms:
                add("converged", seed, norm=norm, epochs=p.converged_epochs, augment=True)
        if p.long_epochs:
            add("long", seed, norm="batch", epochs=p.long_epochs, augment=True)
        for norm in p.lr_norms:
            for lr in p.learning_rates:
                add("lr", seed, norm=norm, epochs=p.lr_epochs, learning_rate=lr)
        for norm in p.batch_norms:
            for b in p.batch_sizes:
                add("batch", seed, norm=norm, epochs=p.batch_epochs, batch_size=b)
        for norm in p.lstm_norms:
            add("lstm", seed, arch="lstm", norm=norm, epochs=p.lstm_epochs)
        for norm in p.lstm_batch_norms:
            for b in p.lstm_batch_sizes:
                add(
                    "lstm_batch",
                    seed,
                    arch="lstm",
                    norm=norm,
                    epochs=p.lstm_batch_epochs,
                    batch_size=b,
                )
    first = p.seeds[0]
    for norm in p.builtin_norms:
        add("impl", first, norm=norm, epochs=p.cnn_epochs, impl="builtin")
        add("impl", first, norm=norm, epochs=p.cnn_epochs)  # its custom twin: section cnn's
    for norm in p.lstm_builtin_norms:
        add("lstm", first, arch="lstm", norm=norm, epochs=p.lstm_epochs, impl="builtin")

    specs: dict[str, RunSpec] = {}
    for _, section, config in sorted(wanted, key=lambda item: item[0]):
        name = run_name(config)
        if name in specs:
            old = specs[name]
            if old.config != config:  # a design error, not a user error
                raise AssertionError(f"two different configs named {name}")
            if section not in old.sections:
                specs[name] = dataclasses.replace(old, sections=old.sections + (section,))
        else:
            specs[name] = RunSpec(name, config, (section,))
    return list(specs.values())


def epochs(n: float) -> str:
    """'1 epoch', '0.5 epochs', '30 epochs'."""
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def budget(preset: Preset, section: str) -> str:
    """The section's training budget, in words (every section of the report states it)."""
    p = preset
    seeds = f"{len(p.seeds)} seeds ({', '.join(map(str, p.seeds))})"
    cnn = f"batch {p.reference_batch}, SGD momentum 0.9, cosine decay from {p.base_lr:g}"
    return {
        "cnn": f"{epochs(p.cnn_epochs)}, {cnn}, {seeds}",
        "converged": f"{epochs(p.converged_epochs)} with augmentation (flips, 2-pixel shifts), "
        f"{cnn}, {seeds}",
        "long": f"batch norm only, {epochs(p.long_epochs)} with augmentation, {cnn}, {seeds}",
        "impl": f"{epochs(p.cnn_epochs)} as section cnn, seed {p.seeds[0]}; twins: "
        f"{p.twin_steps} steps in lock step",
        "batch": f"{epochs(p.batch_epochs)} at every batch size (the same examples), lr "
        f"{p.base_lr:g} x B / {p.reference_batch}, bn momentum {p.bn_momentum} ^ (B / "
        f"{p.reference_batch}), {seeds}",
        "lr": f"{epochs(p.lr_epochs)} at batch {p.reference_batch}, SGD momentum 0.9, cosine "
        f"decay from each peak rate, {seeds}",
        "lstm": f"{epochs(p.lstm_epochs)}, batch {p.reference_batch}, Adam at a constant "
        f"{p.lstm_lr:g}, {seeds}; built-ins seed {p.seeds[0]}",
        "lstm_batch": f"{epochs(p.lstm_batch_epochs)} at every batch size, Adam at "
        f"{p.lstm_lr:g} x sqrt(B / {p.reference_batch}), {seeds}",
    }[section]
