"""The experiment design: presets, the cells each claim compares, and the ordered plan of jobs.

A cell is one setting (section, network, norm, batch size, learning rate, extra settings)
trained over several seeds; a job is one training run of a cell at one seed (a plain trainer
run), or one of the two measurements that train nothing (the parity table and the interleaved
cost benchmark). Every job has a name (its record's file name) and a hash of everything that
defines its result, so a record made on another machine is reused only if the job is the same.

Fixed before any run (Dodge et al. 2019; Goyal et al. 2017; Wu & Johnson 2021):
    tune     every CNN norm (and weight norm with data-dependent init) at each peak rate of the
             grid, on the first seeds; each one's rate is chosen by final validation accuracy
             (never test; a tie goes to the smaller rate)
    cnn      every CNN norm at its chosen rate, all its seeds (the tuning seeds' runs reused)
    wn_init  weight norm's data-dependent init vs g = ||v||, each at its chosen rate
    wn_adam  the same two inits with the paper's optimizer, Adam at 1e-3
    lr       none vs batch at the high rate (10x the grid's middle)
    batch    SWEEP_NORMS at every batch size for the same epochs (>= 1), each norm's chosen rate
             scaled linearly with the batch, a short warm-up, momentum ** (B / reference)
    lstm     the LSTM without norm, with recurrent batch norm and with layer norm
    lstm_gain recurrent batch norm with gain 1.0 instead of 0.1 (Cooijmans et al.'s ablation)
    parity, cost   measurements without training: normlab vs TensorFlow, ms per step
Every batch-norm run trains bias-corrected moving averages and evaluates with precise
population statistics (Wu & Johnson) over `precise_examples` training examples; the plain
and bias-corrected moving averages are evaluated beside them (analysis bn_stats). A cell's
seeds come from the power rule (report.power) over the pilot's records, at least min_seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math

from normlab.report import claims
from normlab.report.cost import parallel_speedup, predicted, seconds  # noqa: F401 (design's API)
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
SWEEP_NORMS = ("batch", "layer", "group")  # the batch sweep's norms: one place to add one
LSTM_NORMS = ("none", "batch", "layer")
TUNED = CNN_NORMS + ("weight/data",)  # what gets its own learning rate: norm[/wn_init]


@dataclasses.dataclass(frozen=True)
class Preset:
    """One design of the suite; the defaults are the full report's. Lengths are in epochs of the
    training split, so a preset works on Fashion-MNIST and on the tiny preset's fixture.
    Thresholds of "steps to X% validation accuracy", the rate grid, the tuning seeds and the
    power rule's inputs are fixed here, before any run. The cost model (seconds = fixed +
    steps x per step + evaluated examples x per example) predicts each job's time for --plan
    and the ETA; its coefficients are measured (BUILD_NOTES.md, "The report's suite")."""

    name: str
    description: str
    base: dict = dataclasses.field(
        default_factory=lambda: dict(_COMMON, validation_size=5000, eval_batch_size=1000)
    )
    cnn_model: dict = dataclasses.field(default_factory=dict)
    lstm_model: dict = dataclasses.field(default_factory=dict)
    min_seeds: int = 5
    # Caps of n by the budget (2 hours with 2 jobs at once), per section; others: cnn's.
    max_seeds: tuple = (("cnn", 8), ("wn_init", 5), ("wn_adam", 5), ("batch", 5), ("lstm", 6),
                        ("lstm_gain", 5))
    power_from: str = "pilot"  # the records whose paired spread fixes n ("": min_seeds)
    power: float = 0.8
    tune_seeds: int = 2
    lr_grid: tuple[float, ...] = (0.02, 0.05, 0.1)
    reference_batch: int = 128
    base_lr: float = 0.05  # the grid's middle
    high_rate: float = 0.5  # 10x base_lr
    adam_lr: float = 1e-3
    bn_momentum: float = 0.99
    warmup_examples: int = 2560  # linear warm-up (Goyal et al.): 20 steps at 128, 1280 at 2
    cnn_epochs: float = 2.0
    batch_sizes: tuple[int, ...] = (2, 16, 128)
    batch_epochs: float = 1.0
    lstm_epochs: float = 2.0
    lstm_lr: float = 1e-3
    # Curves' resolution (sections in CURVES): every 100 steps at batch 128 for the CNN, whose
    # threshold claim compares a few hundred steps; every 50 for the LSTM, whose claims differ
    # by tens of steps.
    eval_examples: int = 12800
    lstm_eval_examples: int = 6400
    checkpoint_examples: int = 64000  # a run interrupted by Ctrl-C saves then and there
    precise_examples: int = 1000
    cnn_threshold: float = 0.85
    lstm_threshold: float = 0.75
    twin_steps: int = 100
    cost_rounds: int = 7
    cost_steps: int = 20
    # The cost model's coefficients, seconds: fixed per run, by "arch/norm" or arch; per step
    # a + b * batch (ms), by "arch/norm" or arch; per evaluated example (ms), by arch.
    # fmt: off
    fixed_seconds: tuple = (("default", 6.0), ("lstm", 28.0), ("lstm/none", 6.0))
    # batch, layer and group norm's CNN and the LN-LSTM: fitted to the pilot's training seconds
    # at batch 2 and 128 (2 jobs at once, divided by 2 / parallel_speedup(2)).
    step_ms: tuple = (("default", 5.5, 0.30), ("default/none", 5.0, 0.186),
                      ("default/batch", 5.4, 0.364), ("default/layer", 7.3, 0.41),
                      ("default/group", 3.2, 0.41), ("default/rms", 5.5, 0.323),
                      ("default/weight", 5.5, 0.224), ("lstm", 4.0, 0.50),
                      ("lstm/layer", 4.0, 0.55), ("lstm/none", 2.0, 0.23))
    example_ms: tuple = (("default", 0.05), ("lstm", 0.15))
    parity_seconds: float = 40.0
    # fmt: on

    def seeds_cap(self, section: str) -> int:
        caps = dict(self.max_seeds)
        return max(self.min_seeds, caps.get(section, caps.get("cnn", self.min_seeds)))


FULL = Preset("full", "the confirmatory design: a learning rate per norm, seeds by power")
# fmt: off
PRESETS = {
    "full": FULL,
    "quick": dataclasses.replace(
        FULL, name="quick",
        description="a first look on the real data: the full design at a tenth of its budget",
        bn_momentum=0.9, min_seeds=2, max_seeds=(), power_from="", tune_seeds=1,
        cnn_epochs=0.2, batch_epochs=0.1, lstm_epochs=0.2, twin_steps=20,
        cost_rounds=3, cost_steps=5, eval_examples=1280, lstm_eval_examples=1280,
        precise_examples=256),
    "tiny": dataclasses.replace(
        FULL, name="tiny",
        description="every section in minutes on a small fixture it writes itself; the "
        "numbers mean nothing",
        base=dict(_COMMON, validation_size=64, eval_batch_size=64),
        cnn_model=dict(widths=(8,), dense_units=16), lstm_model=dict(lstm_units=8),
        min_seeds=2, max_seeds=(), power_from="", tune_seeds=1, lr_grid=(0.05, 0.1),
        reference_batch=16, bn_momentum=0.9, cnn_epochs=0.5, warmup_examples=32,
        high_rate=1e6,  # diverges: the tests see a diverged run
        batch_sizes=(2, 16), batch_epochs=0.25, lstm_epochs=0.25, eval_examples=32,
        lstm_eval_examples=32,
        checkpoint_examples=32, precise_examples=32, twin_steps=3, cost_rounds=2, cost_steps=2,
        fixed_seconds=(("default", 2.0), ("lstm", 15.0), ("lstm/none", 3.0)),
        example_ms=(("default", 0.01), ("lstm", 0.05)), parity_seconds=11.0),
}
# fmt: on


@dataclasses.dataclass(frozen=True)
class Job:
    """One thing the suite does: train a run (kind "run") or measure ("parity", "cost").

    `analyses` run right after the run, on its trained weights: "twins" (custom, built-in and
    a one-ulp control trained in lock step), "layer_parity" (custom vs built-in on its weights
    and a real batch), "bn_stats" (every population method and the train-test gap),
    "ema_curves" (validation with the moving averages too, at every validation). A pending
    job waits for its cell's learning rate (the tuning runs' records)."""

    name: str
    kind: str
    sections: tuple[str, ...]
    config: Config | None = None
    analyses: tuple[str, ...] = ()
    params: tuple = ()  # parity/cost: what they measure
    pending: bool = False

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
    if c.optimizer == "adam" and c.arch != "lstm":
        name += "_adam"
    if c.wn_init != "norm":
        name += f"_wninit-{c.wn_init}"
    if c.recurrent_gain != Config.recurrent_gain:
        name += f"_gain{c.recurrent_gain:g}"
    if c.bn_population != "moving_average":
        name += f"_{c.bn_population}"
    return name


def steps_for(epochs: float, train_examples: int, batch_size: int) -> int:
    return max(1, round(epochs * (train_examples // batch_size)))


def tuned_key(cell: dict) -> str:
    """The key of the learning rate a CNN cell trains at: its norm, and its init for weight
    norm's data-dependent init ("weight/data")."""
    return cell["norm"] + ("/data" if cell.get("wn_init") == "data" else "")


