"""The experiment design: presets, the cells each claim compares, and the ordered plan of jobs.

A cell is one setting (section, network, norm, batch size, learning rate, extra settings)
trained over several seeds; a job is one training run of a cell at one seed (a plain trainer
run), or one of the two measurements that train nothing (the parity table and the interleaved
cost benchmark). Every job has a name (its record's file name) and a hash of everything that
defines its result, so a record made on another machine is reused only if the job is the same.

The plan is ordered claim by claim, cheapest claim first, all seeds of a cell together, so a
suite that stops half way already decides the cheap claims. Sections:
    cnn      the CNN with every norm and without (the ranking; BN vs LN in ConvNets)
    wn_init  weight norm's data-dependent init vs g = ||v||
    lr       none vs batch at 10x and 30x the base learning rate (0.05 is section cnn's)
    batch    batch, layer and group norm at batch 2, 16 and 128 on the same examples
    lstm     the LSTM without norm, with recurrent batch norm and with layer norm
    lstm_gain recurrent batch norm with gain 1.0 instead of 0.1 (Cooijmans et al.'s ablation)
    parity, cost   measurements without training: normlab vs TensorFlow, ms per step
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

from normlab.report import claims
from normlab.trainer.config import Config

# fmt: off
# Settings that say where or how a run is kept, not what it computes: not in the hash.
_NOT_HASHED = ("data_dir", "strategy", "virtual_cpus", "collective_timeout", "startup_timeout",
               "max_to_keep", "checkpoint_every", "log_every", "check_numerics", "steps_per_loop")
# Settings added to Config after records were made, each with the value that computes what
# those records computed: left out of the hash at that value (the records stay done), hashed at
# any other. A new result-defining field goes here or changes every job's hash.
_HASHED_UNLESS = {"bn_moving_average": "plain", "bn_population": "moving_average",
                  "precise_bn_examples": 1000}
_COMMON = dict(dataset="fashion_mnist", optimizer="sgd", momentum=0.9, lr_schedule="cosine",
               warmup_steps=0, norm_eps=1e-3, groups=8, max_to_keep=1, deterministic=True)
# fmt: on
TRAIN_EXAMPLES = 55000  # Fashion-MNIST's training split less the 5,000 held out
CNN_NORMS = ("none", "batch", "layer", "group", "rms", "weight")
LSTM_NORMS = ("none", "batch", "layer")


@dataclasses.dataclass(frozen=True)
class Preset:
    """One design of the suite; the defaults are the full report's. Lengths are in epochs of the
    training split, so a preset works on Fashion-MNIST and on the tiny preset's fixture.

    The batch sweep trains every batch size on the same number of examples, with the learning
    rate scaled linearly with the batch size and batch norm's momentum as momentum ** (B / 128),
    so the moving averages forget at the same rate per example. The thresholds of "steps to
    X% validation accuracy" are fixed here, before any run. The cost model (seconds = fixed +
    steps x per step + evaluated examples x per example) predicts each job's time for --plan
    and the ETA; its coefficients are measured (BUILD_NOTES.md, "The report's suite")."""

    name: str
    description: str
    base: dict = dataclasses.field(
        default_factory=lambda: dict(_COMMON, validation_size=5000, eval_batch_size=1000)
    )
    cnn_model: dict = dataclasses.field(default_factory=dict)
    lstm_model: dict = dataclasses.field(default_factory=dict)
    seeds: int = 3
    headline_seeds: int = 5  # batch vs layer norm, in the CNN and in the LSTM
    reference_batch: int = 128
    base_lr: float = 0.05
    bn_momentum: float = 0.99
    cnn_epochs: float = 2.0
    high_rates: tuple[float, ...] = (0.5, 1.5)
    batch_sizes: tuple[int, ...] = (2, 16, 128)
    batch_epochs: float = 0.25
    lstm_epochs: float = 2.0
    lstm_lr: float = 1e-3
    eval_examples: int = 6400  # validate every 50 steps at batch 128: curves for thresholds
    checkpoint_examples: int = 64000  # a run interrupted by Ctrl-C saves then and there
    cnn_threshold: float = 0.85
    lstm_threshold: float = 0.75
    twin_steps: int = 200
    cost_rounds: int = 7
    cost_steps: int = 20
    # The cost model's coefficients, seconds: fixed per run, by "arch/norm" or arch; per step
    # a + b * batch (ms), by "arch/norm" or arch; per evaluated example (ms), by arch.
    # fmt: off
    fixed_seconds: tuple = (("default", 6.0), ("lstm", 28.0), ("lstm/none", 6.0))
    step_ms: tuple = (("default", 5.5, 0.30), ("default/none", 5.0, 0.186),
                      ("default/batch", 6.9, 0.30), ("default/layer", 6.0, 0.28),
                      ("default/group", 5.3, 0.355), ("default/rms", 5.5, 0.323),
                      ("default/weight", 5.5, 0.224), ("lstm", 4.0, 0.50), ("lstm/none", 2.0, 0.23))
    example_ms: tuple = (("default", 0.05), ("lstm", 0.15))
    parity_seconds: float = 40.0
    # fmt: on


FULL = Preset("full", "the report's numbers: 3 seeds per cell, 5 for batch vs layer norm")
# fmt: off
PRESETS = {
    "full": FULL,
    "quick": dataclasses.replace(
        FULL, name="quick",
        description="a first look on the real data: the full design at a tenth of its budget",
        bn_momentum=0.9,  # short runs: the moving averages must forget their initial values
        cnn_epochs=0.2, batch_epochs=0.05, lstm_epochs=0.2, headline_seeds=3, twin_steps=20,
        cost_rounds=3, cost_steps=5, eval_examples=1280),
    "tiny": dataclasses.replace(
        FULL, name="tiny",
        description="every section in minutes on a small fixture it writes itself; the "
        "numbers mean nothing",
        base=dict(_COMMON, validation_size=64, eval_batch_size=64),
        cnn_model=dict(widths=(8,), dense_units=16), lstm_model=dict(lstm_units=8),
        seeds=2, headline_seeds=2, reference_batch=16, bn_momentum=0.9, cnn_epochs=0.5,
        high_rates=(1e6,),  # diverges: the tests see a diverged run
        batch_sizes=(2, 16), batch_epochs=0.25, lstm_epochs=0.25, eval_examples=32,
        checkpoint_examples=32, twin_steps=3, cost_rounds=2, cost_steps=2,
        fixed_seconds=(("default", 2.0), ("lstm", 15.0), ("lstm/none", 3.0)),
        example_ms=(("default", 0.01), ("lstm", 0.05)), parity_seconds=11.0),
}
# fmt: on


@dataclasses.dataclass(frozen=True)
class Job:
    """One thing the suite does: train a run (kind "run") or measure ("parity", "cost").

    `analyses` run right after the run, on its trained weights: "twins" (custom, built-in and
    a one-ulp control trained in lock step), "layer_parity" (custom vs built-in on its weights
    and a real batch), "bn_eval" (batch statistics vs moving statistics at test time)."""

    name: str
    kind: str
    sections: tuple[str, ...]
    config: Config | None = None
    analyses: tuple[str, ...] = ()
    params: tuple = ()  # parity/cost: what they measure

    def identity(self) -> dict:
        """Everything that defines the job's result (not where or how it is kept)."""
        out = {"kind": self.kind, "analyses": list(self.analyses), "params": _plain(self.params)}
        if self.config is not None:
            out["config"] = {
                f.name: _plain(getattr(self.config, f.name))
                for f in dataclasses.fields(self.config)
                if f.name not in _NOT_HASHED
                and not (
                    f.name in _HASHED_UNLESS
                    and getattr(self.config, f.name) == _HASHED_UNLESS[f.name]
                )
            }
        return out

    @property
    def config_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def run_name(c: Config) -> str:
    """The run's name: the settings that vary across a suite."""
    name = (
        f"{c.arch}_{c.norm}_{c.norm_impl}_s{c.seed}_b{c.batch_size}_lr{c.learning_rate:g}"
        f"_steps{c.train_steps}"
    )
    if c.wn_init != "norm":
        name += f"_wninit-{c.wn_init}"
    if c.recurrent_gain != Config.recurrent_gain:
        name += f"_gain{c.recurrent_gain:g}"
    return name


