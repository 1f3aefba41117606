"""Reads the suite's runs and analyses into the report's tables (numbers) and curves (figures).

Scalars come from the runs' TensorBoard event files (`<run>/train`, `<run>/eval`), read with
TensorBoard's EventAccumulator (every record kept: its default keeps a sample of 10 per tag).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from normlab.report.experiments import (
    SECTION_BATCH,
    SECTION_IMPL,
    SECTION_LR,
    SECTION_NORMS,
    Preset,
    RunSpec,
)
from normlab.report.suite import COMPLETE, DIVERGED, Outcome

# Section 1's threshold is the highest multiple of this every norm's mean curve reaches.
THRESHOLD_GRID = 0.005
# Section 2b: two runs' training losses have parted when they differ by this fraction.
LOSS_SPLIT = 0.01
# Section 2b: twin distances (relative parameter distance) reported as "parted" levels.
DISTANCE_LEVELS = (1e-4, 1e-2)
# The order norms are listed in.
NORM_ORDER = ("none", "batch", "layer", "weight", "group")
# BN moving averages still carrying more than this share of their initial values are stale.
STALE_SHARE = 0.05


def read_scalars(logdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} of every scalar in logdir, one value per step (the last)."""
    acc = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0}
    )
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("tensors", []):
        by_step = {}
        for event in acc.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            if value.size == 1:
                by_step[event.step] = float(value.reshape(()))
        if by_step:
            steps = np.array(sorted(by_step))
            out[tag] = (steps, np.array([by_step[s] for s in steps]))
    return out


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for the std of fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclasses.dataclass
class NormRow:
    """Section 1: one norm over its seeds (lists hold one value per complete seed)."""

    norm: str
    seeds: int
    diverged: int
    test_acc: list[float]
    test_loss: list[float]
    best_val_acc: list[float]
    steps_to_threshold: list[int | None]
    seconds_to_threshold: list[float | None]
    seconds_per_step: list[float]

    @property
    def acc(self) -> tuple[float | None, float | None]:
        return mean_std(self.test_acc)


@dataclasses.dataclass
class ImplRow:
    """Section 2b: custom vs built-in, trained side by side with the same seed."""

    norm: str
    custom_acc: float | None
    builtin_acc: float | None
    seed_std: float | None  # section 1's seed-to-seed std of the custom runs
    loss_split_step: int | None  # first summary step where the training losses differ > 1%
    summary_every: int
    twin_steps: int | None = None
    twin_start: dict | None = None  # twin -> distance after step 1
    twin_final: dict | None = None  # twin -> distance at the last twin step
    twin_reach: dict | None = None  # twin -> {level: first step the distance exceeds it}


@dataclasses.dataclass
class BatchRow:
    norm: str
    batch_size: int
    lr: float
    steps: int
    status: str
    test_acc: float | None
    diverged_at: int | None
    batch_stats_acc: float | None = None  # training-mode accuracy (batch norm only)
    inference_acc: float | None = None  # the same examples with moving statistics


@dataclasses.dataclass
class LrRow:
    norm: str
    lr: float
    steps: int
    status: str
    test_acc: float | None
    diverged_at: int | None


@dataclasses.dataclass
class InsideRow:
    """Section 5: one hidden layer of one norm's seed-0 run, first and last summary."""

    norm: str
    layer: str
    pre_std: tuple[float, float]
    post_std: tuple[float, float]
    post_mean: tuple[float, float]
    grad_norm: tuple[float, float]


@dataclasses.dataclass
class CostRow:
    """Section 6: training throughput over every logging window of a norm's runs.

    On shared cores other processes only ever slow a window down, so the fastest window
    (`best`) is the least disturbed estimate of the cost; the median shows the typical one.
    """

    norm: str
    impl: str
    images_per_sec: float | None  # median over the runs' windows
    runs: int
    best: float | None = None  # the runs' fastest window
    bench: float | None = None  # the interleaved benchmark: median over rounds
    bench_ms: float | None = None  # ... its ms per training step

    @property
    def rate(self) -> float | None:
        """The throughput the ratios use: the benchmark's, else the fastest window's."""
        return self.bench or self.best