def make_config(preset: Preset, data_dir: str, train_examples: int, cell: dict, seed: int):
    """A run's whole Config: the preset's base, the cell's settings, bookkeeping by examples.
    The LSTM trains with Adam at a constant rate; the CNN with SGD (or the cell's Adam), a
    linear warm-up and cosine decay. `cell["learning_rate"]` is the peak rate at the reference
    batch, scaled linearly to the cell's batch."""
    p, b, lstm = preset, cell.get("batch_size", preset.reference_batch), cell["arch"] == "lstm"
    ratio = b / p.reference_batch
    if lstm:
        lr, optimizer = p.lstm_lr, dict(optimizer="adam", lr_schedule="constant")
    elif cell.get("optimizer") == "adam":
        lr, optimizer = p.adam_lr, dict(optimizer="adam")
    else:
        lr, optimizer = cell["learning_rate"] * ratio, {}
    warmup = {} if lstm else dict(warmup_steps=max(1, round(p.warmup_examples / b)))
    bn = {}
    if cell["norm"] == "batch":
        bn = dict(bn_moving_average="bias_corrected", bn_population="precise",
                  precise_bn_examples=p.precise_examples)  # fmt: skip
    steps = steps_for(cell["epochs"], train_examples, b)
    resolution = p.lstm_eval_examples if lstm else p.eval_examples
    every = max(1, resolution // b) if cell["section"] in CURVES else steps
    extra = {k: v for k, v in cell.items() if k in ("wn_init", "recurrent_gain")}
    model = p.lstm_model if lstm else p.cnn_model
    return Config(
        **{**p.base, **model, **optimizer, **warmup, **bn, **extra},
        arch=cell["arch"],
        data_dir=data_dir,
        norm=cell["norm"],
        norm_impl="custom",
        seed=seed,
        batch_size=b,
        learning_rate=lr,
        bn_momentum=p.bn_momentum**ratio,
        train_steps=steps,
        eval_every=every,
        log_every=max(1, resolution // b),
        # Training summaries: the LSTM's loss curve (a figure) every validation; the CNN's
        # only at the first and last step (the report reads those), as they cost seconds.
        summary_every=max(1, resolution // b) if lstm else 10**9,
        checkpoint_every=max(1, p.checkpoint_examples // b),
        histogram_every=10**9,  # first and last step only: the report reads the scalars
    )


# Sections whose claims read validation curves (steps to a threshold); the others validate
# once, at the end: validation at the resolution a claim needs.
CURVES = ("tune", "cnn", "wn_init", "lstm", "lstm_gain")


def cells(p: Preset, seeds: dict | None = None) -> list[dict]:
    """Every cell of the preset: a dict of the settings it varies, its seeds and section.
    CNN cells carry `tuned` (their learning rate is chosen); `seeds` maps a cell's
    (section, norm, batch size, ...) key to its number of seeds (power.cell_seeds)."""
    out = []

    def add(section, arch, norm, epochs, **kw):
        cell = dict(section=section, arch=arch, norm=norm, epochs=epochs, **kw)
        cell["seeds"] = (seeds or {}).get(cell_key(cell), p.min_seeds)
        out.append(cell)

    for key in TUNED:
        norm, _, init = key.partition("/")
        for lr in p.lr_grid:
            add("tune", "default", norm, p.cnn_epochs, learning_rate=lr, **_init(init))
    for norm in CNN_NORMS:
        add("cnn", "default", norm, p.cnn_epochs, tuned=True)
    for init in ("norm", "data"):
        add("wn_init", "default", "weight", p.cnn_epochs, tuned=True, wn_init=init)
        add("wn_adam", "default", "weight", p.cnn_epochs, optimizer="adam", wn_init=init)
    for norm in ("none", "batch"):
        add("lr", "default", norm, p.cnn_epochs, learning_rate=p.high_rate)
    for norm in SWEEP_NORMS:
        for b in p.batch_sizes:
            add("batch", "default", norm, p.batch_epochs, tuned=True, batch_size=b)
    for norm in LSTM_NORMS:
        add("lstm", "lstm", norm, p.lstm_epochs)
    for gain in (0.1, 1.0):
        add("lstm_gain", "lstm", "batch", p.lstm_epochs, recurrent_gain=gain)
    for cell in out:
        if cell["section"] == "tune":
            cell["seeds"] = p.tune_seeds
    return out


def _init(init: str) -> dict:
    return dict(wn_init=init) if init else {}


def cell_key(cell: dict) -> tuple:
    """What identifies a cell across plans (its rate may not be chosen yet)."""
    return (cell["section"], cell["arch"], cell["norm"], cell.get("batch_size"),
            cell.get("wn_init", "norm"), cell.get("recurrent_gain"),
            cell.get("optimizer", "sgd"))  # fmt: skip


def _analyses(cell: dict, seed: int, preset: Preset) -> tuple[str, ...]:
    out = []
    twin_seed = preset.tune_seeds  # the first seed no tuning run shares
    if cell["section"] == "cnn" and seed == twin_seed and cell["norm"] != "none":
        out += ["twins", "layer_parity"]
    if cell["norm"] == "batch":
        out.append("bn_stats")  # every population method, and the train-test gap
        if cell["arch"] == "lstm":
            out.append("ema_curves")  # the moving averages' validation curves too
    return tuple(out)


def plan(preset: Preset, data_dir: str, train_examples: int, chosen: dict | None = None):
    """Every job of the preset, each once, ordered claim by claim (cheapest claim first), all
    seeds of a cell together; the cells no claim uses come last. A cell whose learning rate
    is not chosen yet (`chosen`: {tuned key: rate}, tables.chosen_rates) gives pending jobs:
    named, costed at the grid's middle rate, trained once the tuning runs decide."""
    from normlab.report import power

    jobs: dict[str, Job] = {}
    for cell in cells(preset, power.cell_seeds(preset)):
        pending = False
        if cell.get("tuned"):
            rate = (chosen or {}).get(tuned_key(cell))
            pending = rate is None
            cell = dict(cell, learning_rate=preset.base_lr if pending else rate)
        for seed in range(cell["seeds"]):
            config = make_config(preset, data_dir, train_examples, cell, seed)
            name = run_name(config)
            if pending:
                name = name.replace(f"_lr{config.learning_rate:g}_", "_lr-pending_")
            if name in jobs:  # shared by two sections
                old = jobs[name]
                if cell["section"] not in old.sections:
                    jobs[name] = dataclasses.replace(
                        old, sections=old.sections + (cell["section"],)
                    )
                continue
            analyses = _analyses(cell, seed, preset)
            jobs[name] = Job(name, "run", (cell["section"],), config, analyses, pending=pending)
    jobs["parity"] = Job("parity", "parity", ("parity",), params=("float32", "bfloat16", "float16"))
    jobs["cost"] = Job(
        "cost",
        "cost",
        ("cost",),
        params=(
            ("norms", CNN_NORMS),
            ("rounds", preset.cost_rounds),
            ("steps", preset.cost_steps),
            ("batch_size", preset.reference_batch),
            ("model", tuple(sorted(preset.cnn_model.items()))),
        ),
    )
    return order(preset, list(jobs.values()))


def order(preset: Preset, jobs: list[Job]) -> list[Job]:
    """The tuning runs first (the other CNN cells wait for their choice); then claim by claim,
    the claim whose jobs not yet placed cost least first."""
    placed = sorted((j for j in jobs if "tune" in j.sections), key=_cell_key)
    left = {j.name: j for j in jobs if j not in placed}
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
        c.optimizer,
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


def shard(jobs: list[Job], index: int, count: int) -> list[Job]:
    """The jobs of shard index/count: every count-th job of the plan from index (0-based).
    Deterministic, so N machines given 0/N .. N-1/N train disjoint jobs that cover the plan."""
    return [j for i, j in enumerate(jobs) if i % count == index]


def budget(preset: Preset, section: str, seeds: str = "") -> str:
    """A section's training budget, in words (each section of the report states it)."""
    p = preset
    warm = f"linear warm-up over {p.warmup_examples:,} examples"
    sgd = f"SGD momentum 0.9, {warm}, cosine decay"
    grid = ", ".join(f"{r:g}" for r in p.lr_grid)
    text = {
        "tune": f"{p.cnn_epochs:g} epochs at batch {p.reference_batch}, {sgd} from each peak "
        f"rate of the grid {grid}; seeds 0-{p.tune_seeds - 1}; chosen by final validation "
        "accuracy (never test)",
        "cnn": f"{p.cnn_epochs:g} epochs at batch {p.reference_batch}, {sgd} from each norm's "
        "chosen rate",
        "wn_init": f"as section cnn, each init at its own chosen rate",
        "wn_adam": f"{p.cnn_epochs:g} epochs at batch {p.reference_batch}, Adam at "
        f"{p.adam_lr:g}, {warm}, cosine decay",
        "lr": f"{p.cnn_epochs:g} epochs at batch {p.reference_batch}, {sgd} from "
        f"{p.high_rate:g}",
        "batch": f"{p.batch_epochs:g} epoch{'s' if p.batch_epochs != 1 else ''} at every batch "
        f"size, each norm's chosen rate x B / {p.reference_batch}, {warm}, cosine decay, "
        f"batch norm's momentum {p.bn_momentum} ^ (B / {p.reference_batch})",
        "lstm": f"{p.lstm_epochs:g} epochs, batch {p.reference_batch}, Adam at a constant "
        f"{p.lstm_lr:g}",
        "lstm_gain": "as section lstm",
    }.get(section, "")
    return text + (f"; {seeds}" if seeds else "")
