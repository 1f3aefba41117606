"""The experiment design: presets, and the training runs each report section needs.

Every run is a plain trainer run (one model_dir) whose name spells the settings that vary
across the suite, e.g. `norm-batch_impl-custom_seed-0_bs-128_lr-0.05_steps-2145`. Two sections
that need the same run share it (the batch-size sweep's batch 128 is the learning-rate sweep's
0.05); everything else about a run comes from its preset.
"""

from __future__ import annotations

import dataclasses

from normlab.trainer.config import Config

SECTION_NORMS = "norms"  # 1: with and without normalization, several seeds
SECTION_IMPL = "impl"  # 2: custom vs TensorFlow's built-ins
SECTION_BATCH = "batch"  # 3: batch size
SECTION_LR = "lr"  # 4: learning rate

# Sections 5 (inside the network) and 6 (cost) read section 1 and 2's runs: no runs of their own.
SECTION_TITLES = {
    SECTION_NORMS: "1. With and without normalization",
    SECTION_IMPL: "2. Custom vs TensorFlow built-in",
    SECTION_BATCH: "3. Batch size",
    SECTION_LR: "4. Learning rate",
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """One design of the suite. Lengths are in epochs of the training split, so the same
    preset works on the full data set and on a test fixture.

    Attributes:
        name, description: for --preset and the report.
        base: Config fields shared by every run (model size, data, evaluation batch).
        reference_batch: the batch size of sections 1, 2 and 4, and the reference of the
            learning-rate and momentum scaling of section 3.
        base_lr: the learning rate at reference_batch.
        bn_momentum: batch norm's moving-average momentum at reference_batch (scaled with the
            batch size in section 3); short runs need a lower one or their moving averages
            still hold much of their initial values at the end.
        norm_epochs, seeds: section 1's length and seeds (every norm, custom impl).
        builtin_norms: section 2's built-in runs (seed seeds[0], section 1's length).
        twin_steps: section 2's lock-step twin trainings: steps per twin.
        batch_norms, batch_sizes, batch_epochs: section 3's norms, batch sizes and length
            (the same number of examples at every batch size).
        lr_norms, learning_rates, lr_epochs: section 4's grid and length.
        cost_rounds, cost_steps: section 6's interleaved throughput benchmark: rounds, and
            training steps per model per round.
        eval_examples, log_examples, summary_examples, checkpoint_examples: bookkeeping
            intervals in training examples, so a batch-2 run validates as often per example
            seen as a batch-128 run.
    """

    name: str
    description: str
    base: dict
    reference_batch: int
    base_lr: float
    bn_momentum: float
    norm_epochs: float
    seeds: tuple[int, ...]
    norms: tuple[str, ...]
    builtin_norms: tuple[str, ...]
    twin_steps: int
    batch_norms: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    batch_epochs: float
    lr_norms: tuple[str, ...]
    learning_rates: tuple[float, ...]
    lr_epochs: float
    cost_rounds: int
    cost_steps: int
    eval_examples: int
    log_examples: int
    summary_examples: int
    checkpoint_examples: int


# What every preset shares: the project's default CNN and optimizer (SGD, momentum 0.9, cosine
# decay to 0, no warm-up: warm-up would hide exactly the instability section 4 looks for).
_COMMON = {
    "dataset": "fashion_mnist",
    "arch": "default",
    "optimizer": "sgd",
    "momentum": 0.9,
    "lr_schedule": "cosine",
    "warmup_steps": 0,
    "augment": False,
    "norm_eps": 1e-3,
    "groups": 8,
    "max_to_keep": 1,  # ~60 runs: one checkpoint each is enough to resume and evaluate
    "deterministic": True,
}

ALL_NORMS = ("none", "batch", "layer", "weight", "group")
NORMED = ("batch", "layer", "weight", "group")

PRESETS = {
    "full": Preset(
        name="full",
        description="the report's numbers: 3 seeds, 5 epochs; about 60-90 min on 2 cores",
        base=dict(
            _COMMON, widths=(32, 64), dense_units=128, validation_size=5000, eval_batch_size=1000
        ),
        reference_batch=128,
        base_lr=0.05,
        bn_momentum=0.99,  # the project default; 429+ steps per run forget the init
        norm_epochs=5.0,
        seeds=(0, 1, 2),
        norms=ALL_NORMS,
        builtin_norms=NORMED,
        twin_steps=300,
        batch_norms=("batch", "layer", "group"),
        batch_sizes=(2, 4, 16, 64, 128, 256),
        batch_epochs=1.0,
        lr_norms=("none", "batch", "layer", "weight"),
        learning_rates=(0.005, 0.015, 0.05, 0.15, 0.5, 1.5),
        lr_epochs=1.0,
        cost_rounds=7,
        cost_steps=20,
        eval_examples=12800,  # every 100 steps at batch 128
        log_examples=3200,
        summary_examples=6400,
        checkpoint_examples=25600,
    ),
    "quick": Preset(
        name="quick",
        description="a first look and a smoke test: 1 seed, a quarter epoch; a few minutes",
        base=dict(
            _COMMON, widths=(32, 64), dense_units=128, validation_size=5000, eval_batch_size=1000
        ),
        reference_batch=128,
        base_lr=0.05,
        bn_momentum=0.95,  # 107-step runs: 0.95 ** 107 = 0.4% of the initial statistics left
        norm_epochs=0.25,  # = lr_epochs = batch_epochs: sections 1, 3, 4 share their lr-0.05 runs
        seeds=(0,),
        norms=ALL_NORMS,
        builtin_norms=NORMED,
        twin_steps=50,
        batch_norms=("batch", "layer", "group"),
        batch_sizes=(4, 32, 128),
        batch_epochs=0.25,
        lr_norms=("none", "batch", "layer", "weight"),
        learning_rates=(0.05, 0.5, 5.0),
        lr_epochs=0.25,
        cost_rounds=3,
        cost_steps=10,
        eval_examples=2560,  # every 20 steps: 6 points on a 107-step curve
        log_examples=640,
        summary_examples=1280,
        checkpoint_examples=12800,
    ),
    "tiny": Preset(
        name="tiny",
        description="for the tests only: seconds on a fixture; the numbers mean nothing",
        base=dict(_COMMON, widths=(8,), dense_units=16, validation_size=64, eval_batch_size=64),
        reference_batch=16,
        base_lr=0.05,
        bn_momentum=0.9,
        norm_epochs=0.375,
        seeds=(0,),
        norms=ALL_NORMS,
        builtin_norms=("batch", "weight"),
        twin_steps=3,
        batch_norms=("batch", "layer"),
        batch_sizes=(4, 16),
        batch_epochs=0.25,
        lr_norms=("none", "batch"),
        learning_rates=(0.05, 1e6),
        lr_epochs=0.25,
        cost_rounds=1,
        cost_steps=2,
        eval_examples=32,
        log_examples=32,
        summary_examples=32,
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


def run_name(config: Config) -> str:
    """The run's directory name: the settings that vary across a suite."""
    return (
        f"norm-{config.norm}_impl-{config.norm_impl}_seed-{config.seed}_bs-{config.batch_size}"
        f"_lr-{config.learning_rate:g}_steps-{config.train_steps}"
    )


def scaled_lr(preset: Preset, batch_size: int) -> float:
    """Linear scaling (Goyal et al. 2017): lr = base_lr * B / reference_batch."""
    return preset.base_lr * batch_size / preset.reference_batch


def scaled_bn_momentum(preset: Preset, batch_size: int) -> float:
    """bn_momentum ** (B / reference_batch): the moving averages forget at the same rate per
    example seen at every batch size, so a short large-batch run's inference statistics are not
    staler than a small-batch run's."""
    return preset.bn_momentum ** (batch_size / preset.reference_batch)


def steps_for(epochs: float, train_examples: int, batch_size: int) -> int:
    return max(1, round(epochs * (train_examples // batch_size)))


def make_config(
    preset: Preset,
    data_dir: str,
    *,
    norm: str,
    impl: str = "custom",
    seed: int = 0,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    steps: int,
) -> Config:
    """A run's whole Config: the preset's base, the varying settings, bookkeeping by examples."""
    batch_size = batch_size or preset.reference_batch

    def every(examples: int) -> int:
        return max(1, examples // batch_size)

    return Config(
        **preset.base,
        data_dir=data_dir,
        norm=norm,
        norm_impl=impl,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate if learning_rate is not None else preset.base_lr,
        bn_momentum=scaled_bn_momentum(preset, batch_size),
        train_steps=steps,
        eval_every=every(preset.eval_examples),
        log_every=every(preset.log_examples),
        summary_every=every(preset.summary_examples),
        checkpoint_every=every(preset.checkpoint_examples),
        histogram_every=every(preset.checkpoint_examples),
    )


def plan(preset: Preset, data_dir: str, train_examples: int) -> list[RunSpec]:
    """Every run of the preset, each once, in the order they are trained.

    Seed 0 of every section comes first, the extra seeds of section 1 last: an interrupted
    suite has a first look at everything rather than all of one section.
    """
    ref = preset.reference_batch
    norm_steps = steps_for(preset.norm_epochs, train_examples, ref)
    wanted: list[tuple[str, Config]] = []

    def add(section: str, **kwargs) -> None:
        wanted.append((section, make_config(preset, data_dir, **kwargs)))

    first, *other_seeds = preset.seeds
    for norm in preset.norms:
        add(SECTION_NORMS, norm=norm, seed=first, steps=norm_steps)
    for norm in preset.builtin_norms:
        add(SECTION_IMPL, norm=norm, impl="builtin", seed=first, steps=norm_steps)
    for norm in preset.builtin_norms:  # the custom twin of each built-in run is section 1's
        add(SECTION_IMPL, norm=norm, seed=first, steps=norm_steps)
    lr_steps = steps_for(preset.lr_epochs, train_examples, ref)
    for norm in preset.lr_norms:
        for lr in preset.learning_rates:
            add(SECTION_LR, norm=norm, seed=first, learning_rate=lr, steps=lr_steps)
    for norm in preset.batch_norms:
        for b in preset.batch_sizes:
            steps = steps_for(preset.batch_epochs, train_examples, b)
            add(
                SECTION_BATCH,
                norm=norm,
                seed=first,
                batch_size=b,
                learning_rate=scaled_lr(preset, b),
                steps=steps,
            )
    for seed in other_seeds:
        for norm in preset.norms:
            add(SECTION_NORMS, norm=norm, seed=seed, steps=norm_steps)

    specs: dict[str, RunSpec] = {}
    for section, config in wanted:
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


def describe(preset: Preset, train_examples: int) -> dict[str, str]:
    """The settings of each section in words, for --plan and the report."""
    ref = preset.reference_batch
    c = make_config(preset, "", norm="batch", steps=1)
    steps_per_epoch = train_examples // ref
    model = (
        f"CNN {preset.base['widths']} conv channels (3x3, SAME, 2x2 max-pool), dense "
        f"{preset.base['dense_units']}, norm after each conv and the hidden dense layer "
        f"(weight norm: every kernel); SGD momentum {c.momentum}, cosine decay to 0, no "
        f"warm-up, eps {c.norm_eps}, group norm {c.groups} groups, no augmentation; "
        f"{train_examples} training examples ({c.validation_size} held out for validation), "
        f"{steps_per_epoch} steps per epoch at batch {ref}"
    )
    norm_steps = steps_for(preset.norm_epochs, train_examples, ref)
    lr_steps = steps_for(preset.lr_epochs, train_examples, ref)
    sizes = ", ".join(
        f"B={b}: {steps_for(preset.batch_epochs, train_examples, b)} steps"
        for b in preset.batch_sizes
    )
    return {
        "model": model,
        SECTION_NORMS: (
            f"norms {', '.join(preset.norms)} (custom impl), seeds "
            f"{', '.join(map(str, preset.seeds))}; batch {ref}, lr {preset.base_lr}, "
            f"{preset.norm_epochs:g} epochs = {norm_steps} steps; BN momentum {preset.bn_momentum}"
        ),
        SECTION_IMPL: (
            f"built-in impl of {', '.join(preset.builtin_norms)} with seed {preset.seeds[0]} "
            f"and section 1's settings, against section 1's custom run of the same seed; "
            f"twin trainings of {preset.twin_steps} steps in lock step"
        ),
        SECTION_BATCH: (
            f"norms {', '.join(preset.batch_norms)} at batch sizes "
            f"{', '.join(map(str, preset.batch_sizes))}, each seeing {preset.batch_epochs:g} "
            f"epoch(s) of examples ({sizes}); lr = {preset.base_lr} * B / {ref} (linear "
            f"scaling), BN momentum = {preset.bn_momentum} ** (B / {ref}) (the same averaging horizon in "
            f"examples); seed {preset.seeds[0]}"
        ),
        SECTION_LR: (
            f"norms {', '.join(preset.lr_norms)} at peak learning rates "
            f"{', '.join(f'{lr:g}' for lr in preset.learning_rates)} (SGD momentum "
            f"{c.momentum}, cosine decay, no warm-up); batch {ref}, {preset.lr_epochs:g} "
            f"epoch(s) = {lr_steps} steps; seed {preset.seeds[0]}"
        ),
    }