@dataclasses.dataclass
class Tables:
    """Everything the findings are computed from."""

    preset: str
    threshold: float | None = None
    norms: list[NormRow] = dataclasses.field(default_factory=list)
    parity: list[dict] = dataclasses.field(default_factory=list)
    impl: list[ImplRow] = dataclasses.field(default_factory=list)
    batch: list[BatchRow] = dataclasses.field(default_factory=list)
    lr: list[LrRow] = dataclasses.field(default_factory=list)
    inside: list[InsideRow] = dataclasses.field(default_factory=list)
    cost: list[CostRow] = dataclasses.field(default_factory=list)
    stale_bn: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    seeds: int = 1
    norm_epochs: float | None = None
    reference_batch: int | None = None
    cost_bench: dict | None = None  # the throughput benchmark's settings (rounds, steps)


@dataclasses.dataclass
class Curves:
    """What the figures draw."""

    val: dict = dataclasses.field(default_factory=dict)  # norm -> [(steps, acc, loss)] per seed
    impl: dict = dataclasses.field(default_factory=dict)  # norm -> impl -> {tag: (steps, v)}
    twins: dict = dataclasses.field(default_factory=dict)  # norm -> twin_training result
    inside: dict = dataclasses.field(default_factory=dict)  # norm -> {tag: (steps, values)}


class _Reader:
    """Event files of the runs, each read once."""

    def __init__(self, root: str):
        self.root = root
        self._cache = {}

    def scalars(self, spec: RunSpec, sub: str) -> dict:
        key = (spec.name, sub)
        if key not in self._cache:
            self._cache[key] = read_scalars(os.path.join(self.root, spec.name, sub))
        return self._cache[key]


def _seconds_per_step(scalars: dict) -> float | None:
    """Median over the logging windows of 1 / train/steps_per_sec (robust to the first window,
    which includes compilation, and to the windows that include a validation)."""
    if "train/steps_per_sec" not in scalars:
        return None
    rates = [r for r in scalars["train/steps_per_sec"][1] if r > 0]
    return 1.0 / statistics.median(rates) if rates else None


def choose_threshold(mean_curves: dict[str, np.ndarray]) -> float | None:
    """The highest multiple of THRESHOLD_GRID that every norm's mean validation curve reaches."""
    peaks = [float(np.max(c)) for c in mean_curves.values() if len(c)]
    if not peaks:
        return None
    return math.floor(min(peaks) / THRESHOLD_GRID + 1e-9) * THRESHOLD_GRID