def steps_for(epochs: float, train_examples: int, batch_size: int) -> int:
    return max(1, round(epochs * (train_examples // batch_size)))


def make_config(preset: Preset, data_dir: str, train_examples: int, cell: dict, seed: int):
    """A run's whole Config: the preset's base, the cell's settings, bookkeeping by examples.
    The LSTM trains with Adam at a constant rate; the CNN with SGD and cosine decay."""
    b = cell.get("batch_size", preset.reference_batch)
    ratio, lstm = b / preset.reference_batch, cell["arch"] == "lstm"
    lr = cell.get("learning_rate") or (
        preset.lstm_lr * math.sqrt(ratio) if lstm else preset.base_lr * ratio
    )
    every = max(1, preset.eval_examples // b)
    extra = {k: v for k, v in cell.items() if k in ("wn_init", "recurrent_gain")}
    optimizer = dict(optimizer="adam", lr_schedule="constant") if lstm else {}
    model = preset.lstm_model if lstm else preset.cnn_model
    return Config(
        **{**preset.base, **model, **optimizer, **extra},
        arch=cell["arch"],
        data_dir=data_dir,
        norm=cell["norm"],
        norm_impl="custom",
        seed=seed,
        batch_size=b,
        learning_rate=lr,
        bn_momentum=preset.bn_momentum**ratio,
        train_steps=steps_for(cell["epochs"], train_examples, b),
        eval_every=every,
        log_every=every,
        summary_every=every,
        checkpoint_every=max(1, preset.checkpoint_examples // b),
        histogram_every=10**9,  # first and last step only: the report reads the scalars
    )


def cells(p: Preset) -> list[dict]:
    """Every cell of the preset: a dict of the settings it varies, its seeds and section."""
    out = []

    def add(section, arch, norm, epochs, seeds, **kw):
        out.append(dict(section=section, arch=arch, norm=norm, epochs=epochs, seeds=seeds, **kw))

    for norm in CNN_NORMS:
        seeds = p.headline_seeds if norm in ("batch", "layer") else p.seeds
        add("cnn", "default", norm, p.cnn_epochs, seeds)
    add("wn_init", "default", "weight", p.cnn_epochs, p.seeds)  # shares section cnn's runs
    add("wn_init", "default", "weight", p.cnn_epochs, p.seeds, wn_init="data")
    for norm in ("none", "batch"):
        add("lr", "default", norm, p.cnn_epochs, p.seeds)
        for lr in p.high_rates:
            add("lr", "default", norm, p.cnn_epochs, p.seeds, learning_rate=lr)
    for norm in ("batch", "layer", "group"):
        for b in p.batch_sizes:
            add("batch", "default", norm, p.batch_epochs, p.seeds, batch_size=b)
    for norm in LSTM_NORMS:
        seeds = p.headline_seeds if norm in ("batch", "layer") else p.seeds
        add("lstm", "lstm", norm, p.lstm_epochs, seeds)
    add("lstm_gain", "lstm", "batch", p.lstm_epochs, p.seeds)
    add("lstm_gain", "lstm", "batch", p.lstm_epochs, p.seeds, recurrent_gain=1.0)
    return out


def _analyses(cell: dict, seed: int) -> tuple[str, ...]:
    out = []
    if cell["section"] in ("cnn", "lstm") and seed == 0 and cell["norm"] != "none":
        out.append("twins")
        if cell["arch"] == "default":
            out.append("layer_parity")
    if cell["section"] == "batch" and cell["norm"] == "batch":
        out.append("bn_eval")
    return tuple(out)


def plan(preset: Preset, data_dir: str, train_examples: int) -> list[Job]:
    """Every job of the preset, each once, ordered claim by claim (cheapest claim first), all
    seeds of a cell together; the cells no claim uses (the ranking's) come last."""
    jobs: dict[str, Job] = {}
    for cell in cells(preset):
        for seed in range(cell["seeds"]):
            config = make_config(preset, data_dir, train_examples, cell, seed)
            name = run_name(config)
            if name in jobs:  # shared by two sections
                old = jobs[name]
                if cell["section"] not in old.sections:
                    jobs[name] = dataclasses.replace(
                        old, sections=old.sections + (cell["section"],)
                    )
                continue
            jobs[name] = Job(name, "run", (cell["section"],), config, _analyses(cell, seed))
    jobs["parity"] = Job("parity", "parity", ("parity",), params=("float32", "bfloat16", "float16"))
    cost_norms = tuple(n for n in CNN_NORMS)
    jobs["cost"] = Job(
        "cost",
        "cost",
        ("cost",),
        params=(
            ("norms", cost_norms),
            ("rounds", preset.cost_rounds),
            ("steps", preset.cost_steps),
            ("batch_size", preset.reference_batch),
            ("model", tuple(sorted(preset.cnn_model.items()))),
        ),
    )
    return order(preset, list(jobs.values()))


def order(preset: Preset, jobs: list[Job]) -> list[Job]:
    """Claim by claim, the claim whose jobs not yet placed cost least first."""
    placed: list[Job] = []
    left = {j.name: j for j in jobs}
    groups = [
        [j for j in jobs if any(claims.uses(c, _facts(j)) for c in claim.sides())]
        for claim in claims.CLAIMS
    ]
    while any(any(j.name in left for j in g) for g in groups):
        g = min(
            (g for g in groups if any(j.name in left for j in g)),
            key=lambda g: sum(seconds(preset, j) for j in g if j.name in left),
        )
        for j in sorted(g, key=lambda j: _cell_key(j)):
            if j.name in left:
                placed.append(left.pop(j.name))
    placed += sorted(left.values(), key=_cell_key)
    return placed


def _cell_key(job: Job) -> tuple:
    c = job.config
    if c is None:
        return ("~", job.name)
    return (
        job.sections[0],
        c.arch,
        c.norm,
        c.batch_size,
        c.learning_rate,
        c.wn_init,
        c.recurrent_gain,
        c.seed,
    )


def _facts(job: Job) -> dict:
    """What a claim's selector can match: the job's sections and varying settings."""
    return facts(job.sections, job.config.__dict__ if job.config else {"kind": job.kind}, job.kind)


def facts(sections, config: dict, kind: str = "run") -> dict:
    """The selector-visible facts of a job or record (claims.uses matches them)."""
    keys = ("arch", "norm", "batch_size", "learning_rate", "wn_init", "recurrent_gain", "seed")
    return {"sections": tuple(sections), "kind": kind, **{k: config.get(k) for k in keys}}


def seconds(preset: Preset, job: Job) -> float:
    """The cost model's prediction of a job's wall time on 2 cores (one job at a time)."""
    if job.kind == "parity":
        return preset.parity_seconds
    if job.kind == "cost":  # per norm: build, 3 warm-up steps, an untimed round, the rounds
        params = dict(job.params)
        return sum(_fixed(preset, "default", n) + (3 + (preset.cost_rounds + 1) * preset.cost_steps)
                   * _step_ms(preset, "default", n, params["batch_size"]) / 1000
                   for n in params["norms"])  # fmt: skip
    c = job.config
    fixed, step = _fixed(preset, c.arch, c.norm), _step_ms(preset, c.arch, c.norm, c.batch_size)
    validation = preset.base["validation_size"]
    examples = (c.train_steps // c.eval_every + 2) * validation + 10000  # + final val and test
    extra = 0.0
    if "twins" in job.analyses:
        extra += fixed + 3 * preset.twin_steps * step / 1000
    if "bn_eval" in job.analyses:
        examples += 2 * 10000
    per_example = dict(preset.example_ms)[c.arch]
    return fixed + c.train_steps * step / 1000 + examples * per_example / 1000 + extra


def _fixed(preset: Preset, arch: str, norm: str) -> float:
    table = dict(preset.fixed_seconds)
    return table.get(f"{arch}/{norm}", table[arch])


def _step_ms(preset: Preset, arch: str, norm: str, batch_size: int) -> float:
    table = {k: (a, b) for k, a, b in preset.step_ms}
    a, b = table.get(f"{arch}/{norm}", table[arch])
    return a + b * batch_size


def parallel_speedup(jobs_at_once: int) -> float:
    """How much sooner K jobs at once finish than one at a time on 2 cores: measured by
    `python -m bench.jobs` (BUILD_NOTES.md, "The report's suite") for K = 2; no gain assumed
    beyond the two cores."""
    return 1.0 if jobs_at_once <= 1 else 1.6


def predicted(seconds: float, at_once=(1,)) -> str:
    """The cost model's prediction of a suite's wall time, labelled: one job at a time, and
    for each K > 1 in `at_once`, K jobs at once (divided by parallel_speedup(K))."""
    from normlab.trainer.loop import duration

    text = f"{duration(seconds)} one job at a time"
    for k in sorted(set(at_once) - {1}):
        x = parallel_speedup(k)
        text += f", {duration(seconds / x)} with {k} jobs at once (x{x:g} faster, BUILD_NOTES.md)"
    return text


def shard(jobs: list[Job], index: int, count: int) -> list[Job]:
    """The jobs of shard index/count: every count-th job of the plan from index (0-based).
    Deterministic, so N machines given 0/N .. N-1/N train disjoint jobs that cover the plan."""
    return [j for i, j in enumerate(jobs) if i % count == index]


def budget(preset: Preset, section: str) -> str:
    """A section's training budget, in words (each section of the report states it)."""
    p = preset
    seeds = f"{p.seeds} seeds (0-{p.seeds - 1})"
    head = f"{p.headline_seeds} seeds for batch and layer norm"
    cnn = f"batch {p.reference_batch}, SGD momentum 0.9, cosine decay from {p.base_lr:g}"
    return {
        "cnn": f"{p.cnn_epochs:g} epochs, {cnn}; {seeds}, {head}",
        "wn_init": f"{p.cnn_epochs:g} epochs as section cnn; {seeds}",
        "lr": f"{p.cnn_epochs:g} epochs at batch {p.reference_batch}, SGD momentum 0.9, cosine "
        f"decay from each peak rate; {seeds}",
        "batch": f"{p.batch_epochs:g} epochs at every batch size (the same examples), lr "
        f"{p.base_lr:g} x B / {p.reference_batch}, bn momentum {p.bn_momentum} ^ (B / "
        f"{p.reference_batch}); {seeds}",
        "lstm": f"{p.lstm_epochs:g} epochs, batch {p.reference_batch}, Adam at a constant "
        f"{p.lstm_lr:g}; {seeds}, {head}",
        "lstm_gain": f"as section lstm; {seeds}",
    }.get(section, "")