def _first_reach(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    hits = np.nonzero(values >= level - 1e-12)[0]
    return int(steps[hits[0]]) if len(hits) else None


def build(
    root: str,
    preset: Preset,
    specs: list[RunSpec],
    outcomes: dict[str, Outcome],
    analyses: dict,
) -> tuple[Tables, Curves]:
    """The tables and curves of every section from the runs' files and the analyses."""
    reader = _Reader(root)
    tables = Tables(
        preset=preset.name,
        seeds=len(preset.seeds),
        norm_epochs=preset.norm_epochs,
        reference_batch=preset.reference_batch,
    )
    curves = Curves()
    by_section = {
        s: [spec for spec in specs if s in spec.sections]
        for s in (SECTION_NORMS, SECTION_IMPL, SECTION_BATCH, SECTION_LR)
    }
    _section_norms(tables, curves, reader, preset, by_section[SECTION_NORMS], outcomes)
    _section_impl(tables, curves, reader, preset, by_section[SECTION_IMPL], outcomes, analyses)
    _section_batch(tables, by_section[SECTION_BATCH], outcomes, analyses)
    _section_lr(tables, by_section[SECTION_LR], outcomes)
    _section_inside(tables, curves, reader, preset, by_section[SECTION_NORMS], outcomes)
    _section_cost(
        tables,
        reader,
        by_section[SECTION_NORMS] + by_section[SECTION_IMPL],
        outcomes,
        analyses.get("throughput", {}).get("all", {}),
    )
    for spec in specs:
        c = spec.config
        share = c.bn_momentum**c.train_steps
        if c.norm == "batch" and share > STALE_SHARE and outcomes[spec.name].status == COMPLETE:
            tables.stale_bn.append((spec.name, share))
    return tables, curves


def _section_norms(tables, curves, reader, preset, specs, outcomes) -> None:
    mean_curves, per_norm = {}, {}
    for norm in preset.norms:
        runs = [s for s in specs if s.config.norm == norm and s.config.norm_impl == "custom"]
        done = [s for s in runs if outcomes[s.name].status == COMPLETE]
        per_norm[norm] = (runs, done)
        seeds = []
        for spec in done:
            ev = reader.scalars(spec, "eval")
            if "eval/val_accuracy" in ev:
                steps, acc = ev["eval/val_accuracy"]
                loss = ev.get("eval/val_loss", (steps, np.full(len(steps), np.nan)))[1]
                seeds.append((steps, acc, loss))
        curves.val[norm] = seeds
        if seeds:
            common = sorted(set.intersection(*(set(s[0].tolist()) for s in seeds)))
            stacked = [np.interp(common, s[0], s[1]) for s in seeds]
            mean_curves[norm] = np.mean(stacked, axis=0)
    tables.threshold = choose_threshold(mean_curves)
    for norm in preset.norms:
        runs, done = per_norm[norm]
        row = NormRow(
            norm,
            len(runs),
            sum(outcomes[s.name].status == DIVERGED for s in runs),
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for spec in done:
            metrics = outcomes[spec.name].metrics
            row.test_acc.append(metrics["test_accuracy"])
            row.test_loss.append(metrics["test_loss"])
            ev = reader.scalars(spec, "eval")
            per_step = _seconds_per_step(reader.scalars(spec, "train"))
            if per_step:
                row.seconds_per_step.append(per_step)
            if "eval/val_accuracy" in ev:
                steps, acc = ev["eval/val_accuracy"]
                row.best_val_acc.append(float(np.max(acc)))
                reached = (
                    _first_reach(steps, acc, tables.threshold)
                    if tables.threshold is not None
                    else None
                )
                row.steps_to_threshold.append(reached)
                row.seconds_to_threshold.append(
                    reached * per_step if reached is not None and per_step else None
                )
        tables.norms.append(row)


def _section_impl(tables, curves, reader, preset, specs, outcomes, analyses) -> None:
    seed = preset.seeds[0]
    std_by_norm = {row.norm: row.acc[1] for row in tables.norms}
    for norm in preset.builtin_norms:
        pair = {
            impl: next(
                (
                    s
                    for s in specs
                    if s.config.norm == norm
                    and s.config.norm_impl == impl
                    and s.config.seed == seed
                ),
                None,
            )
            for impl in ("custom", "builtin")
        }
        accs, losses = {}, {}
        curves.impl[norm] = {}
        for impl, spec in pair.items():
            if spec is None or outcomes[spec.name].status != COMPLETE:
                accs[impl] = None
                continue
            accs[impl] = outcomes[spec.name].metrics["test_accuracy"]
            train, ev = reader.scalars(spec, "train"), reader.scalars(spec, "eval")
            curves.impl[norm][impl] = {
                tag: data
                for tag, data in {**train, **ev}.items()
                if tag in ("train/loss", "eval/val_accuracy", "eval/val_loss")
            }
            losses[impl] = train.get("train/loss")
        row = ImplRow(
            norm=norm,
            custom_acc=accs["custom"],
            builtin_acc=accs["builtin"],
            seed_std=std_by_norm.get(norm),
            loss_split_step=_split_step(losses.get("custom"), losses.get("builtin")),
            summary_every=pair["custom"].config.summary_every if pair["custom"] else 0,
        )
        twin = analyses.get("twins", {}).get(norm)
        if twin:
            curves.twins[norm] = twin
            row.twin_steps = twin["steps"][-1]
            row.twin_start = {k: v[1] if len(v) > 1 else None for k, v in twin["distance"].items()}
            row.twin_final = {k: v[-1] for k, v in twin["distance"].items()}
            row.twin_reach = {
                k: {
                    level: _first_reach(np.array(twin["steps"]), np.array(v), level)
                    for level in DISTANCE_LEVELS
                }
                for k, v in twin["distance"].items()
            }
        tables.impl.append(row)
    for _, result in sorted(analyses.get("parity", {}).items()):
        tables.parity.append(result)


def _split_step(a, b) -> int | None:
    """The first common summary step where two training-loss curves differ by > LOSS_SPLIT."""
    if a is None or b is None:
        return None
    common = {int(s): v for s, v in zip(*a)}
    for step, value in zip(*b):
        mine = common.get(int(step))
        if mine is not None and abs(mine - value) > LOSS_SPLIT * max(abs(mine), 1e-12):
            return int(step)
    return None


def _section_batch(tables, specs, outcomes, analyses) -> None:
    bn_eval = analyses.get("bn_eval", {})
    order = {n: i for i, n in enumerate(NORM_ORDER)}
    for spec in sorted(specs, key=lambda s: (order.get(s.config.norm, 9), s.config.batch_size)):
        c, outcome = spec.config, outcomes[spec.name]
        row = BatchRow(
            norm=c.norm,
            batch_size=c.batch_size,
            lr=c.learning_rate,
            steps=c.train_steps,
            status=outcome.status,
            test_acc=outcome.metrics.get("test_accuracy"),
            diverged_at=outcome.diverged_at_step,
        )
        extra = bn_eval.get(spec.name)
        if extra:
            row.batch_stats_acc = extra["batch_stats_accuracy"]
            row.inference_acc = extra["inference_accuracy"]
        tables.batch.append(row)


def _section_lr(tables, specs, outcomes) -> None:
    for spec in specs:
        c, outcome = spec.config, outcomes[spec.name]
        tables.lr.append(
            LrRow(
                norm=c.norm,
                lr=c.learning_rate,
                steps=c.train_steps,
                status=outcome.status,
                test_acc=outcome.metrics.get("test_accuracy"),
                diverged_at=outcome.diverged_at_step,
            )
        )


def _section_inside(tables, curves, reader, preset, specs, outcomes) -> None:
    seed = preset.seeds[0]
    for norm in preset.norms:
        spec = next(
            (
                s
                for s in specs
                if s.config.norm == norm
                and s.config.seed == seed
                and s.config.norm_impl == "custom"
            ),
            None,
        )
        if spec is None or outcomes[spec.name].status != COMPLETE:
            continue
        train = reader.scalars(spec, "train")
        wanted = {t: v for t, v in train.items() if t.startswith(("activation/", "grad_norm/"))}
        curves.inside[norm] = wanted
        layers = sorted(
            {t.split("/")[1] for t in wanted if t.startswith("activation/")},
            key=lambda name: (name.startswith("dense"), name),
        )

        def ends(tag, wanted=wanted):
            if tag not in wanted:
                return (float("nan"), float("nan"))
            values = wanted[tag][1]
            return (float(values[0]), float(values[-1]))

        for layer in layers:
            tables.inside.append(
                InsideRow(
                    norm=norm,
                    layer=layer,
                    pre_std=ends(f"activation/{layer}/pre_std"),
                    post_std=ends(f"activation/{layer}/post_std"),
                    post_mean=ends(f"activation/{layer}/post_mean"),
                    grad_norm=ends(f"grad_norm/{layer}"),
                )
            )
        tables.inside.append(
            InsideRow(
                norm,
                "global",
                (math.nan,) * 2,
                (math.nan,) * 2,
                (math.nan,) * 2,
                ends("grad_norm/global"),
            )
        )


def _section_cost(tables, reader, specs, outcomes, bench: dict) -> None:
    rates: dict[tuple[str, str], list[float]] = {}
    seen = set()
    for spec in specs:
        if spec.name in seen or outcomes[spec.name].status != COMPLETE:
            continue
        seen.add(spec.name)
        train = reader.scalars(spec, "train")
        if "train/images_per_sec" in train:
            key = (spec.config.norm, spec.config.norm_impl)
            rates.setdefault(key, []).extend(v for v in train["train/images_per_sec"][1] if v > 0)
    counts = {}
    for spec in specs:
        if spec.name in counts or outcomes[spec.name].status != COMPLETE:
            continue
        counts[spec.name] = (spec.config.norm, spec.config.norm_impl)
    order = {n: i for i, n in enumerate(NORM_ORDER)}
    keys = set(rates) | {tuple(k.split("/")) for k in bench}
    for norm, impl in sorted(keys, key=lambda k: (k[1] != "custom", order.get(k[0], 9))):
        values = rates.get((norm, impl), [])
        measured = bench.get(f"{norm}/{impl}", {})
        tables.cost.append(
            CostRow(
                norm,
                impl,
                statistics.median(values) if values else None,
                sum(1 for key in counts.values() if key == (norm, impl)),
                max(values) if values else None,
                measured.get("images_per_sec"),
                measured.get("ms_per_step"),
            )
        )
    tables.cost_bench = next(iter(bench.values()), None)
